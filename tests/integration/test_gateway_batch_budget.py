"""A key's daily budget pays for its Batch API lines too: the lines of an OpenAI batch run by the
executor (as the Celery pipeline runs them) reserve and settle in the key's ledger of the day,
the one its chat calls use, while chat calls race them for the last cents. Nothing is spent
past the budget, by the ledger's count or by the history's; the nightly report's spend per key
holds both; a ledger lost with Redis starts again from both."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import select

from conduit_workers.domain.budget import key_ledger, utc_day
from conduit_workers.domain.catalog import load_catalog
from conduit_workers.domain.records import DecisionRow
from conduit_workers.execution.batch_ledger import RedisBatchLedger
from conduit_workers.execution.executor import handle_execute_batch
from conduit_workers.execution.llm import LLMClient
from conduit_workers.gateway import service
from conduit_workers.history import history_schema as t
from conduit_workers.reports.reporting import compute_daily_report
from conduit_workers.settings import BudgetSettings, ExecutorSettings, FeedbackSettings
from tests.conftest import REDIS_URL, TEST_PREFIX
from tests.gateway_harness import Api, running_api

pytestmark = pytest.mark.integration

BUDGET_USD = 0.03  # a strong call costs ~$0.0004 and may cost ~$0.0012: ~70 of 135 fit
LINES = 70
CHATS = 60
FIRST_CHATS = 5
ASK = "Count to ten, slowly, one number on each line."


@pytest.fixture
def api(redis_client: redis.Redis, pg_engine: sa.Engine, tmp_path: Path) -> Iterator[Api]:
    with running_api(redis_client, pg_engine, tmp_path) as running:
        yield running


def _batch_file() -> bytes:
    lines = [
        {
            "custom_id": f"line-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "strong",
                "messages": [{"role": "user", "content": f"Line {i}. {ASK}"}],
                "max_tokens": 10,
            },
        }
        for i in range(LINES)
    ]
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def test_batch_lines_and_chat_calls_share_the_keys_daily_budget(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "RECORDED_SPEND_CACHE_S", 0.0)
    _, api.keys["team"] = api.history.create_key("team", budget_usd_per_day=BUDGET_USD)
    client = api.client("team")
    upload = client.files.create(file=("b.jsonl", io.BytesIO(_batch_file())), purpose="batch")
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    with api.history.engine.connect() as conn:
        qids = list(
            conn.scalars(
                select(t.batch_items.c.query_id).where(t.batch_items.c.batch_id == batch.id)
            )
        )
    assert len(qids) == LINES
    ledger_id = key_ledger("team", utc_day())
    assert api.history.batch_budgets(qids) == {q: (ledger_id, BUDGET_USD) for q in qids}
    # The router paces the batch to what the key has left, over the key's unanswered lines.
    assert api.history.unanswered_counts([ledger_id]) == {ledger_id: LINES}
    # The router's decisions (the line names its model), then the executor races the chats.
    api.history.insert_decisions(
        [DecisionRow(q, "strong", ["strong"], [], {}, "general", 0.0, None, {}) for q in qids]
    )
    ledger = RedisBatchLedger(redis.Redis.from_url(REDIS_URL), TEST_PREFIX, 3600)
    ask: Any = {"model": "strong", "messages": [{"role": "user", "content": ASK}], "max_tokens": 10}
    for _ in range(FIRST_CHATS):  # the key's calls of the morning
        client.chat.completions.create(**ask)
    statuses = asyncio.run(_race(api, qids, ledger))
    assert statuses[200] + statuses[429] == CHATS, statuses
    calls = FIRST_CHATS + statuses[200]
    _settled(api, ledger, ledger_id, calls)

    with api.history.engine.connect() as conn:
        lines = [
            dict(r._mapping)
            for r in conn.execute(select(t.results).where(t.results.c.query_id.in_(qids)))
        ]
    batch_status = Counter(r["status"] for r in lines)
    assert len(lines) == LINES and batch_status["ok"] > 0, batch_status
    assert batch_status["ok"] + batch_status["over_budget"] == LINES, batch_status
    assert statuses[429] + batch_status["over_budget"] > 0  # the budget ran out
    for r in lines:
        if r["status"] == "over_budget":
            assert r["cost_usd"] == 0 and r["attempts"] == 0
            assert "API key 'team''s daily budget of $0.03" in r["error_message"]
    batch_spend = sum(float(r["cost_usd"]) for r in lines)

    # Every hold settled; the ledger and the history agree, within the budget.
    state = ledger.states([ledger_id])[ledger_id]
    assert state.reserved_usd == 0.0
    assert state.spent_usd <= BUDGET_USD
    spend = api.history.batch_spend([ledger_id])[ledger_id]
    assert batch_spend < spend <= BUDGET_USD
    assert state.spent_usd == pytest.approx(spend, abs=1e-6)

    # The nightly report's spend per key holds the batch's lines and the chat calls.
    day = lines[0]["created_at"].astimezone(UTC).date()
    report = compute_daily_report(day, api.history, load_catalog(api.catalog, {}))
    keys = {g.key: g for g in report.keys}
    assert keys["team"].spend_usd == pytest.approx(spend)
    assert keys["team"].budget_usd == BUDGET_USD

    # Redis loses the key's ledger: it starts again from the history's spend, batch lines
    # included (from the chat calls' alone, this call would fit).
    while True:  # spend what is left, until no call fits
        try:
            client.chat.completions.create(**ask)
            calls += 1
        except openai.RateLimitError:
            break
    _settled(api, ledger, ledger_id, calls)
    spend = api.history.batch_spend([ledger_id])[ledger_id]
    api.redis.delete(*ledger.keys(ledger_id))
    assert BUDGET_USD - (spend - batch_spend) > 0.002  # the chat calls' share leaves room
    with pytest.raises(openai.RateLimitError, match="daily budget"):
        client.chat.completions.create(**ask)


async def _race(api: Api, qids: list[str], ledger: RedisBatchLedger) -> Counter[int]:
    """The batch's lines in four chunks (four execute tasks) and the chat calls, at once."""
    catalog = load_catalog(api.catalog, {})
    ex = ExecutorSettings(concurrency=2, max_attempts=1)
    budget = BudgetSettings(hold_wait_s=30.0)
    llm = LLMClient(catalog, {}, timeout_s=10)
    chat = openai.AsyncOpenAI(base_url=api.url, api_key=api.keys["team"], max_retries=0)
    statuses: Counter[int] = Counter()

    async def execute(chunk: list[str]) -> None:
        await handle_execute_batch(
            chunk, api.history, llm, catalog, ex, FeedbackSettings(), ledger=ledger,
            budget_settings=budget,
        )  # fmt: skip

    async def one(i: int) -> None:
        try:
            await chat.chat.completions.create(
                model="strong",
                messages=[{"role": "user", "content": f"Chat {i}. {ASK}"}],
                max_tokens=10,
            )
            statuses[200] += 1
        except openai.RateLimitError:
            statuses[429] += 1

    try:
        size = len(qids) // 4 + 1
        await asyncio.gather(
            *(execute(qids[i : i + size]) for i in range(0, len(qids), size)),
            *(one(i) for i in range(CHATS)),
        )
    finally:
        await llm.aclose()
        await chat.close()
    return statuses


def _settled(api: Api, ledger: RedisBatchLedger, ledger_id: str, chat_calls: int) -> None:
    """Wait for what the gateway does behind its answers: settle the holds, write the rows."""
    day_batch = f"api-team-{utc_day()}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with api.history.engine.connect() as conn:
            written = conn.scalar(
                select(sa.func.count())
                .select_from(t.batch_items)
                .where(t.batch_items.c.batch_id == day_batch)
            )
        if written == chat_calls and ledger.states([ledger_id])[ledger_id].reserved_usd == 0:
            return
        time.sleep(0.05)
