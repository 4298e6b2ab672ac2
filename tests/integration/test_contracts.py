"""Contract tests: the same assertions over each port's in-memory fake and its real adapter
(Redis db of CONDUIT_TEST_REDIS_URL, a fresh PostgreSQL schema), so a unit test on a fake
says something about production. The posterior store's fake must give the Redis store's
numbers exactly, decay and idempotency included."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from conduit_workers.domain.bandit import COUNTERS, ArmStats
from conduit_workers.domain.items import parse_item
from conduit_workers.domain.learning import learn, updates_for
from conduit_workers.domain.ports import History, PosteriorStore, RecentPrompts
from conduit_workers.domain.reask import text_vector
from conduit_workers.domain.records import DecisionRow, ResultRow, Update
from conduit_workers.domain.rewards import EXPLICIT, IMPLICIT, FeedbackEvent
from conduit_workers.fakes.history_memory import InMemoryHistory
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore, RedisPosteriorStore
from conduit_workers.learning.recent_prompts import InMemoryRecentPrompts, RedisRecentPrompts
from conduit_workers.routing.quality_floor import FloorMark
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration
DIM = 4
DECAY = 0.97


# -- posterior store ----------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> PosteriorStore:
    if request.param == "memory":
        return InMemoryPosteriorStore()
    return RedisPosteriorStore.from_url(request.getfixturevalue("redis_url"), TEST_PREFIX)


def _events(rng: np.random.Generator, k: int, n: int) -> tuple[list[FeedbackEvent], dict[str, Any]]:
    """n events on prompts of round k over two models: ratings, failed and fine calls."""
    events, contexts = [], {}
    for i in range(n):
        q = f"q{k}-{i}"
        contexts[q] = np.concatenate(([1.0], rng.normal(size=DIM - 1)))
        model = "a" if i % 3 else "b"
        events.append(
            FeedbackEvent(
                f"implicit:{q}:{model}",
                q,
                model,
                IMPLICIT,
                0.0,
                0.5 if i % 4 == 0 else 0.0,
                is_call=True,
                error=i % 4 == 0,
                latency_ms=float(rng.uniform(50, 500)),
                in_tokens=int(rng.integers(10, 100)),
                out_tokens=int(rng.integers(1, 50)),
                cost_usd=float(rng.uniform(0, 1e-3)),
            )
        )
        if i % 2:
            events.append(
                FeedbackEvent(f"explicit:{q}", q, model, EXPLICIT, float(rng.uniform()), 1.0)
            )
    return events, contexts


def _run(store: PosteriorStore, decay: float) -> dict[str, tuple[int, ArmStats]]:
    rng = np.random.default_rng(7)
    for k in range(12):
        events, contexts = _events(rng, k, 9)
        assert learn(store, events, contexts, DIM, f"u{k}", decay) == 2
        assert learn(store, events, contexts, DIM, f"u{k}", decay) == 0  # redelivered
    return store.read(["a", "b", "never"], DIM)


@pytest.mark.parametrize("decay", [1.0, DECAY])
def test_store_applies_each_update_once_and_versions_count_them(
    store: PosteriorStore, decay: float
) -> None:
    read = _run(store, decay)
    assert read["a"][0] == read["b"][0] == 12
    version, never = read["never"]
    assert version == 0 and never.is_empty() and never.xx.shape == (DIM, DIM)
    stats = read["a"][1]
    assert np.array_equal(stats.xx, stats.xx.T)  # exactly symmetric
    # The call counters are exact sums, whatever the decay.
    assert stats.counters["calls"] == 12 * 6


@pytest.mark.parametrize("decay", [1.0, DECAY])
def test_in_memory_store_gives_the_redis_stores_numbers(redis_url: str, decay: float) -> None:
    """Bit for bit: the Lua script is the reference of the decay arithmetic."""
    memory = _run(InMemoryPosteriorStore(), decay)
    redis_read = _run(RedisPosteriorStore.from_url(redis_url, TEST_PREFIX), decay)
    for m in ("a", "b"):
        (vm, sm), (vr, sr) = memory[m], redis_read[m]
        assert vm == vr
        assert np.array_equal(sm.xx, sr.xx) and np.array_equal(sm.xr, sr.xr)
        assert [sm.counters[c] for c in COUNTERS] == [sr.counters[c] for c in COUNTERS]
    if decay < 1.0:  # and decay did change the numbers
        assert (
            memory["a"][1].counters["n"] < _run(InMemoryPosteriorStore(), 1.0)["a"][1].counters["n"]
        )


def test_store_reset_forgets_a_model(store: PosteriorStore) -> None:
    rng = np.random.default_rng(1)
    events, contexts = _events(rng, 0, 6)
    store.apply(updates_for(events, contexts, DIM, "u0"))
    store.reset(["a"])
    read = store.read(["a", "b"], DIM)
    assert read["a"][0] == 0 and read["a"][1].is_empty()
    assert read["b"][0] == 1 and not read["b"][1].is_empty()


def test_store_update_ids_are_per_model(store: PosteriorStore) -> None:
    delta = ArmStats.zeros(DIM)
    delta.add_observation(np.ones(DIM), 1.0, 1.0)
    assert store.apply([Update("u:a", "a", delta), Update("u:b", "b", delta)]) == 2
    assert store.apply([Update("u:a", "a", delta), Update("u:c", "c", delta)]) == 1


# -- history ------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sql"])
def hist(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "memory":
        yield InMemoryHistory()
    else:
        yield request.getfixturevalue("history")


def _submit(h: Any, batch: str, *prompts: str, budget: float | None = None) -> list[str]:
    items = [
        parse_item({"prompt": p, "id": f"{batch}-{i}"}, line=i + 1, max_prompt_chars=1000)
        for i, p in enumerate(prompts)
    ]
    out = h.submit(batch, items, tag=None, rejected=0, constraints={}, budget_usd=budget)
    return list(out.new)


def _decision(q: str, model: str | None = "m") -> DecisionRow:
    return DecisionRow(
        q, model, ["m", "n"], [1.0, 0.5], {"m": 0.5}, "other", 0.1, 0.001, {"m": 0}, None
    )


def test_history_decides_answers_and_records_once(hist: History) -> None:
    qa, qb, qc = _submit(hist, "b", "alpha", "beta", "gamma", budget=1.0)
    assert [r.id for r in hist.load_queries([qa, qb, qc])] == [qa, qb, qc]
    hist.insert_decisions([_decision(qa), _decision(qb)])
    hist.insert_decisions([_decision(qa, "n")])  # redelivered: the first decision stays
    assert [r.id for r in hist.load_queries([qa, qb, qc])] == [qc]
    rows = {r.query_id: r for r in hist.load_for_execution([qa, qb, qc])}
    assert set(rows) == {qa, qb} and rows[qa].model == "m" and rows[qa].prompt == "alpha"
    ev = FeedbackEvent(f"implicit:{qa}:m", qa, "m", IMPLICIT, 1.0, 0.0, is_call=True)
    res = ResultRow(qa, "m", "ok", "answer", 3, 1, 0.25, 10.0, 1, 0)
    assert hist.record_results([res], [ev]) == [qa]
    assert hist.record_results([res], [ev]) == []
    assert [r.query_id for r in hist.load_for_execution([qa, qb])] == [qb]
    assert hist.unapplied_feedback_for([qa, qb]) == [ev.id]
    assert hist.batch_budgets([qa, qc]) == {qa: ("b", 1.0), qc: ("b", 1.0)}
    assert hist.batch_spend(["b", "none"]) == {"b": 0.25, "none": 0.0}
    assert hist.unanswered_counts(["b"]) == {"b": 2}
    assert hist.answered_by([qa, "b-0", qb, "nothing"]) == {qa: (qa, "m"), "b-0": (qa, "m")}


def test_history_keeps_each_decision_s_floor_mark(hist: History) -> None:
    qa, qb, qc = _submit(hist, "f", "alpha", "beta", "gamma")
    marked = DecisionRow(
        **{**_decision(qa, "n").__dict__, "floor": FloorMark("s:0.9", "alt:n", 0.7)}
    )
    unroutable = DecisionRow(
        **{**_decision(qc, None).__dict__, "floor": FloorMark("s:0.9", "x", 0.7)}
    )
    hist.insert_decisions([marked, _decision(qb), unroutable])
    assert hist.floor_marks([qa, qb, qc, "nothing"]) == {qa: "s:0.9|alt:n|0.7|,|n"}
    assert hist.floor_marks([]) == {}


def test_history_events_are_claimed_by_one_update_and_applied_once(hist: History) -> None:
    qa, qb = _submit(hist, "b", "alpha", "beta")
    hist.insert_decisions([_decision(qa)])
    e1 = FeedbackEvent(f"explicit:{qa}", qa, "m", EXPLICIT, 0.5, 1.0)
    e2 = FeedbackEvent(f"explicit:{qb}", qb, "m", EXPLICIT, 1.0, 1.0)
    assert hist.add_feedback([e1, e2]) == [e1.id, e2.id]
    assert hist.add_feedback([e1]) == []
    events, contexts = hist.claim_feedback([e1.id], "u1")
    assert [e.id for e in events] == [e1.id]
    assert list(contexts) == [qa] and np.array_equal(contexts[qa], [1.0, 0.5])
    assert hist.claim_feedback([e1.id, e2.id], "u2")[0] == [e2]  # e1 is u1's
    assert hist.stale_feedback(0.0) == {"u1": [e1.id], "u2": [e2.id]}
    hist.mark_applied("u1")
    assert hist.claim_feedback([], "u1")[0] == []
    assert hist.unapplied_feedback_for([qa, qb]) == [e2.id]
    assert hist.stale_unanswered(0.0) == [qa, qb]
    assert hist.stale_unanswered(3600.0) == []


# -- recent prompts -----------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
def recent(request: pytest.FixtureRequest) -> RecentPrompts:
    if request.param == "memory":
        return InMemoryRecentPrompts(window_s=60.0, max_prompts=3)
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    return RedisRecentPrompts(client, TEST_PREFIX, window_s=60.0, max_prompts=3)


def test_recent_prompts_keep_the_users_newest_within_the_window(recent: RecentPrompts) -> None:
    vec = {q: text_vector(f"prompt number {q}") for q in ("q1", "q2", "q3", "q4", "q5")}
    recent.remember([("ann", "q1", vec["q1"])], now=1000.0)
    recent.remember([("ann", q, vec[q]) for q in ("q2", "q3", "q4")], now=1030.0)
    recent.remember([("bob", "q5", vec["q5"])], now=1030.0)
    got = recent.recent(["ann", "bob", "nobody"], now=1040.0)
    assert [q for q, _ in got["ann"]] == ["q2", "q3", "q4"]  # the newest max_prompts
    assert [q for q, _ in got["bob"]] == ["q5"] and got["nobody"] == []
    assert np.allclose(got["ann"][0][1], vec["q2"], atol=1e-6)
    assert [q for q, _ in recent.recent(["ann"], now=1095.0)["ann"]] == []  # window passed
