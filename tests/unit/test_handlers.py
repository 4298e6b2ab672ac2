"""The workers' handle_* functions on the in-memory fakes: a prompt routed, answered and learned
from, with no Redis, no database and no provider (milliseconds). The fakes are held to the
real adapters by tests/integration/test_contracts.py."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from conduit_workers.domain.catalog import Catalog, ModelSpec
from conduit_workers.domain.items import parse_item
from conduit_workers.domain.rewards import EXPLICIT, FeedbackEvent, explicit_event_id
from conduit_workers.errors import PermanentProviderError, RetryableProviderError
from conduit_workers.execution.executor import handle_execute_batch
from conduit_workers.fakes.history_memory import InMemoryHistory
from conduit_workers.fakes.llm_fake import FakeLLM
from conduit_workers.learning.feedback import handle_apply_events, handle_sweep
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore
from conduit_workers.learning.reask import ReAskDetector
from conduit_workers.learning.recent_prompts import InMemoryRecentPrompts
from conduit_workers.routing.embedder import HashingEmbedder
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.routing.router import handle_route_batch
from conduit_workers.settings import ExecutorSettings, FeedbackSettings, RouterSettings

URL = "http://127.0.0.1:1/v1"
CATALOG = Catalog(
    models=(
        ModelSpec("cheap", "openai-compatible", 0.5, 1.0, base_url=URL),
        ModelSpec("strong", "openai-compatible", 10.0, 30.0, base_url=URL),
    ),
    reference="strong",
)
EX = ExecutorSettings(backoff_base_s=0.0, backoff_max_s=0.0, rate_limit_wait_s=0.0)
FB = FeedbackSettings()


def _system(
    *prompts: str, user: str | None = None
) -> tuple[InMemoryHistory, RoutingEngine, list[str]]:
    history = InMemoryHistory()
    items = [
        parse_item({"prompt": p, "user": user}, line=i + 1, max_prompt_chars=1000)
        for i, p in enumerate(prompts)
    ]
    ids = list(history.submit("b", items).new)
    settings = RouterSettings(quality_floor=None)
    engine = RoutingEngine(
        CATALOG, InMemoryPosteriorStore(), HashingEmbedder(64), settings, np.random.default_rng(0)
    )
    return history, engine, ids


def _execute(history: InMemoryHistory, ids: list[str], llm: FakeLLM):  # type: ignore[no-untyped-def]
    return asyncio.run(handle_execute_batch(ids, history, llm, CATALOG, EX, FB))


def test_route_execute_and_learn_on_fakes() -> None:
    history, engine, ids = _system("What is 2+2?", "Name a prime number.", "Explain TCP.")
    assert handle_route_batch(ids, history, engine) == 3
    assert handle_route_batch(ids, history, engine) == 0  # redelivered: nothing decided twice
    decided = {q: history.decisions[q].model for q in ids}
    assert set(decided.values()) <= {"cheap", "strong"}

    llm = FakeLLM()
    results, pending = _execute(history, ids, llm)
    assert sorted(r.query_id for r in results) == sorted(ids)
    assert all(r.status == "ok" and r.model == decided[r.query_id] for r in results)
    assert sorted(m for m, _ in llm.calls) == sorted(decided.values())
    assert len(pending) == 3  # one implicit event per call, not applied yet
    assert _execute(history, ids, llm) == ([], pending)  # answered once: no second call
    assert len(llm.calls) == 3

    q = ids[0]
    rating = FeedbackEvent(explicit_event_id(q), q, decided[q], EXPLICIT, 1.0, 1.0)
    history.add_feedback([rating])
    store = engine.store
    n, applied = handle_apply_events([*pending, rating.id], history, store, engine.dim, 1.0)
    assert n == 4 and applied == len(set(decided.values()))
    assert handle_apply_events([*pending, rating.id], history, store, engine.dim, 1.0) == (0, 0)
    stats = store.read([decided[q]], engine.dim)[decided[q]][1]
    assert stats.counters["n"] == 1.0 and stats.counters["r"] == 1.0  # the one rating
    assert history.unapplied_feedback_for(ids) == []


def test_executor_falls_back_after_retryable_errors_and_stops_on_permanent_ones() -> None:
    history, engine, ids = _system("first prompt", "second prompt")
    handle_route_batch(ids, history, engine)

    def answer(model: str, prompt: str) -> str:
        if prompt == "second prompt":
            raise PermanentProviderError("HTTP 400: rejected", model, 400)
        if model == history.decisions[ids[0]].model:
            raise RetryableProviderError("HTTP 503", model, 503)
        return "fine"

    llm = FakeLLM(answer)
    results, _ = _execute(history, ids, llm)
    by_id = {r.query_id: r for r in results}
    first, second = by_id[ids[0]], by_id[ids[1]]
    assert first.status == "ok" and first.fallbacks == 1
    assert first.attempts == EX.max_attempts + 1  # every attempt on the first, one on the next
    assert second.status == "error" and second.error_class is not None and second.attempts == 1


def test_sweep_applies_claimed_events_and_resends_the_rest() -> None:
    history, engine, ids = _system("lost prompt")
    handle_route_batch(ids, history, engine)
    results, pending = _execute(history, ids, FakeLLM())
    history.claim_feedback(pending, "u-lost")  # a feedback task lost after its claim
    prompts, events, applied = handle_sweep(history, engine.store, engine.dim, 1.0, 0.0)
    assert (prompts, events, applied) == ([], [], 1)
    assert history.unapplied_feedback_for(ids) == []


@pytest.mark.parametrize("same", [True, False])
def test_a_user_re_asking_gives_the_earlier_answer_a_zero(same: bool) -> None:
    history, engine, ids = _system("how do I sort a list in python", user="ann")
    sent: list[list[str]] = []
    reasks = ReAskDetector(InMemoryRecentPrompts(600.0), history, 0.9, sent.append)
    handle_route_batch(ids, history, engine, reasks)
    _execute(history, ids, FakeLLM())
    again = "how do I sort a list in python ?" if same else "what is the capital of peru"
    item = parse_item({"prompt": again, "user": "ann"}, line=1, max_prompt_chars=1000)
    new = list(history.submit("b2", [item]).new)
    handle_route_batch(new, history, engine, reasks)
    assert bool(sent) is same
    if same:
        (event_id,) = sent[0]
        event = history.events[event_id].event
        assert (event.query_id, event.reward) == (ids[0], 0.0)
