"""SqlHistory: the history database (SQLite file by default, PostgreSQL in production).

Every write that a redelivered task may repeat is an insert that ignores rows already there,
keyed by the prompt's idempotency key (or the feedback event id), so effects happen once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from sqlalchemy import case, func, select, type_coerce
from sqlalchemy.engine import Connection

from conduit_workers.domain.budget import check_batch_id
from conduit_workers.domain.chat import ChatRequest
from conduit_workers.domain.items import PromptItem
from conduit_workers.domain.records import (
    DecisionRow,
    ExecutionRow,
    QueryRow,
    ResultRow,
    SubmitOutcome,
)
from conduit_workers.domain.rewards import FeedbackEvent
from conduit_workers.errors import InputError
from conduit_workers.history import history_schema as t
from conduit_workers.history.history_base import chunks, now
from conduit_workers.history.history_budget import BudgetHistory
from conduit_workers.history.history_feedback import FeedbackHistory, event_row

log = logging.getLogger(__name__)


class SqlHistory(FeedbackHistory, BudgetHistory):
    """The history database: prompts, decisions, results and feedback, written once each
    (:class:`~conduit_workers.domain.ports.History` on SQLAlchemy)."""

    # -- producers ------------------------------------------------------------------------

    def submit(
        self,
        batch_id: str,
        items: Sequence[PromptItem],
        *,
        tag: str | None,
        rejected: int,
        constraints: dict[str, Any],
        budget_usd: float | None = None,
    ) -> SubmitOutcome:
        """Record a batch and its prompts; a prompt known already is linked, not added again.

        ``budget_usd``: the batch's spending limit, held by the executors' ledger. An id of the
        API keys' ledgers (``apikey:…``) raises :class:`InputError`."""
        try:
            check_batch_id(batch_id)
        except ValueError as exc:
            raise InputError(f"batch id {batch_id[:80]!r}: {exc}") from None
        ts = now()

        def run(conn: Connection) -> SubmitOutcome:
            keys = list(dict.fromkeys(i.key for i in items))
            existing: set[str] = set()
            for chunk in chunks(keys, 1000):
                existing.update(
                    conn.scalars(select(t.queries.c.id).where(t.queries.c.id.in_(chunk)))
                )
            conn.execute(
                self._insert_ignore(t.batches),
                [
                    {
                        "id": batch_id,
                        "tag": tag,
                        "created_at": ts,
                        "accepted": len(keys),
                        "rejected": rejected,
                        "constraints": constraints,
                        "budget_usd": budget_usd,
                    }
                ],
            )
            seen: set[str] = set()
            rows: list[dict[str, Any]] = []
            links: list[dict[str, Any]] = []
            for it in items:
                if it.key in seen:
                    continue
                seen.add(it.key)
                links.append({"batch_id": batch_id, "query_id": it.key, "line": it.line})
                if it.key not in existing:
                    rows.append(
                        {
                            "id": it.key,
                            "external_id": it.external_id,
                            "user_name": it.user,
                            "prompt": it.prompt,
                            "prompt_chars": len(it.prompt),
                            "metadata": it.metadata,
                            "constraints": it.constraints.to_json(),
                            "created_at": ts,
                            "request": it.request.to_json() if it.request else None,
                        }
                    )
            for row_chunk in chunks(rows, 500):
                conn.execute(self._insert_ignore(t.queries), row_chunk)
            for link_chunk in chunks(links, 1000):
                conn.execute(self._insert_ignore(t.batch_items), link_chunk)
            return SubmitOutcome(
                batch_id, [k for k in keys if k not in existing], [k for k in keys if k in existing]
            )

        return self._tx(run)

    def unanswered(self, query_ids: Sequence[str]) -> list[str]:
        """The ids among these that have no result yet (for re-enqueueing a resubmission)."""

        def run(conn: Connection) -> list[str]:
            done: set[str] = set()
            for chunk in chunks(list(query_ids), 1000):
                done.update(
                    conn.scalars(
                        select(t.results.c.query_id).where(t.results.c.query_id.in_(chunk))
                    )
                )
            return [q for q in query_ids if q not in done]

        return self._tx(run)

    def batch_progress(self, batch_id: str) -> tuple[int, int]:
        """(prompts in the batch, prompts with a result)."""

        def run(conn: Connection) -> tuple[int, int]:
            total = (
                conn.scalar(
                    select(func.count())
                    .select_from(t.batch_items)
                    .where(t.batch_items.c.batch_id == batch_id)
                )
                or 0
            )
            done = (
                conn.scalar(
                    select(func.count())
                    .select_from(
                        t.batch_items.join(
                            t.results, t.results.c.query_id == t.batch_items.c.query_id
                        )
                    )
                    .where(t.batch_items.c.batch_id == batch_id)
                )
                or 0
            )
            return int(total), int(done)

        return self._tx(run)

    def batch_results(self, batch_id: str) -> list[dict[str, Any]]:
        """One dict per prompt of the batch, in input order, with its result if any."""
        bi, q, r, d = t.batch_items, t.queries, t.results, t.decisions
        stmt = (
            select(
                bi.c.line,
                q.c.id,
                q.c.external_id,
                r.c.model,
                r.c.status,
                r.c.response,
                r.c.input_tokens,
                r.c.output_tokens,
                r.c.cost_usd,
                r.c.latency_ms,
                r.c.attempts,
                r.c.fallbacks,
                r.c.error_class,
                r.c.error_message,
                d.c.domain,
                d.c.complexity,
            )
            .select_from(
                bi.join(q, q.c.id == bi.c.query_id)
                .outerjoin(r, r.c.query_id == q.c.id)
                .outerjoin(d, d.c.query_id == q.c.id)
            )
            .where(bi.c.batch_id == batch_id)
            .order_by(bi.c.line)
        )
        return self._tx(lambda conn: [dict(row._mapping) for row in conn.execute(stmt)])

    def query_ids_by_external(self, batch_id: str) -> dict[str, str]:
        bi, q = t.batch_items, t.queries
        stmt = (
            select(q.c.external_id, q.c.id)
            .select_from(bi.join(q, q.c.id == bi.c.query_id))
            .where(bi.c.batch_id == batch_id)
        )
        return self._tx(lambda conn: {e: i for e, i in conn.execute(stmt) if e is not None})

    # -- router ---------------------------------------------------------------------------

    def load_queries(self, query_ids: Sequence[str]) -> list[QueryRow]:
        """The prompts with no decision yet (a redelivered route task skips the rest), each
        with whether a budget may pay for it (``QueryRow.budgeted``, read in the same
        statement: a chunk of unbudgeted prompts needs no budgets query)."""
        q, d, bi, b, ab = t.queries, t.decisions, t.batch_items, t.batches, t.api_batches

        def run(conn: Connection) -> list[QueryRow]:
            first: dict[str, Any] = {}  # a prompt's first row (one per batch it is in)
            budgeted: set[str] = set()
            for chunk in chunks(list(query_ids), 1000):
                # A prompt of a user brings its OpenAI request (re-ask detection compares the
                # last user turns); the others do not pay for decoding it.
                request = case((q.c.user_name.is_not(None), q.c.request), else_=None)
                stmt = (
                    select(
                        q.c.id,
                        q.c.prompt,
                        q.c.constraints,
                        b.c.constraints,
                        q.c.user_name,
                        type_coerce(request, q.c.request.type),
                        b.c.budget_usd,
                        ab.c.id,
                    )
                    .select_from(
                        q.outerjoin(d, d.c.query_id == q.c.id)
                        .join(bi, bi.c.query_id == q.c.id)
                        .join(b, b.c.id == bi.c.batch_id)
                        .outerjoin(ab, ab.c.id == bi.c.batch_id)
                    )
                    .where(q.c.id.in_(chunk), d.c.query_id.is_(None))
                )
                for row in conn.execute(stmt):
                    if row[6] is not None or row[7] is not None:
                        budgeted.add(row[0])
                    first.setdefault(row[0], row)
            out = []
            for i in query_ids:
                found = first.get(i)
                if found is None:
                    continue
                qid, prompt, qc, bc, user, req = found[:6]
                asked = ChatRequest.from_json(req).last_user_turn if req else None
                out.append(QueryRow(qid, prompt, qc or {}, bc or {}, user, asked, qid in budgeted))
            return out

        return self._tx(run)

    def insert_decisions(self, rows: Sequence[DecisionRow]) -> None:
        ts = now()
        bulk = self._bulk(t.decisions, DECISION_COLUMNS)
        if bulk is not None:
            if rows:
                tuples = [
                    (
                        *(r.query_id, r.model, r.ranked, r.features, r.utilities, r.domain),
                        *(r.complexity, r.expected_cost_usd, r.posterior_versions, r.reason),
                        *(ts, r.floor_mark),
                    )
                    for r in rows
                ]
                self._tx(lambda conn: bulk(conn, tuples))
            return
        values = [
            {
                "query_id": r.query_id,
                "model": r.model,
                "ranked": r.ranked,
                "features": r.features,
                "utilities": r.utilities,
                "domain": r.domain,
                "complexity": r.complexity,
                "expected_cost_usd": r.expected_cost_usd,
                "posterior_versions": r.posterior_versions,
                "reason": r.reason,
                "created_at": ts,
                "floor_mark": r.floor_mark,
            }
            for r in rows
        ]
        if values:
            self._tx(lambda conn: conn.execute(self._insert_ignore(t.decisions), values))

    def forget_stale_decisions(self, query_ids: Sequence[str], models: Sequence[str]) -> list[str]:
        """Delete the decisions of unanswered prompts decided for a model not in ``models``
        (gone from the catalog), so that the routers decide them again; return their ids."""
        d, r = t.decisions, t.results

        def run(conn: Connection) -> list[str]:
            stale: list[str] = []
            for chunk in chunks(list(query_ids), 1000):
                stale.extend(
                    conn.scalars(
                        select(d.c.query_id)
                        .select_from(d.outerjoin(r, r.c.query_id == d.c.query_id))
                        .where(
                            d.c.query_id.in_(chunk),
                            r.c.query_id.is_(None),
                            d.c.model.is_not(None),
                            d.c.model.not_in(list(models)),
                        )
                    )
                )
            for chunk in chunks(stale, 1000):
                conn.execute(d.delete().where(d.c.query_id.in_(chunk)))
            return stale

        return self._tx(run)

    # -- executor -------------------------------------------------------------------------

    def load_for_execution(self, query_ids: Sequence[str]) -> list[ExecutionRow]:
        """Decided prompts with no result yet, with when each was submitted (the executor's
        end-to-end metric: read here, not by a second query per execute task)."""
        q, d, r = t.queries, t.decisions, t.results

        def run(conn: Connection) -> list[ExecutionRow]:
            out: list[ExecutionRow] = []
            for chunk in chunks(list(query_ids), 1000):
                stmt = (
                    select(
                        q.c.id,
                        q.c.prompt,
                        d.c.model,
                        d.c.ranked,
                        d.c.reason,
                        q.c.request,
                        q.c.created_at,
                    )
                    .select_from(
                        q.join(d, d.c.query_id == q.c.id).outerjoin(r, r.c.query_id == q.c.id)
                    )
                    .where(q.c.id.in_(chunk), r.c.query_id.is_(None))
                )
                out.extend(
                    ExecutionRow(
                        *row[:5],
                        ChatRequest.from_json(row[5]) if row[5] else None,
                        _utc(row[6]),
                    )
                    for row in conn.execute(stmt)
                )
            return out

        return self._tx(run)

    def submitted_at(self, query_ids: Sequence[str]) -> dict[str, datetime]:
        """When each prompt was submitted (``queries.created_at``, UTC)."""
        q = t.queries

        def run(conn: Connection) -> dict[str, datetime]:
            out: dict[str, datetime] = {}
            for chunk in chunks(list(query_ids), 1000):
                stmt = select(q.c.id, q.c.created_at).where(q.c.id.in_(chunk))
                for qid, ts in conn.execute(stmt):
                    out[qid] = _utc(ts)
            return out

        return self._tx(run)

    def record_results(
        self, results: Sequence[ResultRow], events: Sequence[FeedbackEvent]
    ) -> list[str]:
        """Store results and their implicit feedback in one transaction; ignore duplicates.

        Returns the ids of the results newly stored (a redelivered task stores none twice).
        """
        ts = now()

        def run(conn: Connection) -> list[str]:
            fresh_ids: set[str] = set()
            if results:
                # What this transaction inserted (a row already there is skipped and not
                # returned), not what a select saw first: two deliveries of a chunk racing both
                # insert, and only one of them wins a row. The loser must not store its call
                # events for a result that is not its own.
                bulk = self._bulk(t.results, RESULT_COLUMNS, "query_id")
                if bulk is not None:
                    values = _RESULT_VALUES
                    fresh_ids = set(bulk(conn, [(*values(r), ts) for r in results]))
                else:
                    fresh_ids = set(
                        conn.scalars(
                            self._insert_ignore(t.results).returning(t.results.c.query_id),
                            [{**r.__dict__, "created_at": ts} for r in results],
                        )
                    )
            evs = [e for e in events if e.query_id in fresh_ids]
            if evs:
                events_bulk = self._bulk(t.feedback, EVENT_COLUMNS)
                if events_bulk is not None:
                    events_bulk(conn, [(*_EVENT_VALUES(e), ts) for e in evs])
                else:
                    conn.execute(self._insert_ignore(t.feedback), [event_row(e, ts) for e in evs])
            return sorted(fresh_ids)

        return self._tx(run)


# The columns of each bulk insert (:mod:`.bulk_insert`), in the order of the rows' tuples: a
# result's and an event's fields and the time.
_RESULT_FIELDS = tuple(f.name for f in fields(ResultRow))
_EVENT_FIELDS = tuple(f.name for f in fields(FeedbackEvent))
_RESULT_VALUES = attrgetter(*_RESULT_FIELDS)
_EVENT_VALUES = attrgetter(*_EVENT_FIELDS)
RESULT_COLUMNS = (*_RESULT_FIELDS, "created_at")
EVENT_COLUMNS = (*_EVENT_FIELDS, "created_at")
DECISION_COLUMNS = (
    *("query_id", "model", "ranked", "features", "utilities", "domain", "complexity"),
    *("expected_cost_usd", "posterior_versions", "reason", "created_at", "floor_mark"),
)


def _utc(ts: datetime) -> datetime:
    """A stored time as UTC (SQLite returns it without a zone)."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


__all__ = ["SqlHistory"]
