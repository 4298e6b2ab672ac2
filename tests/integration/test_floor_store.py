"""The quality floor's counters in Redis: atomic and idempotent under concurrent routers."""

from __future__ import annotations

import math
import multiprocessing as mp
import threading

import pytest
import redis

from conduit_workers.domain import floor as fl
from conduit_workers.routing.floor_store import InMemoryFloorStore, RedisFloorStore
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration

BOUNDS = ((math.log(0.002), math.log(5.0)), math.log(0.05))
WORKERS, UPDATES = 4, 200


def _work(url: str, worker: int) -> None:
    """One router process: every update twice (a redelivery), and half of the others' too."""
    store = RedisFloorStore(redis.Redis.from_url(url), TEST_PREFIX, 60)
    for k in range(UPDATES):
        for owner in (worker, (worker + 1) % WORKERS):
            inc = {fl.DECIDED + fl.AUDIT: 1.0, fl.SUM + fl.AUDIT: 0.5, fl.LOG_LAMBDA: 0.001}
            store.apply("default:0.95", f"decide:{owner}:{k}", inc, *BOUNDS)


@pytest.mark.parametrize("kind", ["threads", "processes"])
def test_concurrent_updates_count_once_each(redis_url, kind):
    store = RedisFloorStore(redis.Redis.from_url(redis_url), TEST_PREFIX, 60)
    if kind == "threads":
        runners = [threading.Thread(target=_work, args=(redis_url, w)) for w in range(WORKERS)]
    else:
        ctx = mp.get_context("spawn")
        runners = [ctx.Process(target=_work, args=(redis_url, w)) for w in range(WORKERS)]  # type: ignore[misc]
    for r in runners:
        r.start()
    for r in runners:
        r.join(120)
    fields = store.read("default:0.95")
    assert fields[fl.DECIDED + fl.AUDIT] == WORKERS * UPDATES  # nothing lost, nothing doubled
    assert fields[fl.SUM + fl.AUDIT] == pytest.approx(WORKERS * UPDATES * 0.5)
    assert fields[fl.LOG_LAMBDA] == pytest.approx(math.log(0.05) + WORKERS * UPDATES * 0.001)


def test_log_lambda_is_clamped_and_redis_matches_memory(redis_url):
    stores = [
        RedisFloorStore(redis.Redis.from_url(redis_url), TEST_PREFIX, 60),
        InMemoryFloorStore(),
    ]
    for store in stores:
        assert store.apply("s", "u1", {fl.LOG_LAMBDA: 100.0, fl.RATED + "alt:m": 1.0}, *BOUNDS)
        assert not store.apply("s", "u1", {fl.LOG_LAMBDA: 100.0, fl.RATED + "alt:m": 1.0}, *BOUNDS)
        assert store.apply("s", "u2", {fl.LOG_LAMBDA: -1.0}, *BOUNDS)
    a, b = (s.read("s") for s in stores)
    assert a == pytest.approx(b)
    assert a[fl.LOG_LAMBDA] == pytest.approx(math.log(5.0) - 1.0)
    assert a[fl.RATED + "alt:m"] == 1.0
