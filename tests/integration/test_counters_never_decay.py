"""Forgetting applies to quality evidence only: with decay < 1 the regression statistics and
n, r, rr fade, while calls, errors, latency, tokens and cost stay exact sums (what `conduit
posteriors` and the spend figures show equals what was recorded), in Redis and in memory."""

from __future__ import annotations

import numpy as np
import pytest

from conduit_workers.domain.bandit import ArmStats
from conduit_workers.domain.ports import PosteriorStore
from conduit_workers.domain.records import Update
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore, RedisPosteriorStore
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration
DIM = 3
DECAY = 0.99


def _update(i: int) -> ArmStats:
    d = ArmStats.zeros(DIM)
    d.add_observation(np.array([1.0, 0.5, -0.5]), 1.0 if i % 2 else 0.0, 1.0)
    d.add_call(error=i % 5 == 0, latency_ms=100.0, in_tokens=10, out_tokens=4, cost_usd=0.25)
    return d


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_counters_of_calls_errors_and_cost_never_decay(kind: str, request) -> None:  # type: ignore[no-untyped-def]
    store: PosteriorStore
    if kind == "redis":
        store = RedisPosteriorStore.from_url(request.getfixturevalue("redis_url"), TEST_PREFIX)
    else:
        store = InMemoryPosteriorStore()
    n = 200
    for i in range(n):
        store.apply([Update(f"u{i}", "m", _update(i))], decay=DECAY)
    _, stats = store.read(["m"], DIM)["m"]
    c = stats.counters
    assert (c["calls"], c["errors"], c["in_tokens"], c["out_tokens"]) == (n, n / 5, 10 * n, 4 * n)
    assert c["latency_ms"] == 100.0 * n and c["cost_usd"] == pytest.approx(0.25 * n, rel=1e-12)
    # Quality evidence fades: each old observation is worth DECAY per later one.
    expected_n = sum(DECAY**k for k in range(n))
    assert c["n"] == pytest.approx(expected_n, rel=1e-9)
    assert stats.xx[0, 0] == pytest.approx(expected_n, rel=1e-9)
