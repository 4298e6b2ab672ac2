"""The HTTP API's routing state around the request: posteriors and floor counters read at most
every ``max_age_s``, floor decision counts written by ``flush``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import numpy as np
import pytest

from conduit_workers.domain.bandit import ArmStats
from conduit_workers.domain.catalog import Catalog, ModelSpec
from conduit_workers.domain.constraints import Constraints
from conduit_workers.domain.floor import LOG_LAMBDA
from conduit_workers.domain.records import Update
from conduit_workers.errors import StoreUnavailable
from conduit_workers.gateway import routing_state
from conduit_workers.gateway.decider import Decider
from conduit_workers.gateway.routing_state import (
    RecentPosteriors,
    WriteBehindFloors,
    decision_needs_no_redis,
)
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore
from conduit_workers.routing.embedder import HashingEmbedder
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.routing.floor_store import InMemoryFloorStore
from conduit_workers.routing.quality_floor import FloorKeeper
from conduit_workers.settings import RouterSettings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(routing_state.time, "monotonic", c)
    return c


class CountingPosteriors(InMemoryPosteriorStore):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read(self, models: list[str], dim: int) -> dict[str, tuple[int, ArmStats]]:
        self.reads += 1
        return super().read(models, dim)


def _update(uid: str, model: str = "a") -> Update:
    delta = ArmStats.zeros(2)
    delta.counters["calls"] = 1.0
    return Update(uid, model, delta)


def test_posteriors_are_read_at_most_once_per_max_age(clock: Clock) -> None:
    inner = CountingPosteriors()
    store = RecentPosteriors(inner, max_age_s=0.1)
    store.read(["a", "b"], 2)
    clock.now += 0.05
    store.read(["a", "b"], 2)
    assert inner.reads == 1
    store.apply([_update("u1")])  # an update goes through at once
    assert InMemoryPosteriorStore.read(inner, ["a"], 2)["a"][0] == 1  # in the store
    assert store.read(["a", "b"], 2)["a"][0] == 0  # still the read of 50 ms ago
    clock.now += 0.06
    assert store.read(["a", "b"], 2)["a"][0] == 1
    assert store.read(["a"], 2)["a"][0] == 1  # other models: read again
    assert inner.reads == 3


def test_max_age_zero_reads_every_time(clock: Clock) -> None:
    inner = CountingPosteriors()
    store = RecentPosteriors(inner, max_age_s=0.0)
    for _ in range(3):
        store.read(["a"], 2)
    assert inner.reads == 3


def test_floor_counts_wait_for_flush(clock: Clock) -> None:
    inner = InMemoryFloorStore()
    floors = WriteBehindFloors(inner, max_age_s=0.1)
    assert floors.read("default:0.95") == {}
    assert floors.apply("default:0.95", "decide:1", {"n": 1.0, LOG_LAMBDA: 0.5}, (-1.0, 1.0), 0.0)
    assert not floors.apply("default:0.95", "decide:2", {})  # nothing to count
    assert inner.read("default:0.95") == {}
    assert floors.pending()
    # This process's next decisions see its own counts at once (bounds applied).
    assert floors.read("default:0.95") == {"n": 1.0, LOG_LAMBDA: 0.5}
    floors.apply("default:0.95", "decide:3", {LOG_LAMBDA: 0.8}, (-1.0, 1.0), 0.0)
    assert floors.read("default:0.95")[LOG_LAMBDA] == 1.0
    floors.flush()
    assert not floors.pending()
    assert inner.read("default:0.95") == {"n": 1.0, LOG_LAMBDA: 1.0}
    floors.apply("default:0.95", "decide:1", {"n": 1.0}, (-1.0, 1.0), 0.0)  # the same id again
    floors.flush()
    assert inner.read("default:0.95")["n"] == 1.0  # counted once, by the store


def test_floor_counters_are_read_again_after_max_age(clock: Clock) -> None:
    inner = InMemoryFloorStore()
    floors = WriteBehindFloors(inner, max_age_s=0.1)
    floors.read("s")
    inner.apply("s", "other-process", {"n": 3.0})
    assert floors.read("s") == {}
    clock.now += 0.2
    assert floors.read("s") == {"n": 3.0}


class DownFloors(InMemoryFloorStore):
    def apply(self, *args: object, **kwargs: object) -> bool:
        raise StoreUnavailable("down")


def test_a_flush_while_redis_is_down_logs_and_drops(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    floors = WriteBehindFloors(DownFloors(), max_age_s=0.1)
    floors.apply("s", "decide:1", {"n": 1.0})
    with caplog.at_level(logging.WARNING):
        floors.flush()  # never raises
    assert not floors.pending()
    assert "decide:1 of s not counted" in caplog.text


def test_freshness_says_whether_a_read_would_go_to_the_store(clock: Clock) -> None:
    posteriors = RecentPosteriors(CountingPosteriors(), max_age_s=0.1)
    floors = WriteBehindFloors(InMemoryFloorStore(), max_age_s=0.1)
    assert not posteriors.fresh() and not floors.fresh("default:0.95")
    posteriors.read(["a"], 2)
    floors.read("default:0.95")
    assert posteriors.fresh() and floors.fresh("default:0.95")
    assert not floors.fresh("default:0.9")  # another floor's stream was never read
    clock.now += 0.1
    assert not posteriors.fresh() and not floors.fresh("default:0.95")


def _lone_decider(fresh: bool, inline_max_s: float = 1.0) -> Decider:
    catalog = Catalog(
        models=(
            ModelSpec("cheap", "openai-compatible", 0.1, 0.1),
            ModelSpec("strong", "openai-compatible", 10.0, 30.0),
        ),
        reference="strong",
    )
    settings = RouterSettings(projection_dim=4, seed=0)
    engine = RoutingEngine(
        catalog, InMemoryPosteriorStore(), HashingEmbedder(64), settings, np.random.default_rng(0)
    )
    return Decider(engine, fresh=lambda: fresh, inline_max_s=inline_max_s)


def _completes_without_waiting(coro: Coroutine[Any, Any, Any]) -> bool:
    """Whether ``coro`` ran to its end on its first step (it never waited on the loop)."""
    try:
        coro.send(None)
    except StopIteration:
        return True
    coro.close()
    return False


def test_a_lone_request_is_decided_on_the_loop_when_nothing_is_read_from_redis() -> None:
    async def main() -> None:
        inline = _lone_decider(fresh=True)
        assert _completes_without_waiting(inline.decide("q1", "what is 2 + 2?", Constraints()))
        # Routing state to read (a Redis round trip): the worker thread, the loop serving on.
        stale = _lone_decider(fresh=False)
        assert not _completes_without_waiting(stale.decide("q2", "2 + 2?", Constraints()))
        row = await stale.decide("q3", "what is 2 + 2?", Constraints())
        assert row.query_id == "q3" and row.model in ("cheap", "strong")
        # Lone decisions slower than the allowance (e.g. the MiniLM embedder) go to the thread.
        slow = _lone_decider(fresh=True, inline_max_s=0.0)
        assert _completes_without_waiting(slow.decide("q4", "2 + 2?", Constraints()))
        assert not _completes_without_waiting(slow.decide("q5", "2 + 2?", Constraints()))

    asyncio.run(main())


def test_a_decision_needs_no_redis_once_its_state_is_read(clock: Clock) -> None:
    posteriors = RecentPosteriors(CountingPosteriors(), max_age_s=0.1)
    floors = WriteBehindFloors(InMemoryFloorStore(), max_age_s=0.1)
    keeper = FloorKeeper(floors, RouterSettings())
    # Routing by λ alone: the posteriors are all a decision reads.
    by_lambda = decision_needs_no_redis(posteriors, floors, keeper, None)
    assert not by_lambda()
    posteriors.read(["a"], 2)
    assert by_lambda()
    # Under a floor: its stream too, and the warm starts' weights (read every 30 s).
    under_floor = decision_needs_no_redis(posteriors, floors, keeper, "default:0.95")
    assert not under_floor()
    keeper.groups([Constraints()], None)  # what a decision reads: the stream and the weights
    assert under_floor()
    clock.now += 0.1
    assert not under_floor() and not by_lambda()
