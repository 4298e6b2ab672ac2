"""A rating reaches the quality floor it was routed under: the router keeps each prompt's floor
mark with its decision in the history database, and the feedback worker reads it back there when
the answer is rated (no Redis key per prompt)."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from conduit_workers.domain import floor as fl
from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import ResultRow
from conduit_workers.domain.rewards import EXPLICIT, FeedbackEvent, explicit_event_id
from conduit_workers.history.history import SqlHistory
from conduit_workers.learning.feedback import handle_apply_events
from conduit_workers.learning.posterior_store import RedisPosteriorStore
from conduit_workers.learning.recovery import rebuild_floors
from conduit_workers.routing.embedder import HashingEmbedder
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.routing.floor_store import RedisFloorStore
from conduit_workers.routing.quality_floor import FloorMark, floor_states
from conduit_workers.routing.router import handle_route_batch
from conduit_workers.settings import RouterSettings
from tests.conftest import TEST_PREFIX, strong_and_cheap

pytestmark = pytest.mark.integration

CATALOG = strong_and_cheap()


def _system(
    redis_url: str, seed: int
) -> tuple[redis.Redis, RedisPosteriorStore, RedisFloorStore, RoutingEngine]:
    """Redis posteriors and floors, and an engine holding a floor of 0.9 over them."""
    client = redis.Redis.from_url(redis_url)
    store = RedisPosteriorStore.from_url(redis_url, prefix=TEST_PREFIX)
    floors = RedisFloorStore(client, TEST_PREFIX, 600)
    settings = RouterSettings(quality_floor=0.9, seed=seed, feature_cache_ttl_s=0)
    engine = RoutingEngine(
        CATALOG, store, HashingEmbedder(64), settings, np.random.default_rng(seed), floors
    )
    return client, store, floors, engine


def test_a_rating_feeds_the_floor_its_prompt_was_routed_under(
    history: SqlHistory, redis_url: str
) -> None:
    client, store, floors, engine = _system(redis_url, 1)
    items = [
        parse_item({"id": f"p{i}", "prompt": f"Question {i}?"}, line=i, max_prompt_chars=999)
        for i in range(6)
    ]
    history.submit("b", items, tag=None, rejected=0, constraints={})
    ids = [i.key for i in items]
    assert handle_route_batch(ids, history, engine) == 6

    marks = history.floor_marks(ids)
    assert sorted(marks) == sorted(ids)  # every prompt routed under the floor, kept with it
    mark, model = FloorMark.decode(marks[ids[0]])
    # Nothing is rated yet: the whole chunk goes to the reference, drawn as audits.
    assert (mark.stream, mark.stratum, model) == ("default:0.9", fl.AUDIT, "strong")
    assert client.keys(f"{TEST_PREFIX}:floor-mark:*") == []  # no Redis key per prompt

    history.record_results([ResultRow(q, "strong", "ok", "an answer") for q in ids[:2]], [])
    ratings = [
        FeedbackEvent(explicit_event_id(q), q, "strong", EXPLICIT, r, 1.0)
        for q, r in ((ids[0], 1.0), (ids[1], 0.0))
    ]
    history.add_feedback(ratings)
    handle_apply_events([e.id for e in ratings], history, store, engine.dim, 1.0, floors)
    counts = floors.read("default:0.9")
    assert counts[fl.RATED + fl.AUDIT] == 2.0 and counts[fl.SUM + fl.AUDIT] == 1.0
    assert counts[fl.DECIDED + fl.AUDIT] == 6.0
    # A rating of another model's answer than the one routed does not count for the floor.
    other = FeedbackEvent(explicit_event_id(ids[2]), ids[2], "cheap", EXPLICIT, 1.0, 1.0)
    history.add_feedback([other])
    handle_apply_events([other.id], history, store, engine.dim, 1.0, floors)
    assert floors.read("default:0.9")[fl.RATED + fl.AUDIT] == 2.0


def test_the_floors_counters_are_rebuilt_from_the_history(
    history: SqlHistory, redis_url: str
) -> None:
    client, store, floors, engine = _system(redis_url, 2)
    rng = np.random.default_rng(5)
    ids: list[str] = []
    for k in range(8):  # chunks routed, answered and rated in turn, so the floor moves
        items = [
            parse_item(
                {"id": f"c{k}-{i}", "prompt": f"Question {i} of round {k}?"},
                line=i,
                max_prompt_chars=999,
            )
            for i in range(16)
        ]
        history.submit(f"b{k}", items, tag=None, rejected=0, constraints={})
        chunk = [i.key for i in items]
        ids += chunk
        handle_route_batch(chunk, history, engine)
        decided = {r.query_id: r.model for r in history.load_for_execution(chunk)}
        history.record_results([ResultRow(q, m, "ok", "an answer") for q, m in decided.items()], [])
        ratings = [
            FeedbackEvent(explicit_event_id(q), q, m, EXPLICIT, float(rng.random() < 0.8), 1.0)
            for q, m in decided.items()
            if rng.random() < 0.5
        ]
        history.add_feedback(ratings)
        handle_apply_events([e.id for e in ratings], history, store, engine.dim, 1.0, floors)
    before = floors.read("default:0.9")
    assert before[fl.DECIDED + fl.AUDIT] > 0 and before[fl.RATED + fl.AUDIT] > 0
    assert any(k.startswith(fl.DECIDED + fl.ALT) for k in before)  # the floor let some go
    (shown,) = floor_states(floors, engine.settings)  # what `conduit status` shows
    assert (shown.stream, shown.floor, shown.prompts) == ("default", 0.9, 128)
    assert 0 < shown.reference_share < 1 and shown.estimate is not None

    client.flushdb()  # Redis lost
    assert floors.read("default:0.9") == {}
    assert rebuild_floors(history, floors) == {"default:0.9": 128}
    after = floors.read("default:0.9")
    lost = {k: v for k, v in before.items() if k != fl.LOG_LAMBDA}
    assert set(after) == set(lost)
    for k, v in lost.items():
        assert after[k] == pytest.approx(v, rel=1e-9, abs=1e-9), k
    (again,) = floor_states(floors, engine.settings)
    assert (again.prompts, again.ratings, again.reference_share, again.state) == (
        shown.prompts,
        shown.ratings,
        shown.reference_share,
        shown.state,
    )
    assert again.estimate == pytest.approx(shown.estimate, rel=1e-9)
