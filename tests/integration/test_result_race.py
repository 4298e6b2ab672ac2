"""Two deliveries of one chunk racing to store the same prompt's result: one row wins, and only
the winner's call events are stored (the loser's would count a second call for one answer)."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import ResultRow
from conduit_workers.domain.rewards import IMPLICIT, FeedbackEvent
from conduit_workers.history import history_schema as t
from conduit_workers.history.history import SqlHistory

pytestmark = pytest.mark.integration


def _call(qid: str, model: str) -> FeedbackEvent:
    return FeedbackEvent(f"implicit:{qid}:{model}", qid, model, IMPLICIT, 1.0, 0.0, is_call=True)


def test_the_delivery_that_loses_the_row_stores_none_of_its_events(history: SqlHistory) -> None:
    item = parse_item({"id": "q", "prompt": "p"}, line=1, max_prompt_chars=99)
    history.submit("b", [item], tag=None, rejected=0, constraints={})
    qid = item.key
    # The first delivery has inserted its row but not committed: the second one's select does
    # not see it, and its insert waits on the row's key until the first commits.
    first = history.engine.connect()
    tx = first.begin()
    first.execute(
        sa.insert(t.results).values(
            query_id=qid, model="m0", status="ok", response="a", created_at=sa.func.now()
        )
    )
    first.execute(
        sa.insert(t.feedback).values(
            id=f"implicit:{qid}:m0",
            query_id=qid,
            model="m0",
            kind=IMPLICIT,
            reward=1.0,
            weight=0.0,
            is_call=True,
            created_at=sa.func.now(),
        )
    )
    stored: list[list[str]] = []
    second = threading.Thread(
        target=lambda: stored.append(
            history.record_results([ResultRow(qid, "m1", "ok", "b", 1, 1, 0.5)], [_call(qid, "m1")])
        )
    )
    second.start()
    second.join(1.0)
    assert second.is_alive(), "the second insert should wait for the first transaction"
    tx.commit()
    first.close()
    second.join(10.0)
    assert stored == [[]]  # it stored no result of its own
    with history.engine.connect() as conn:
        rows = conn.execute(sa.select(t.results.c.model)).scalars().all()
        calls = (
            conn.execute(sa.select(t.feedback.c.model).where(t.feedback.c.query_id == qid))
            .scalars()
            .all()
        )
    assert rows == ["m0"]
    assert calls == ["m0"]
