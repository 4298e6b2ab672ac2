"""Property: any interleaving of duplicated, reordered and interrupted deliveries of feedback
events leaves the posteriors equal to applying each event once.

A delivery is a feedback task's list of event ids, run through the same steps as
``handle_apply_events`` (claim in the history database → apply to the store → mark applied);
an interrupted delivery stops after the claim or after the store update (its worker died) and
comes back later, as Celery redelivers it. Runs over the in-memory store and over the real
Redis store with its Lua script.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conduit_workers.domain.bandit import ArmStats
from conduit_workers.domain.learning import aggregate, learn, update_id_for
from conduit_workers.domain.records import DecisionRow
from conduit_workers.domain.rewards import FeedbackEvent
from conduit_workers.history.history import SqlHistory
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore, RedisPosteriorStore
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration
DIM = 3
MODELS = ("a", "b")
N_EVENTS = 8


def _events() -> tuple[list[FeedbackEvent], list[DecisionRow]]:
    rng = np.random.default_rng(3)
    events, decisions = [], []
    for i in range(N_EVENTS):
        qid = f"q{i % 5}"
        model = MODELS[i % 2]
        events.append(
            FeedbackEvent(
                f"e{i}",
                qid,
                model,
                "explicit" if i % 3 else "implicit",
                float(rng.random()),
                float(rng.choice([0.0, 0.5, 1.0])),
                is_call=i % 3 == 0,
                error=i % 4 == 0,
                latency_ms=10.0 * i,
                in_tokens=i,
                out_tokens=2 * i,
                cost_usd=0.001 * i,
            )
        )
    for q in range(5):
        decisions.append(
            DecisionRow(
                f"q{q}",
                "a",
                ["a", "b"],
                list(rng.standard_normal(DIM)),
                {},
                "general",
                0.5,
                None,
                {},
            )
        )
    return events, decisions


# One delivery: some event ids, and where its worker died (None: it finished).
delivery = st.tuples(
    st.lists(st.integers(0, N_EVENTS - 1), min_size=1, max_size=N_EVENTS),
    st.sampled_from([None, "after_claim", "after_apply"]),
)


def _deliver(ids: list[str], stop: str | None, history: SqlHistory, store: object) -> None:
    update_id = update_id_for(ids)
    events, contexts = history.claim_feedback(ids, update_id)
    if stop == "after_claim" or not events:
        return
    learn(store, events, contexts, DIM, update_id)  # type: ignore[arg-type]
    if stop == "after_apply":
        return
    history.mark_applied(update_id)


def _run(deliveries: list[tuple[list[int], str | None]], store: object, tmp: Path) -> None:
    events, decisions = _events()
    history = SqlHistory(f"sqlite:///{tmp / uuid.uuid4().hex}.db", retry_for_s=1)
    history.create_schema()
    history.insert_decisions(decisions)
    history.add_feedback(events)
    schedule: list[tuple[list[str], str | None]] = []
    for idx, stop in deliveries:
        ids = [f"e{i}" for i in idx]
        schedule.append((ids, stop))
        if stop is not None:
            schedule.append((ids, None))  # redelivered after the crash (later, in order)
    schedule.append(([e.id for e in events], None))  # every event is delivered at least once
    for ids, stop in schedule:
        _deliver(ids, stop, history, store)
    assert not history.unapplied_feedback_ids()
    history.dispose()


def _expected() -> dict[str, ArmStats]:
    events, decisions = _events()
    contexts = {d.query_id: np.asarray(d.features) for d in decisions}
    return aggregate(events, contexts, DIM)


def _assert_equal(read: dict[str, tuple[int, ArmStats]]) -> None:
    for model, want in _expected().items():
        _, got = read[model]
        np.testing.assert_allclose(got.xx, want.xx, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got.xr, want.xr, rtol=1e-12, atol=1e-12)
        for k, v in want.counters.items():
            assert got.counters[k] == pytest.approx(v, rel=1e-12, abs=1e-12), (model, k)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(deliveries=st.lists(delivery, max_size=8), rnd=st.randoms(use_true_random=False))
def test_interleavings_apply_each_event_once_in_memory(deliveries, rnd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rnd.shuffle(deliveries)
    store = InMemoryPosteriorStore()
    _run(deliveries, store, tmp_path)
    _assert_equal(store.read(list(MODELS), DIM))


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(deliveries=st.lists(delivery, max_size=8))
def test_interleavings_apply_each_event_once_in_redis(
    deliveries,
    redis_client: redis.Redis,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    redis_client.flushdb()
    store = RedisPosteriorStore(redis_client, f"{TEST_PREFIX}-{uuid.uuid4().hex[:8]}")
    _run(deliveries, store, tmp_path)
    _assert_equal(store.read(list(MODELS), DIM))
