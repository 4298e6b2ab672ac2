"""The budget each prompt of a chunk is paid from, read by every route and execute chunk: a
batch's own, or its API key's of the day for a Batch API line, in one statement per chunk (the
key's budget used to take a second one), and the key as it is now, not as it was."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from conduit_workers.domain.budget import key_ledger, utc_day
from conduit_workers.domain.chat import ChatMessage, ChatRequest
from conduit_workers.domain.items import parse_item
from conduit_workers.history.history_gateway import GatewayHistory

pytestmark = pytest.mark.integration


@pytest.fixture
def history(pg_url: str) -> Iterator[GatewayHistory]:
    h = GatewayHistory(pg_url, retry_for_s=5)
    h.create_schema()
    yield h
    h.dispose()


def _items(batch: str, n: int) -> list[Any]:
    return [
        parse_item({"id": f"{batch}-{i}", "prompt": f"{batch} {i}"}, max_prompt_chars=100)
        for i in range(n)
    ]


def _api_batch(history: GatewayHistory, batch_id: str, key: str, n: int) -> list[str]:
    items = [(it, ChatRequest((ChatMessage("user", it.prompt),))) for it in _items(batch_id, n)]
    row = {
        "id": batch_id,
        "key_name": key,
        "input_file_id": "file-x",
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": None,
        "errors": [],
    }
    history.submit_api_batch(row, f"api:{key}", items)
    return [it.key for it, _ in items]


def _statements(history: GatewayHistory) -> list[str]:
    seen: list[str] = []

    @sa.event.listens_for(history.engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    return seen


def test_one_statement_per_chunk_for_batch_and_key_budgets(history: GatewayHistory) -> None:
    plain = _items("plain", 3)
    history.submit("plain", plain, tag=None, rejected=0, constraints={}, budget_usd=2.0)
    free = _items("free", 2)
    history.submit("free", free, tag=None, rejected=0, constraints={})
    history.create_key("team", budget_usd_per_day=5.0)
    history.create_key("open")  # no budget
    team = _api_batch(history, "batch_team", "team", 3)
    open_ = _api_batch(history, "batch_open", "open", 2)
    qids = [it.key for it in plain + free] + team + open_
    day = utc_day()

    seen = _statements(history)
    got = history.batch_budgets(qids)
    assert got == {
        **{it.key: ("plain", 2.0) for it in plain},
        **{q: (key_ledger("team", day), 5.0) for q in team},
    }
    assert len(seen) == 1, seen  # the key's budget came with a statement of its own

    # A key revoked and made again under its name with another budget: the next chunk pays
    # from the new budget (nothing is cached across chunks).
    history.revoke_key("team")
    history.create_key("team", budget_usd_per_day=1.0)
    assert history.batch_budgets(team) == {q: (key_ledger("team", day), 1.0) for q in team}


def test_a_batchs_own_budget_comes_first(history: GatewayHistory) -> None:
    items = _items("both", 2)
    history.submit("first", items[:1], tag=None, rejected=0, constraints={}, budget_usd=1.0)
    history.submit("second", items, tag=None, rejected=0, constraints={}, budget_usd=3.0)
    history.submit("third", items, tag=None, rejected=0, constraints={})
    assert history.batch_budgets([it.key for it in items]) == {
        items[0].key: ("first", 1.0),
        items[1].key: ("second", 3.0),
    }


def test_load_queries_says_which_prompts_a_budget_may_pay_for(history: GatewayHistory) -> None:
    """``QueryRow.budgeted`` is False only where ``batch_budgets`` finds no budget and no API
    key could have one: the router skips that query for such a chunk."""
    plain = _items("plain", 2)
    history.submit("plain", plain, tag=None, rejected=0, constraints={}, budget_usd=2.0)
    free = _items("free", 2)
    history.submit("free", free, tag=None, rejected=0, constraints={})
    both = _items("both", 1)  # in an unbudgeted batch, then in a budgeted one too
    history.submit("both1", both, tag=None, rejected=0, constraints={})
    history.submit("both2", both, tag=None, rejected=0, constraints={}, budget_usd=1.0)
    history.create_key("team", budget_usd_per_day=5.0)
    history.create_key("open")  # no budget: the flag says "may", batch_budgets says no
    team = _api_batch(history, "batch_team", "team", 2)
    open_ = _api_batch(history, "batch_open", "open", 1)
    qids = [it.key for it in plain + free + both] + team + open_

    got = {r.id: r.budgeted for r in history.load_queries(qids)}
    assert [r.id for r in history.load_queries(qids)] == qids  # order and rows as before
    assert got == {
        **{it.key: True for it in plain + both},
        **{it.key: False for it in free},
        **{q: True for q in team + open_},
    }
    paid = set(history.batch_budgets(qids))
    assert paid <= {q for q, b in got.items() if b}  # never False for a prompt a budget pays
    assert not history.batch_budgets([q for q, b in got.items() if not b])
