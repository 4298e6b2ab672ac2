"""The packed posterior layout: concurrent writers, legacy data, a flushed script cache."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np
import pytest
import redis

from conduit_workers.domain.learning import learn
from conduit_workers.domain.rewards import IMPLICIT, FeedbackEvent
from conduit_workers.errors import StoreUnavailable
from conduit_workers.learning.posterior_store import RedisPosteriorStore
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration
DIM = 4


def _writer(url: str, w: int) -> None:
    store = RedisPosteriorStore.from_url(url, TEST_PREFIX)
    for k in range(20):
        evs = [
            FeedbackEvent(f"e{w}-{k}-{i}", f"q{w}-{k}-{i}", "m", IMPLICIT, 0.5, 1.0, is_call=True)
            for i in range(10)
        ]
        ctx = {e.query_id: np.array([1.0, 0.5, -0.5, 0.25]) for e in evs}
        learn(store, evs, ctx, DIM, f"u{w}-{k}")
        learn(store, evs, ctx, DIM, f"u{w}-{k}")  # redelivered: applied once


def test_concurrent_writers_lose_and_double_nothing(redis_url):
    procs = [mp.get_context("fork").Process(target=_writer, args=(redis_url, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    version, stats = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX).read(["m"], DIM)["m"]
    assert version == 80
    assert stats.counters["calls"] == 800 and stats.counters["n"] == 800
    assert stats.xx[0, 0] == 800 and stats.xx[1, 2] == 800 * 0.5 * -0.5
    assert stats.xr[3] == 800 * 0.5 * 0.25


def test_legacy_layout_is_refused_with_advice(redis_url):
    store = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX)
    store.client.hset(store.posterior_key("m"), mapping={"n": 3, "xr:0": 1.5, "version": 2})
    evs = [FeedbackEvent("e", "q", "m", IMPLICIT, 1.0, 1.0, is_call=True)]
    with pytest.raises(StoreUnavailable):
        learn(store, evs, {"q": np.ones(DIM)}, DIM, "u")
    with pytest.raises(redis.ResponseError, match="conduit posteriors --reset"):
        store.client.evalsha(
            store._apply.sha, 2, store.posterior_key("m"), "x", 60, DIM, b"\0" * 8, "1"
        )


def test_a_script_missing_from_redis_is_loaded_again(redis_url):
    store = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX)
    evs = [FeedbackEvent("e", "q", "m", IMPLICIT, 1.0, 1.0, is_call=True)]
    assert learn(store, evs, {"q": np.ones(DIM)}, DIM, "u1") == 1
    # As after a Redis restart (SCRIPT FLUSH would disturb the shared server's other users).
    store._apply.sha = "0" * 40
    assert learn(store, evs, {"q": np.ones(DIM)}, DIM, "u2") == 1
    assert store.read(["m"], DIM)["m"][0] == 2
