"""`conduit status` and the metrics' readers show each budgeted batch's budget against its
spend: from the history database and, while Redis holds it, from the ledger."""

from __future__ import annotations

import pytest
import redis

from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import ResultRow
from conduit_workers.execution.batch_ledger import RedisBatchLedger
from conduit_workers.history.history import SqlHistory
from conduit_workers.reports.report_sql import SqlReports
from producers.status import Status, budget_statuses, render
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration


def _batch(history: SqlHistory, batch: str, n: int, budget: float | None) -> list[str]:
    items = [
        parse_item({"id": f"{batch}{i}", "prompt": f"p {batch} {i}"}, line=i, max_prompt_chars=99)
        for i in range(n)
    ]
    history.submit(batch, items, tag="nightly", rejected=0, constraints={}, budget_usd=budget)
    return [i.key for i in items]


def test_status_shows_budget_spend_holds_and_over_budget(
    history: SqlHistory, redis_url: str
) -> None:
    paid = _batch(history, "paid", 4, 0.5)
    _batch(history, "free", 2, None)
    history.record_results(
        [
            ResultRow(paid[0], "m", "ok", "a", 10, 2, 0.125),
            ResultRow(paid[1], "m", "ok", "b", 10, 2, 0.25),
            ResultRow(paid[2], None, "over_budget", error_class="over_budget"),
        ],
        [],
    )
    ledger = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)
    for i, cost in enumerate((0.125, 0.25)):
        ledger.reserve("paid", 0.5, f"r{i}", 0.3 - 0.1 * i, ttl_s=60)
        ledger.settle("paid", f"r{i}", cost)
    ledger.reserve("paid", 0.5, "in-flight", 0.1, ttl_s=60)

    (b,) = budget_statuses(SqlReports(history), ledger)
    assert (b.batch_id, b.budget_usd, b.prompts, b.answered, b.over_budget) == (
        "paid",
        0.5,
        4,
        3,
        1,
    )
    assert (b.spend_usd, b.ledger_spent_usd, b.held_usd) == (0.375, 0.375, 0.1)
    lines = render(Status({}, {}, [], 0, 0.0, None, budgets=[b]))
    (row,) = [line for line in lines if line.startswith("paid")]
    assert row.split() == [
        "paid",
        "(nightly)",
        "0.5000",
        "0.375000",
        "0.100000",
        "75.0%",
        "3/4",
        "1",
    ]


def test_a_batch_whose_ledger_expired_shows_its_recorded_spend(
    history: SqlHistory, redis_url: str
) -> None:
    ids = _batch(history, "old", 1, 2.0)
    history.record_results([ResultRow(ids[0], "m", "ok", "a", 10, 2, 0.5)], [])
    ledger = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)
    (b,) = budget_statuses(SqlReports(history), ledger)
    assert (b.spend_usd, b.ledger_spent_usd, b.held_usd) == (0.5, None, None)
    (row,) = [
        line for line in render(Status({}, {}, [], 0, 0.0, None, budgets=[b])) if "old" in line
    ]
    assert "0.500000" in row and "25.0%" in row and " - " in row
