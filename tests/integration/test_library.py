"""The in-process Router over the Redis posterior store that a deployment shares."""

from __future__ import annotations

import asyncio

import pytest

from conduit_workers.learning.posterior_store import RedisPosteriorStore
from conduit_workers.library import Query, Router
from conduit_workers.settings import RedisSettings, RouterSettings, Settings
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration


def test_decisions_and_feedback_land_in_redis_once(redis_url):
    settings = Settings(
        redis=RedisSettings(url=redis_url, key_prefix=TEST_PREFIX),
        router=RouterSettings(embedder="hashing"),
    )
    router = Router(store=redis_url, settings=settings, seed=3)

    async def run() -> tuple:
        d = await router.route(Query(text="What is the capital of France?", id="q1"))
        first = await router.feedback(d, rating=0.75)
        again = await router.feedback(d, rating=0.75)
        call = await router.record_call(
            d, error=False, latency_ms=250, input_tokens=12, output_tokens=4
        )
        return d, first, again, call

    d, first, again, call = asyncio.run(run())
    assert d.query_id == "q1" and d.selected_model in router.catalog.names
    assert 0.0 < d.confidence <= 1.0 and d.ranked[0] == d.selected_model
    assert (first, again, call) == (True, False, True)
    store = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX)
    _, stats = store.read([d.selected_model], router.engine.dim)[d.selected_model]
    c = stats.counters
    assert (c["n"], c["r"], c["calls"], c["latency_ms"], c["in_tokens"]) == (
        1.0,
        0.75,
        1.0,
        250.0,
        12.0,
    )
    spec = router.catalog.get(d.selected_model)
    assert c["cost_usd"] == pytest.approx(spec.cost_usd(12, 4))


def test_an_unknown_model_in_a_constraint_is_refused():
    router = Router(settings=Settings(router=RouterSettings(embedder="hashing")))
    with pytest.raises(ValueError, match="nope"):
        asyncio.run(router.route(Query(text="x", constraints={"allowed_models": ["nope"]})))
