"""The DB-API bulk inserts of results, their events and decisions store what SQLAlchemy Core's
executemany (the path before them) stores, on SQLite and PostgreSQL: the same rows read back,
``None``, non-ASCII text, booleans and JSON alike; a row already there is skipped and not
returned; chunks longer than one statement."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from conduit_workers.domain.items import PromptItem
from conduit_workers.domain.records import DecisionRow, ResultRow
from conduit_workers.domain.rewards import FeedbackEvent
from conduit_workers.history import history_schema as t
from conduit_workers.history.bulk_insert import ROWS_PER_STATEMENT
from conduit_workers.history.history import SqlHistory
from conduit_workers.history.history_feedback import event_row
from conduit_workers.routing.quality_floor import FloorMark

pytestmark = pytest.mark.integration

N = ROWS_PER_STATEMENT + 13  # two statements per insert


@pytest.fixture(params=["sqlite", "postgresql"])
def history(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlHistory]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'h.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    h = SqlHistory(url, retry_for_s=5)
    h.create_schema()
    ids = [f"{side}{i}" for side in "ab" for i in range(N)]
    items = [PromptItem(prompt=f"p {q}", key=q, line=1) for q in ids]
    h.submit("batch", items, tag=None, rejected=0, constraints={})
    yield h
    h.dispose()


def _result(qid: str, i: int) -> ResultRow:
    if i % 3 == 0:
        return ResultRow(qid, None, "unroutable", error_class="unroutable", error_message="ø")
    return ResultRow(qid, f"m{i % 4}", "ok", f"answer {i} — ünïcode ✓", i, 2 * i, i * 1e-7, i / 3)


def _event(qid: str, i: int) -> FeedbackEvent:
    return FeedbackEvent(
        f"implicit:{qid}", qid, f"m{i % 4}", "implicit", 1.0 / (i + 1), 0.25, True, i % 2 == 0,
        i / 7, i, i + 1, i * 3e-9,
    )  # fmt: skip


def _decision(qid: str, i: int) -> DecisionRow:
    floor = FloorMark("s", "ref:m0", 0.1 * i, 0.2 if i % 2 else None, 0.3) if i % 5 else None
    return DecisionRow(
        qid,
        None if i % 7 == 0 else f"m{i % 4}",
        [f"m{k}" for k in range(i % 4)],
        [i / 3, -0.0, 1e-300, math.pi],
        {"m0": i / 9, "m1": -1.5},
        "code",
        i / 11,
        None if i % 2 else i * 1e-6,
        {"m0": i},
        None if i % 3 else "why ✓",
        floor,
    )


def _rows(h: SqlHistory, table: sa.Table, key: str, prefix: str) -> dict[str, dict[str, Any]]:
    """The rows whose key holds ``prefix``, by key without it; the time also as its stored
    text (``created_text``)."""
    created = sa.cast(table.c.created_at, sa.String).label("created_text")
    with h.engine.connect() as conn:
        stmt = sa.select(table, created).where(table.c[key].like(f"%{prefix}%"))
        rows = conn.execute(stmt).mappings()
        out = {}
        for r in rows:
            d = dict(r)
            k = str(d.pop(key)).replace(prefix, "")
            d.pop("query_id", None)
            out[k] = d
        return out


def test_results_and_events_as_core_stored_them(history: SqlHistory) -> None:
    new = [_result(f"a{i}", i) for i in range(N)]
    events = [_event(f"a{i}", i) for i in range(N)]
    # Half of them first: the rest are new, the first half is skipped and not returned.
    assert history.record_results(new[: N // 2], events[: N // 2]) == sorted(
        r.query_id for r in new[: N // 2]
    )
    assert history.record_results(new, events) == sorted(r.query_id for r in new[N // 2 :])

    old = [_result(f"b{i}", i) for i in range(N)]
    old_events = [_event(f"b{i}", i) for i in range(N)]
    with history.engine.begin() as conn:  # the statements record_results ran before
        ts = conn.execute(sa.select(sa.func.max(t.results.c.created_at))).scalar_one()
        conn.execute(
            history._insert_ignore(t.results), [{**r.__dict__, "created_at": ts} for r in old]
        )
        conn.execute(history._insert_ignore(t.feedback), [event_row(e, ts) for e in old_events])

    got, want = (
        _rows(history, t.results, "query_id", "a"),
        _rows(history, t.results, "query_id", "b"),
    )
    got_e, want_e = _rows(history, t.feedback, "id", "a"), _rows(history, t.feedback, "id", "b")
    for i in range(N // 2):  # stored a moment before the rest: all but the time
        for rows in (got, want):
            rows[str(i)].pop("created_at"), rows[str(i)].pop("created_text")
        for rows in (got_e, want_e):
            rows[f"implicit:{i}"].pop("created_at"), rows[f"implicit:{i}"].pop("created_text")
    assert got == want and len(got) == N
    assert got_e == want_e and len(got_e) == N


def test_decisions_as_core_stored_them(history: SqlHistory) -> None:
    new = [_decision(f"a{i}", i) for i in range(N)]
    history.insert_decisions(new[:5])
    history.insert_decisions(new)  # the first five are there: skipped
    old = [_decision(f"b{i}", i) for i in range(N)]
    with history.engine.begin() as conn:
        ts = conn.execute(sa.select(sa.func.max(t.decisions.c.created_at))).scalar_one()
        values = [
            {
                **{k: v for k, v in r.__dict__.items() if k != "floor"},
                "floor_mark": r.floor_mark,
                "created_at": ts,
            }
            for r in old
        ]
        conn.execute(history._insert_ignore(t.decisions), values)
    got, want = (
        _rows(history, t.decisions, "query_id", "a"),
        _rows(history, t.decisions, "query_id", "b"),
    )
    for rows in (got, want):
        for i in range(5):
            rows[str(i)].pop("created_at"), rows[str(i)].pop("created_text")
    assert got == want and len(got) == N
