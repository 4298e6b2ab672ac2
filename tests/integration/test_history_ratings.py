"""Rated results read back from the history database as warm-start records (the shared data
sets' schema): explicit ratings of answered prompts only, paged, filtered by date."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import ResultRow
from conduit_workers.domain.rewards import EXPLICIT, REASK, FeedbackEvent, explicit_event_id
from conduit_workers.history import history_ratings
from conduit_workers.history import history_schema as t
from conduit_workers.history.history import SqlHistory
from conduit_workers.history.history_ratings import rated_records

pytestmark = pytest.mark.integration


def _answered(history: SqlHistory, n: int) -> list[str]:
    items = [
        parse_item({"id": f"q{i}", "prompt": f"prompt {i}"}, line=i, max_prompt_chars=99)
        for i in range(n)
    ]
    history.submit("b", items, tag=None, rejected=0, constraints={})
    ids = [i.key for i in items]
    history.record_results(
        [ResultRow(q, f"m{k % 2}", "ok", "a", 10 + k, 2, 0.001 * k) for k, q in enumerate(ids)],
        [],
    )
    return ids


def _rate(history: SqlHistory, qid: str, model: str, rating: float) -> None:
    history.add_feedback([FeedbackEvent(explicit_event_id(qid), qid, model, EXPLICIT, rating, 1.0)])


def test_each_rated_answer_is_one_record_in_the_shared_schema(history: SqlHistory) -> None:
    ids = _answered(history, 4)
    _rate(history, ids[1], "m1", 0.75)
    _rate(history, ids[2], "m0", 0.0)
    # Not ratings: an implicit signal, and a rating of a model that did not answer.
    history.add_feedback([FeedbackEvent(f"retry:{ids[3]}", ids[3], "m1", REASK, 0.0, 1.0)])
    _rate(history, ids[0], "m1", 1.0)
    # An error result with a rating is no labelled answer either.
    items = [parse_item({"id": "e", "prompt": "failed"}, line=9, max_prompt_chars=99)]
    history.submit("b2", items, tag=None, rejected=0, constraints={})
    history.record_results([ResultRow(items[0].key, "m0", "error", error_class="http_500")], [])
    _rate(history, items[0].key, "m0", 0.5)

    records = sorted(rated_records(history), key=lambda r: r["prompt"])
    assert records == [
        {
            "id": ids[1],
            "prompt": "prompt 1",
            "models": {
                "m1": {"quality": 0.75, "input_tokens": 11, "output_tokens": 2, "cost_usd": 0.001}
            },
        },
        {
            "id": ids[2],
            "prompt": "prompt 2",
            "models": {
                "m0": {"quality": 0.0, "input_tokens": 12, "output_tokens": 2, "cost_usd": 0.002}
            },
        },
    ]


def test_since_keeps_answers_from_that_time_on(history: SqlHistory) -> None:
    ids = _answered(history, 3)
    for q in ids:
        _rate(history, q, "m0" if ids.index(q) % 2 == 0 else "m1", 1.0)
    old = datetime.now(UTC) - timedelta(days=3)
    with history.engine.begin() as conn:
        conn.execute(
            sa.update(t.results).where(t.results.c.query_id == ids[0]).values(created_at=old)
        )
    assert {r["id"] for r in rated_records(history)} == set(ids)
    since = datetime.now(UTC) - timedelta(days=1)
    assert {r["id"] for r in rated_records(history, since)} == set(ids[1:])


def test_a_long_history_is_read_in_pages_without_loss_or_double(
    history: SqlHistory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_ratings, "PAGE", 3)
    ids = _answered(history, 10)  # one transaction: every result has the same created_at
    for k, q in enumerate(ids):
        _rate(history, q, f"m{k % 2}", k / 10)
    records = list(rated_records(history))
    assert sorted(r["id"] for r in records) == sorted(ids)
    assert len(records) == 10
