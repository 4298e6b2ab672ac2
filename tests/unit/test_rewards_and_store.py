import pickle

import numpy as np
import pytest

from conduit_workers.domain.bandit import ArmStats
from conduit_workers.domain.learning import aggregate
from conduit_workers.domain.records import Update
from conduit_workers.domain.rewards import FeedbackEvent, implicit_reward, validate_rating
from conduit_workers.errors import InputError, PermanentProviderError, RetryableProviderError
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore


def test_aggregate_sums_observations_and_calls_per_model():
    x1, x2 = np.array([1.0, 0.5]), np.array([1.0, -1.0])
    events = [
        FeedbackEvent("e1", "q1", "a", "explicit", 1.0, 1.0),
        FeedbackEvent("e2", "q2", "a", "explicit", 0.0, 1.0),
        FeedbackEvent(
            "e3", "q1", "b", "implicit", 0.0, 1.0, is_call=True, error=True, latency_ms=30
        ),
        FeedbackEvent(
            "e4",
            "q3",
            "b",
            "implicit",
            1.0,
            0.0,
            is_call=True,
            latency_ms=10,
            in_tokens=5,
            out_tokens=2,
            cost_usd=0.5,
        ),
    ]
    out = aggregate(events, {"q1": x1, "q2": x2}, dim=2)
    a, b = out["a"], out["b"]
    np.testing.assert_allclose(a.xx, np.outer(x1, x1) + np.outer(x2, x2))
    np.testing.assert_allclose(a.xr, x1)
    assert a.counters["n"] == 2 and a.counters["r"] == 1 and a.counters["calls"] == 0
    np.testing.assert_allclose(b.xx, np.outer(x1, x1))  # q3 has no context: a call, no evidence
    assert b.counters["calls"] == 2 and b.counters["errors"] == 1
    assert b.counters["latency_ms"] == 40 and b.counters["cost_usd"] == 0.5 and b.counters["n"] == 1


def test_fields_round_trip():
    s = ArmStats.zeros(3)
    s.add_observation(np.array([1.0, 2.0, 3.0]), 0.5, 2.0)
    back = ArmStats.from_fields(s.to_fields(), 3)
    np.testing.assert_array_equal(back.xx, s.xx)
    np.testing.assert_array_equal(back.xr, s.xr)
    assert back.counters == s.counters


def test_implicit_rewards_and_rating_validation():
    assert implicit_reward(True, 1.0, 0.0, 1.0) == (0.0, 1.0)
    assert implicit_reward(False, 1.0, 0.0, 1.0) == (1.0, 0.0)
    assert validate_rating(1) == 1.0
    for bad in (1.5, -0.1, float("nan"), "0.5", True):
        with pytest.raises(ValueError):
            validate_rating(bad)


def test_in_memory_store_applies_an_update_id_once():
    store = InMemoryPosteriorStore()
    delta = ArmStats.zeros(2)
    delta.add_observation(np.array([1.0, 0.0]), 1.0, 1.0)
    assert store.apply([Update("u1", "a", delta), Update("u1", "a", delta)]) == 1
    version, stats = store.read(["a"], 2)["a"]
    assert version == 1 and stats.counters["n"] == 1


def test_errors_pickle_with_their_fields():
    for err in (
        RetryableProviderError("timeout", "m", None, 2.0),
        PermanentProviderError("HTTP 401", "m", 401),
        InputError("bad", 3),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
    assert RetryableProviderError("HTTP 429", "m", 429).error_class == "http_429"
    assert RetryableProviderError("timeout", "m").error_class == "timeout"
