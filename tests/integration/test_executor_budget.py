"""The executor under a batch budget, against the replay server, PostgreSQL and Redis: the
budget runs out mid-batch, later prompts get the cheaper model that still fits, then end
``over_budget`` with no call; the batch never spends more than its budget."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from conduit_workers.domain.budget import to_nano, worst_case_cost_usd, worst_input_tokens
from conduit_workers.domain.catalog import Catalog, parse_catalog
from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import DecisionRow, Hold
from conduit_workers.execution.batch_ledger import RedisBatchLedger
from conduit_workers.execution.executor import handle_execute_batch
from conduit_workers.execution.llm import LLMClient
from conduit_workers.fakes.llm_fake import FakeLLM
from conduit_workers.history import history_schema as t
from conduit_workers.history.history import SqlHistory
from conduit_workers.replay import ModelProfile, ReplayConfig
from conduit_workers.settings import BudgetSettings, ExecutorSettings, FeedbackSettings
from tests.conftest import TEST_PREFIX
from tests.replay_harness import RunningServer, start_replay

pytestmark = pytest.mark.integration
BUDGET = BudgetSettings(max_output_tokens=300, input_overhead_tokens=32)


@pytest.fixture
def server() -> Iterator[RunningServer]:
    running = start_replay(
        ReplayConfig(
            data_paths=[],
            profiles={"*": ModelProfile(latency_ms=2)},
            extra_models=("strong", "cheap"),
        )
    )
    yield running
    running.stop()


def _catalog(server: RunningServer) -> Catalog:
    models = [
        {
            "name": name,
            "provider": "openai-compatible",
            "base_url": server.v1,
            "input_price_per_mtok_usd": price_in,
            "output_price_per_mtok_usd": price_out,
        }
        for name, price_in, price_out in (("strong", 10.0, 30.0), ("cheap", 2.0, 2.0))
    ]
    return parse_catalog({"reference": "strong", "models": models}, {})


def _submit(history: SqlHistory, batch: str, n: int, budget_usd: float | None) -> list[str]:
    items = [
        parse_item(
            {"id": f"{batch}-{i}", "prompt": f"Question {i} of batch {batch}: why?"},
            line=i + 1,
            max_prompt_chars=1000,
        )
        for i in range(n)
    ]
    history.submit(batch, items, tag=None, rejected=0, constraints={}, budget_usd=budget_usd)
    history.insert_decisions(
        [
            DecisionRow(it.key, "strong", ["strong", "cheap"], [], {}, "general", 0.0, None, {})
            for it in items
        ]
    )
    return [it.key for it in items]


def _results(history: SqlHistory, ids: list[str]) -> list[dict[str, object]]:
    with history.engine.connect() as conn:
        rows = conn.execute(sa.select(t.results).where(t.results.c.query_id.in_(ids)))
        return [dict(r._mapping) for r in rows]


def _execute(
    server: RunningServer,
    history: SqlHistory,
    ledger: RedisBatchLedger,
    ids: list[str],
    conc: int,
    max_attempts: int = 1,
) -> None:
    catalog = _catalog(server)
    ex = ExecutorSettings(concurrency=conc, max_attempts=max_attempts, backoff_base_s=0.01)

    async def main() -> None:
        llm = LLMClient(catalog, {}, timeout_s=10)
        try:
            await handle_execute_batch(
                ids,
                history,
                llm,
                catalog,
                ex,
                FeedbackSettings(),
                ledger=ledger,
                budget_settings=BUDGET,
            )
        finally:
            await llm.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("concurrency", [1, 16])
def test_budget_runs_out_mid_batch_cheaper_model_then_over_budget(
    server: RunningServer, history: SqlHistory, redis_url: str, concurrency: int
) -> None:
    ledger = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)
    catalog = _catalog(server)
    limit = 0.03
    budgeted = _submit(history, "b", 80, limit)
    free = _submit(history, "f", 5, None)  # another batch in the same chunks: no budget
    for i in range(0, len(budgeted), 20):  # four chunks, like four execute tasks
        _execute(server, history, ledger, budgeted[i : i + 20] + free, concurrency)

    rows = _results(history, budgeted)
    assert len(rows) == 80
    status = Counter((r["status"], r["model"]) for r in rows)
    assert status[("ok", "strong")] >= 1
    assert status[("ok", "cheap")] >= 1
    assert status[("over_budget", None)] >= 1
    assert sum(status.values()) == 80
    spend = sum(float(r["cost_usd"]) for r in rows)  # type: ignore[arg-type]
    assert spend <= limit
    state = ledger.states(["b"])["b"]
    assert to_nano(state.spent_usd) >= to_nano(spend) - len(rows)  # ledger rounds costs up
    assert state.spent_usd <= limit and state.reserved_usd == 0
    # Refused only when not even the cheap model's worst case fitted any more: a prompt that
    # only the holds of calls in flight kept out waited for them to settle.
    cheap_worst = worst_case_cost_usd(
        catalog.get("cheap"),
        worst_input_tokens("Question 79 of batch b: why?", BUDGET.input_overhead_tokens),
        BUDGET.max_output_tokens,
    )
    assert limit - state.spent_usd < cheap_worst
    for r in rows:
        if r["status"] == "over_budget":
            assert r["attempts"] == 0 and r["cost_usd"] == 0
            assert "batch budget $0.03 cannot pay for a call" in str(r["error_message"])
            assert "cheap up to $" in str(r["error_message"])
    # The unbudgeted batch's prompts were all answered by the chosen model.
    assert Counter((r["status"], r["model"]) for r in _results(history, free)) == {
        ("ok", "strong"): 5
    }
    # No feedback event for a prompt that made no call.
    over = [r["query_id"] for r in rows if r["status"] == "over_budget"]
    with history.engine.connect() as conn:
        events = conn.scalar(
            sa.select(sa.func.count())
            .select_from(t.feedback)
            .where(t.feedback.c.query_id.in_(over))
        )
    assert events == 0


def test_a_ledger_lost_with_redis_mid_batch_starts_again_from_the_recorded_spend(
    server: RunningServer, history: SqlHistory, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    ledger = RedisBatchLedger(client, TEST_PREFIX, 3600)
    limit = 0.03
    ids = _submit(history, "lost", 80, limit)
    _execute(server, history, ledger, ids[:20], 4)
    spent_before = ledger.states(["lost"])["lost"].spent_usd
    assert spent_before > limit / 3
    client.delete(*ledger.keys("lost"))  # Redis restarted without its data
    for i in range(20, 80, 20):
        _execute(server, history, ledger, ids[i : i + 20], 4)
    rows = _results(history, ids)
    spend = sum(float(r["cost_usd"]) for r in rows)  # type: ignore[arg-type]
    assert spend <= limit
    assert Counter(r["status"] for r in rows)["over_budget"] >= 1
    assert ledger.states(["lost"])["lost"].spent_usd == pytest.approx(spend, abs=1e-6)


def test_a_redelivered_chunk_pays_nothing_twice(
    server: RunningServer, history: SqlHistory, redis_url: str
) -> None:
    ledger = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)
    ids = _submit(history, "r", 10, 1.0)
    _execute(server, history, ledger, ids, 4)
    before = ledger.states(["r"])["r"]
    _execute(server, history, ledger, ids, 4)  # answered already: no call, no reservation
    after = ledger.states(["r"])["r"]
    assert (after.spent_usd, after.calls, after.reserved_usd) == (before.spent_usd, 10, 0)
    assert sum(float(r["cost_usd"]) for r in _results(history, ids)) <= before.spent_usd  # type: ignore[arg-type]


def test_retries_and_fallback_reserve_anew_and_failed_calls_cost_nothing(
    history: SqlHistory, redis_url: str
) -> None:
    failing = start_replay(
        ReplayConfig(
            data_paths=[],
            profiles={"*": ModelProfile(latency_ms=2), "strong": ModelProfile(rate_500=1.0)},
            extra_models=("strong", "cheap"),
        )
    )
    try:
        ledger = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)
        ids = _submit(history, "fb", 6, 1.0)
        _execute(failing, history, ledger, ids, 3, max_attempts=2)
        rows = _results(history, ids)
        assert Counter((r["status"], r["model"]) for r in rows) == {("ok", "cheap"): 6}
        assert all(r["attempts"] == 3 and r["fallbacks"] == 1 for r in rows)
        state = ledger.states(["fb"])["fb"]
        # 18 holds (two failed strong attempts and one cheap call per prompt), six of them paid.
        assert (state.calls, state.reserved_usd, state.expired) == (6, 0, 0)
        assert ledger.client.scard(ledger.keys("fb")[3]) == 18  # every hold settled once
        spend = sum(float(r["cost_usd"]) for r in rows)  # type: ignore[arg-type]
        assert state.spent_usd == pytest.approx(spend, abs=1e-8)
    finally:
        failing.stop()


class _WatchedLedger(RedisBatchLedger):
    """The Redis ledger, telling when a reservation is refused (the test's only hook)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused: set[str] = set()
        self.two_refused = threading.Event()

    def reserve(self, batch_id: str, limit_usd: float, reservation_id: str, *args: Any) -> Hold:
        hold = super().reserve(batch_id, limit_usd, reservation_id, *args)
        if not hold.held:
            self.refused.add(reservation_id)
            if len(self.refused) >= 2:
                self.two_refused.set()
        return hold


def test_a_prompt_waiting_for_its_budget_leaves_its_call_slot_to_others(
    history: SqlHistory, redis_url: str
) -> None:
    """Two prompts of a budgeted batch wait for a hold left by a call in flight (or by a dead
    worker's, until it expires); meanwhile the process's two call slots serve another batch.
    Here the other batch's call is what releases the hold: had the waiting prompts kept the
    slots, it would not have been made until they gave up, and they would end over_budget."""
    catalog = parse_catalog(
        {
            "reference": "strong",
            "models": [
                {
                    "name": "strong",
                    "provider": "openai-compatible",
                    "base_url": "http://127.0.0.1:9/v1",  # never called: the provider is FakeLLM
                    "input_price_per_mtok_usd": 10.0,
                    "output_price_per_mtok_usd": 30.0,
                }
            ],
        },
        {},
    )
    waiting = _submit(history, "w", 2, None)
    free = _submit(history, "free", 1, None)
    text = "Question 0 of batch w: why?"
    worst = worst_case_cost_usd(
        catalog.get("strong"),
        worst_input_tokens(text, BUDGET.input_overhead_tokens),
        BUDGET.max_output_tokens,
    )
    limit = 1.5 * worst  # one call's worst case fits, not two; the stale hold keeps both out
    with history.engine.begin() as conn:
        conn.execute(sa.update(t.batches).where(t.batches.c.id == "w").values(budget_usd=limit))
    ledger = _WatchedLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)
    assert ledger.reserve("w", limit, "in-flight", worst, 3600).held

    def answer(model: str, prompt: str) -> str:
        if "batch free" in prompt:
            ledger.settle("w", "in-flight", 0.0)  # the call in flight ends
        return "yes"

    llm = FakeLLM(answer)
    ex = ExecutorSettings(concurrency=2, max_attempts=1)
    budget = BudgetSettings(
        max_output_tokens=BUDGET.max_output_tokens,
        input_overhead_tokens=BUDGET.input_overhead_tokens,
        hold_wait_s=60.0,
    )

    async def main() -> None:
        slots = asyncio.Semaphore(2)  # the process's call slots, shared by its tasks

        async def run(ids: list[str]) -> None:
            await handle_execute_batch(
                ids, history, llm, catalog, ex, FeedbackSettings(), slots=slots, ledger=ledger,
                budget_settings=budget,
            )  # fmt: skip

        first = asyncio.create_task(run(waiting))
        # Both waiting prompts took a slot and were refused once before the other task starts.
        await asyncio.to_thread(ledger.two_refused.wait, 30)
        await asyncio.gather(first, run(free))

    asyncio.run(main())
    rows = _results(history, waiting + free)
    assert Counter(r["status"] for r in rows) == {"ok": 3}, rows
    assert ledger.states(["w"])["w"].reserved_usd == 0
