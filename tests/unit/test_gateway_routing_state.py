"""The HTTP API's routing state around the request: posteriors and floor counters read at most
every ``max_age_s``, floor decision counts written by ``flush``."""

from __future__ import annotations

import logging

import pytest

from conduit_workers.domain.bandit import ArmStats
from conduit_workers.domain.floor import LOG_LAMBDA
from conduit_workers.domain.records import Update
from conduit_workers.errors import StoreUnavailable
from conduit_workers.gateway import routing_state
from conduit_workers.gateway.routing_state import RecentPosteriors, WriteBehindFloors
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore
from conduit_workers.routing.floor_store import InMemoryFloorStore


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
