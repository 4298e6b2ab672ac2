import multiprocessing as mp

import numpy as np
import pytest
import redis

from conduit_workers.domain.bandit import ArmStats
from conduit_workers.domain.records import Update
from conduit_workers.errors import StoreUnavailable
from conduit_workers.learning.posterior_store import RedisPosteriorStore
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration
DIM = 4


def _delta(seed: int, n: int = 3) -> ArmStats:
    rng = np.random.default_rng(seed)
    d = ArmStats.zeros(DIM)
    for _ in range(n):
        d.add_observation(rng.standard_normal(DIM), float(rng.random()), 1.0)
    d.add_call(error=False, latency_ms=12.5, in_tokens=10, out_tokens=3, cost_usd=0.001)
    return d


def test_update_is_applied_once_per_id(redis_url):
    store = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX)
    d = _delta(1)
    assert store.apply([Update("u1", "m", d)]) == 1
    assert store.apply([Update("u1", "m", d), Update("u1", "m", d)]) == 0
    version, stats = store.read(["m"], DIM)["m"]
    assert version == 1
    np.testing.assert_allclose(stats.xx, d.xx, rtol=1e-12)
    np.testing.assert_allclose(stats.xr, d.xr, rtol=1e-12)
    assert stats.counters["calls"] == 1 and stats.counters["n"] == 3


def test_unknown_model_reads_as_zeros_and_cache_follows_versions(redis_url):
    store = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX)
    version, stats = store.read(["new"], DIM)["new"]
    assert version == 0 and stats.is_empty()
    other = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX)
    other.apply([Update("u", "new", _delta(2))])
    version, stats = store.read(["new"], DIM)["new"]
    assert version == 1 and stats.counters["n"] == 3


def test_decay_scales_old_evidence_before_adding(redis_url):
    store = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX)
    a, b = _delta(3), _delta(4)
    store.apply([Update("a", "m", a)], decay=0.9)
    store.apply([Update("b", "m", b)], decay=0.9)
    _, stats = store.read(["m"], DIM)["m"]
    np.testing.assert_allclose(stats.xr, a.xr * 0.9**3 + b.xr, rtol=1e-9)


def test_dimension_change_is_refused_with_advice(redis_url):
    store = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX)
    store.apply([Update("a", "m", _delta(5))])
    with pytest.raises(StoreUnavailable) as info:
        store.apply([Update("b", "m", ArmStats.zeros(DIM + 1))])
    assert isinstance(info.value.__cause__, redis.ResponseError)
    assert "reset the posteriors" in str(info.value.__cause__)


def test_unreachable_redis_is_store_unavailable():
    store = RedisPosteriorStore.from_url("redis://127.0.0.1:1/0", TEST_PREFIX, socket_timeout_s=0.5)
    with pytest.raises(StoreUnavailable):
        store.read(["m"], DIM)


def _writer(url: str, worker: int, updates: int, repeat: int) -> None:
    store = RedisPosteriorStore.from_url(url, TEST_PREFIX)
    for i in range(updates):
        d = ArmStats.zeros(DIM)
        d.add_observation(np.ones(DIM), 1.0, 1.0)
        d.add_call(error=False, latency_ms=1.0, in_tokens=1, out_tokens=1, cost_usd=0.5)
        # every update is sent `repeat` times, as a redelivered task would
        for _ in range(repeat):
            store.apply([Update(f"w{worker}-{i}", "shared", d)])
        # and some ids collide across writers: each must count once in all
        store.apply([Update(f"common-{i}", "shared", d)])


def test_concurrent_writers_lose_and_double_nothing(redis_url):
    writers, updates = 4, 150
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(redis_url, w, updates, 2)) for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX)
    version, stats = store.read(["shared"], DIM)["shared"]
    expected = writers * updates + updates
    assert version == expected
    assert stats.counters["n"] == expected
    assert stats.counters["calls"] == expected
    assert stats.counters["cost_usd"] == pytest.approx(0.5 * expected, rel=1e-12)
    np.testing.assert_allclose(stats.xx, np.full((DIM, DIM), float(expected)))
