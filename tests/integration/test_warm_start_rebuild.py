"""A warm start survives the loss of Redis: `conduit learn` keeps each update it applies in the
history database, and `conduit posteriors --rebuild` replays those updates with the feedback,
in the order they were applied (decay included), and sums the quality floors' offline weights
again. Against real PostgreSQL and Redis."""

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
from conduit_workers.learning.recovery import rebuild_floors, rebuild_posteriors
from conduit_workers.routing.embedder import HashingEmbedder
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.routing.floor_store import RedisFloorStore
from conduit_workers.routing.router import handle_route_batch
from conduit_workers.routing.warm_start import Outcome, Record, learn_records
from conduit_workers.settings import RouterSettings
from tests.conftest import TEST_PREFIX, strong_and_cheap

pytestmark = pytest.mark.integration

CATALOG = strong_and_cheap()


def test_a_warm_start_is_rebuilt_with_the_feedback(history: SqlHistory, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    store = RedisPosteriorStore.from_url(redis_url, prefix=TEST_PREFIX)
    floors = RedisFloorStore(client, TEST_PREFIX, 600)
    settings = RouterSettings(quality_floor=0.9, seed=3, feature_cache_ttl_s=0)
    engine = RoutingEngine(
        CATALOG, store, HashingEmbedder(64), settings, np.random.default_rng(3), floors
    )
    names = list(CATALOG.names)
    # 300 records (two updates of 256 and 44), most with one model's outcome, as logs hold.
    records = [
        Record(
            f"w{i}",
            f"Offline question {i} about {'tax law' if i % 3 else 'geometry'}?",
            {"strong": Outcome(0.9, 20, 40, 0.0013)}
            if i % 4
            else {"cheap": Outcome(float(i % 8 == 0), 20, 40, 0.00003)},
        )
        for i in range(300)
    ]
    loaded = learn_records(engine, records, log=history)
    assert loaded.updates_applied == 4  # two chunks × two models

    # Live traffic after the warm start: routed, answered, rated.
    rng = np.random.default_rng(7)
    items = [
        parse_item(
            {"id": f"live{i}", "prompt": f"Live question {i}?"}, line=i, max_prompt_chars=999
        )
        for i in range(32)
    ]
    history.submit("live", items, tag=None, rejected=0, constraints={})
    ids = [i.key for i in items]
    handle_route_batch(ids, history, engine)
    decided = {r.query_id: r.model for r in history.load_for_execution(ids)}
    history.record_results([ResultRow(q, m, "ok", "an answer") for q, m in decided.items()], [])
    ratings = [
        FeedbackEvent(explicit_event_id(q), q, m, EXPLICIT, float(rng.random() < 0.7), 1.0)
        for q, m in decided.items()
    ]
    history.add_feedback(ratings)
    handle_apply_events([e.id for e in ratings], history, store, engine.dim, settings.decay, floors)

    before = store.read(names, engine.dim)
    offline = floors.read(fl.OFFLINE_STREAM)
    assert offline[fl.OFFLINE_WEIGHT + "strong"] == pytest.approx(225.0 * min(1.0, 200 / 225))
    assert before["cheap"][1].counters["n"] > 0 and before["strong"][1].counters["n"] > 75

    client.flushdb()  # Redis lost
    out = rebuild_posteriors(history, store, names, engine.dim, settings.decay)
    rebuild_floors(history, floors)
    assert out.warm_updates == 4 and out.events == len(ratings)
    after = store.read(names, engine.dim)
    for m in names:
        assert after[m][0] == before[m][0], m  # the same versions: the same updates
        a, b = after[m][1].to_fields(), before[m][1].to_fields()
        assert set(a) == set(b)
        np.testing.assert_allclose([a[k] for k in sorted(a)], [b[k] for k in sorted(b)], 1e-9, 1e-9)
    assert floors.read(fl.OFFLINE_STREAM) == pytest.approx(offline)

    # The updates' applied markers are back too: loading the file again counts once.
    again = learn_records(engine, records, log=history)
    assert (again.updates_applied, again.updates_already_applied) == (0, 4)
    assert store.read(names, engine.dim)["strong"][0] == before["strong"][0]
