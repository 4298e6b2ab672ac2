"""The router task's handler paces a budgeted batch: each chunk is routed within its share of
what the batch has left, read from the ledger and the history database; other batches are not
touched."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import redis

from conduit_workers.domain.items import parse_item
from conduit_workers.execution.batch_ledger import RedisBatchLedger
from conduit_workers.history.history import SqlHistory
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore
from conduit_workers.routing.embedder import HashingEmbedder
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.routing.router import handle_route_batch
from conduit_workers.settings import RouterSettings
from tests.conftest import TEST_PREFIX, strong_and_cheap

pytestmark = pytest.mark.integration

CATALOG = strong_and_cheap(strong_prior=0.95, cheap_prior=0.2)


def _engine() -> RoutingEngine:
    settings = RouterSettings(lambda_cost=0.0, seed=3, feature_cache_ttl_s=0)
    return RoutingEngine(
        CATALOG, InMemoryPosteriorStore(), HashingEmbedder(64), settings, np.random.default_rng(3)
    )


def _batch(history: SqlHistory, batch: str, n: int, budget: float | None) -> list[str]:
    items = [
        parse_item(
            {"id": f"{batch}{i}", "prompt": f"Explain topic number {i} of {batch} in a paragraph."},
            line=i,
            max_prompt_chars=999,
        )
        for i in range(n)
    ]
    history.submit(batch, items, tag=None, rejected=0, constraints={}, budget_usd=budget)
    return [i.key for i in items]


def _models(history: SqlHistory, ids: list[str]) -> Counter[str | None]:
    import sqlalchemy as sa

    from conduit_workers.history import history_schema as t

    with history.engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.decisions.c.model).where(t.decisions.c.query_id.in_(ids))
        ).all()
    return Counter(r[0] for r in rows)


def test_a_tight_budget_routes_to_the_cheap_model_and_others_are_untouched(
    history: SqlHistory, redis_url: str
) -> None:
    ledger = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)
    tight = _batch(history, "tight", 20, 0.006)  # about 2x the cheap model's expected cost
    roomy = _batch(history, "roomy", 20, 100.0)
    free = _batch(history, "free", 20, None)
    engine = _engine()
    # One chunk holding prompts of all three batches.
    chunk = [q for trio in zip(tight, roomy, free, strict=True) for q in trio]
    assert handle_route_batch(chunk, history, engine, ledger=ledger) == 60
    assert _models(history, tight) == {"cheap": 20}
    assert _models(history, roomy) == {"strong": 20}
    assert _models(history, free) == {"strong": 20}


def test_without_the_ledger_a_budget_does_not_pace_routing(
    history: SqlHistory, redis_url: str
) -> None:
    tight = _batch(history, "tight", 20, 0.006)
    assert handle_route_batch(tight, history, _engine()) == 20
    assert _models(history, tight) == {"strong": 20}
