"""`conduit status` and `conduit metrics` show where each quality floor stands: the prompts
decided under it, the share sent to the reference, the ratings received, its estimated quality
against the reference's and the lower bound the gate holds, read from the counters every router
process shares in Redis."""

from __future__ import annotations

import pytest
import redis

from conduit_workers.domain import floor as fl
from conduit_workers.routing.floor_store import RedisFloorStore
from conduit_workers.routing.quality_floor import (
    FloorGroup,
    FloorKeeper,
    FloorMark,
    floor_states,
    params_for,
    stream_key,
)
from conduit_workers.settings import RouterSettings
from producers.status import Status, render
from tests.conftest import TEST_PREFIX, scrape

pytestmark = pytest.mark.integration

ROUTER = RouterSettings()


def _stream(
    keeper: FloorKeeper,
    name: str,
    floor: float,
    ref: tuple[int, float],
    alt: tuple[int, float],
    rated: bool = True,
) -> str:
    """Decide ``ref[0]`` prompts as audits of the reference and ``alt[0]`` for a cheap model, in
    chunks of 32 as the router does; rate three in ten of each at ``ref[1]`` and ``alt[1]``."""
    key = stream_key(name, floor)
    params = params_for(floor, ROUTER)
    strata = [fl.AUDIT] * ref[0] + [fl.alt("cheap")] * alt[0]
    ratings = []
    for start in range(0, len(strata), 32):
        chunk = strata[start : start + 32]
        group = FloorGroup(key, params, fl.FloorCounts.of(keeper.store.read(key)), [])
        qids = [f"{name}-{start + i}" for i in range(len(chunk))]
        group.rows = list(range(len(chunk)))
        keeper.record(group, qids, chunk, [0.8] * len(chunk), [0.8] * len(chunk))
        for i, s in enumerate(chunk):
            if (start + i) % 10 < 3:
                ratings.append((FloorMark(key, s, 0.8, 0.8), ref[1] if s == fl.AUDIT else alt[1]))
    if rated:
        keeper.rate(ratings, f"ratings-{name}")
    return key


@pytest.fixture
def floors(redis_url: str) -> RedisFloorStore:
    return RedisFloorStore(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)


def test_status_shows_each_floor_stream_and_whether_it_holds(floors: RedisFloorStore) -> None:
    keeper = FloorKeeper(floors, ROUTER)
    # The default stream: a cheap model as good as the reference on its prompts.
    _stream(keeper, "default", 0.95, (96, 0.8), (224, 0.8))
    # A batch whose cheap model is far worse: its floor is rebuilt from reference answers.
    _stream(keeper, "poor", 0.95, (96, 0.9), (320, 0.2))
    # A batch nothing of which is rated yet.
    _stream(keeper, "new", 0.9, (32, 0.0), (0, 0.0), rated=False)
    keeper.add_offline({"cheap": 50.0}, "warm-start")  # the offline weights are no stream

    states = floor_states(floors, ROUTER)
    assert [(f.stream, f.floor, f.prompts, f.state) for f in states] == [
        ("default", 0.95, 320, "held"),
        ("poor", 0.95, 416, "rebuilding"),
        ("new", 0.9, 32, "learning"),
    ]
    good, poor, new = states
    assert good.reference_share == pytest.approx(96 / 320)
    assert good.ratings == 96  # three in ten of 320
    assert good.estimate is not None and good.lower_bound is not None
    assert 0.95 <= good.lower_bound < good.estimate
    assert good.estimate == pytest.approx(1.0, abs=0.05)
    assert poor.estimate is not None and poor.lower_bound is not None
    assert poor.lower_bound < poor.estimate < 0.5
    assert (new.estimate, new.lower_bound, new.ratings, new.reference_share) == (None, None, 0, 1.0)
    # λ_cost starts at its initial value and moves only while the slack allows.
    assert new.lambda_cost == pytest.approx(ROUTER.floor_lambda_init)
    assert poor.lambda_cost == pytest.approx(ROUTER.floor_lambda_min)

    assert [f.stream for f in floor_states(floors, ROUTER, only="default")] == ["default"]

    lines = render(Status({}, {}, [], 0, 0.0, None, floors=states))
    head = next(i for i, line in enumerate(lines) if line.startswith("quality floor stream"))
    rows = [line.split() for line in lines[head + 1 : head + 4]]
    assert [r[0] for r in rows] == ["default", "poor", "new"]
    assert rows[0][1:5] == ["0.95", "320", "30.0%", "96"]
    assert rows[0][-1] == "held" and rows[1][-1] == "rebuilding"
    assert rows[2][5:7] == ["-", "-"] and rows[2][-1] == "learning"
    assert Status({}, {}, [], 0, 0.0, None, floors=states).to_json()["floors"][1]["state"] == (
        "rebuilding"
    )


def test_metrics_export_the_default_floor_only(
    floors: RedisFloorStore, redis_url: str, pg_url: str
) -> None:
    keeper = FloorKeeper(floors, ROUTER)
    _stream(keeper, "default", 0.95, (96, 0.8), (224, 0.8))
    _stream(keeper, "batch-1", 0.95, (96, 0.9), (320, 0.2))
    (want,) = floor_states(floors, ROUTER, only="default")
    got = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for x in scrape("ConduitCollector", redis_url, pg_url)
        if x.name.startswith("conduit_floor_")
    }
    assert got == {
        ("conduit_floor_quality_ratio", (("bound", "estimate"), ("floor", "0.95"))): pytest.approx(
            want.estimate
        ),
        ("conduit_floor_quality_ratio", (("bound", "lower"), ("floor", "0.95"))): pytest.approx(
            want.lower_bound
        ),
        ("conduit_floor_reference_share", (("floor", "0.95"),)): pytest.approx(96 / 320),
        ("conduit_floor_lambda_cost", (("floor", "0.95"),)): pytest.approx(want.lambda_cost),
    }
