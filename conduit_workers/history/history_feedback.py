"""Feedback and recovery queries of the history database: events stored once, claimed by one
update id, marked applied; work left behind by lost tasks; the applied log to rebuild from."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection

from conduit_workers.domain.bandit import Array
from conduit_workers.domain.rewards import EXPLICIT, FeedbackEvent
from conduit_workers.domain.text import text_problem
from conduit_workers.history import history_schema as t
from conduit_workers.history.history_base import SqlBase, chunks, now


class FeedbackHistory(SqlBase):
    """Feedback events and the recovery queries of lost work."""

    # -- feedback -------------------------------------------------------------------------

    def add_feedback(self, events: Sequence[FeedbackEvent]) -> list[str]:
        """Insert feedback events; return the ids that were new."""
        ts = now()

        def run(conn: Connection) -> list[str]:
            ids = [e.id for e in events]
            known = set(conn.scalars(select(t.feedback.c.id).where(t.feedback.c.id.in_(ids))))
            fresh = [e for e in events if e.id not in known]
            if fresh:
                conn.execute(self._insert_ignore(t.feedback), [event_row(e, ts) for e in fresh])
            return [e.id for e in fresh]

        return self._tx(run)

    def claim_feedback(
        self, event_ids: Sequence[str], update_id: str
    ) -> tuple[list[FeedbackEvent], dict[str, Array]]:
        """Claim the unclaimed events for ``update_id``; return every event this id owns and
        is not yet applied, with the decision contexts of their prompts.

        An event claimed by another update is that update's to apply: never twice.
        """
        f, d = t.feedback, t.decisions

        def run(conn: Connection) -> tuple[list[FeedbackEvent], dict[str, Array]]:
            conn.execute(
                update(f)
                .where(f.c.id.in_(list(event_ids)), f.c.update_id.is_(None))
                .values(update_id=update_id)
            )
            rows = conn.execute(
                select(*_event_columns(), d.c.features)
                .select_from(f.outerjoin(d, d.c.query_id == f.c.query_id))
                .where(f.c.update_id == update_id, f.c.applied_at.is_(None))
            ).all()
            return _events_and_contexts(rows)

        return self._tx(run)

    def floor_marks(self, query_ids: Sequence[str]) -> dict[str, str]:
        """The quality-floor mark of each of these prompts routed under a floor."""
        d = t.decisions

        def run(conn: Connection) -> dict[str, str]:
            out: dict[str, str] = {}
            for part in chunks(list(query_ids), 1000):
                rows = conn.execute(
                    select(d.c.query_id, d.c.floor_mark).where(
                        d.c.query_id.in_(part), d.c.floor_mark.is_not(None)
                    )
                )
                out.update({q: m for q, m in rows})
            return out

        return self._tx(run) if query_ids else {}

    def mark_applied(self, update_id: str) -> None:
        f = t.feedback
        self._tx(
            lambda conn: conn.execute(
                update(f)
                .where(f.c.update_id == update_id, f.c.applied_at.is_(None))
                .values(applied_at=now())
            )
        )

    def unapplied_feedback_ids(self, older_than_s: float = 0.0, limit: int = 10_000) -> list[str]:
        """Events nobody has applied yet (a lost feedback task leaves these behind)."""
        f = t.feedback
        cutoff = datetime.fromtimestamp(time.time() - older_than_s, UTC)
        stmt = (
            select(f.c.id)
            .where(f.c.applied_at.is_(None), f.c.created_at <= cutoff)
            .order_by(f.c.created_at)
            .limit(limit)
        )
        return self._tx(lambda conn: list(conn.scalars(stmt)))

    def stale_unanswered(self, older_than_s: float, limit: int = 10_000) -> list[str]:
        """Prompts submitted more than ``older_than_s`` ago that still have no result."""
        q, r = t.queries, t.results
        cutoff = datetime.fromtimestamp(time.time() - older_than_s, UTC)
        stmt = (
            select(q.c.id)
            .select_from(q.outerjoin(r, r.c.query_id == q.c.id))
            .where(r.c.query_id.is_(None), q.c.created_at <= cutoff)
            .order_by(q.c.created_at)
            .limit(limit)
        )
        return self._tx(lambda conn: list(conn.scalars(stmt)))

    def stale_feedback(
        self, older_than_s: float, limit: int = 10_000
    ) -> dict[str | None, list[str]]:
        """Unapplied events older than ``older_than_s``, by the update id that claimed them
        (``None``: not claimed)."""
        f = t.feedback
        cutoff = datetime.fromtimestamp(time.time() - older_than_s, UTC)
        stmt = (
            select(f.c.update_id, f.c.id)
            .where(f.c.applied_at.is_(None), f.c.created_at <= cutoff)
            .order_by(f.c.created_at, f.c.id)
            .limit(limit)
        )

        def run(conn: Connection) -> dict[str | None, list[str]]:
            out: dict[str | None, list[str]] = {}
            for uid, eid in conn.execute(stmt):
                out.setdefault(uid, []).append(eid)
            return out

        return self._tx(run)

    def unapplied_feedback_for(self, query_ids: Sequence[str]) -> list[str]:
        """The ids of these prompts' feedback events not applied yet."""
        f = t.feedback

        def run(conn: Connection) -> list[str]:
            out: list[str] = []
            for chunk in chunks(list(query_ids), 1000):
                out.extend(
                    conn.scalars(
                        select(f.c.id)
                        .where(f.c.query_id.in_(chunk), f.c.applied_at.is_(None))
                        .order_by(f.c.id)
                    )
                )
            return out

        return self._tx(run)

    def applied_feedback(self) -> tuple[list[FeedbackEvent], dict[str, Array]]:
        """Every applied event in order of application, with contexts (to rebuild posteriors)."""
        f, d = t.feedback, t.decisions
        stmt = (
            select(*_event_columns(), d.c.features)
            .select_from(f.outerjoin(d, d.c.query_id == f.c.query_id))
            .where(f.c.applied_at.is_not(None))
            .order_by(f.c.applied_at, f.c.id)
        )

        def run(conn: Connection) -> tuple[list[FeedbackEvent], dict[str, Array]]:
            return _events_and_contexts(conn.execute(stmt).all())

        return self._tx(run)

    def applied_feedback_with_updates(
        self,
    ) -> tuple[list[tuple[datetime, str, FeedbackEvent]], dict[str, Array]]:
        """Every applied event with when and by which update id it was applied, in order of
        application (update by update), and the decision contexts (to rebuild the
        posteriors)."""
        f, d = t.feedback, t.decisions
        stmt = (
            select(*_event_columns(), d.c.features, f.c.applied_at, f.c.update_id)
            .select_from(f.outerjoin(d, d.c.query_id == f.c.query_id))
            .where(f.c.applied_at.is_not(None))
            .order_by(f.c.applied_at, f.c.update_id, f.c.id)
        )

        def run(
            conn: Connection,
        ) -> tuple[list[tuple[datetime, str, FeedbackEvent]], dict[str, Array]]:
            rows = conn.execute(stmt).all()
            events, contexts = _events_and_contexts(rows)
            return [(r[-2], r[-1], e) for r, e in zip(rows, events, strict=True)], contexts

        return self._tx(run)

    def add_warm_start(self, updates: Sequence[tuple[str, str, dict[str, float], float]]) -> None:
        """Keep what a warm start applies: (posterior update id, model, its statistics'
        fields, the offline weight the floors were told). An update kept before is left as
        it was (a file loaded twice counts once here too)."""
        at = now()
        rows = [
            {
                "id": uid,
                "model": model,
                "stats": fields,
                "offline_weight": weight,
                "applied_at": at,
            }
            for uid, model, fields, weight in updates
        ]
        if rows:
            self._tx(lambda conn: conn.execute(self._insert_ignore(t.warm_start_updates), rows))

    def warm_start_updates(self) -> list[tuple[datetime, str, str, dict[str, float]]]:
        """Every update a warm start applied, in order: (when, update id, model, statistics'
        fields)."""
        w = t.warm_start_updates
        stmt = select(w.c.applied_at, w.c.id, w.c.model, w.c.stats).order_by(w.c.applied_at, w.c.id)
        return self._tx(lambda conn: [tuple(r) for r in conn.execute(stmt)])

    def offline_weights(self) -> dict[str, float]:
        """Per model, the offline weight the warm starts told the quality floors (the sum
        over their kept updates)."""
        w = t.warm_start_updates
        stmt = select(w.c.model, func.sum(w.c.offline_weight)).group_by(w.c.model)
        return self._tx(lambda conn: {m: float(v) for m, v in conn.execute(stmt)})

    def floor_history(self) -> Iterator[tuple[str, str, float | None]]:
        """Every decision made under a quality floor, in the order decided: (its floor mark,
        query id, the rating of its answer if one was applied, else None) — what the floors'
        counters were made of (``conduit posteriors --rebuild``)."""
        d, f = t.decisions, t.feedback
        rating = (
            select(f.c.query_id, f.c.model, f.c.reward)
            .where(f.c.kind == EXPLICIT, f.c.weight > 0, f.c.applied_at.is_not(None))
            .subquery()
        )
        stmt = (
            select(d.c.floor_mark, d.c.query_id, d.c.model, rating.c.model, rating.c.reward)
            .select_from(d.outerjoin(rating, rating.c.query_id == d.c.query_id))
            .where(d.c.floor_mark.is_not(None))
            .order_by(d.c.created_at, d.c.query_id)
        )
        with self.engine.connect() as conn:
            for mark, qid, model, rated_model, reward in conn.execution_options(
                yield_per=5000
            ).execute(stmt):
                yield mark, qid, (float(reward) if rated_model == model else None)

    def answered_by(self, refs: Sequence[str]) -> dict[str, tuple[str, str]]:
        """For each reference (query id or input ``id``) of an answered prompt: (query id, the
        model that answered it). Unknown, ambiguous or unanswered references are left out."""
        q, r = t.queries, t.results

        def run(conn: Connection) -> dict[str, tuple[str, str]]:
            by_id: dict[str, tuple[str, str]] = {}
            by_ext: dict[str, list[tuple[str, str]]] = {}
            # A ref that no store takes (NUL, a lone surrogate) names no prompt: every stored
            # id was checked on the way in (domain/text.py), and PostgreSQL would refuse it.
            storable = [ref for ref in dict.fromkeys(refs) if text_problem(ref) is None]
            for chunk in chunks(storable, 500):
                stmt = (
                    select(q.c.id, q.c.external_id, r.c.model)
                    .select_from(q.join(r, r.c.query_id == q.c.id))
                    .where((q.c.id.in_(chunk)) | (q.c.external_id.in_(chunk)), r.c.status == "ok")
                )
                wanted = set(chunk)
                for qid, ext, model in conn.execute(stmt):
                    if qid in wanted:
                        by_id[qid] = (qid, model)
                    if ext in wanted:
                        by_ext.setdefault(ext, []).append((qid, model))
            # A query id wins; an input id must name exactly one answered prompt.
            out = {ref: hits[0] for ref, hits in by_ext.items() if len(hits) == 1}
            out.update(by_id)
            return out

        return self._tx(run)


def event_row(e: FeedbackEvent, ts: datetime) -> dict[str, Any]:
    return {
        "id": e.id,
        "query_id": e.query_id,
        "model": e.model,
        "kind": e.kind,
        "reward": e.reward,
        "weight": e.weight,
        "is_call": e.is_call,
        "error": e.error,
        "latency_ms": e.latency_ms,
        "in_tokens": e.in_tokens,
        "out_tokens": e.out_tokens,
        "cost_usd": e.cost_usd,
        "created_at": ts,
    }


def _event_columns() -> tuple[Any, ...]:
    """The feedback columns an event is made of, in :func:`_tuple_event`'s order."""
    f = t.feedback
    return (
        *(f.c.id, f.c.query_id, f.c.model, f.c.kind, f.c.reward, f.c.weight, f.c.is_call),
        *(f.c.error, f.c.latency_ms, f.c.in_tokens, f.c.out_tokens, f.c.cost_usd),
    )


def _tuple_event(r: Any) -> FeedbackEvent:
    """An event from a row that starts with :func:`_event_columns` (by position: a row's
    ``_mapping`` costs ~25 µs, most of an event's CPU in the feedback worker)."""
    return FeedbackEvent(
        id=r[0],
        query_id=r[1],
        model=r[2],
        kind=r[3],
        reward=r[4],
        weight=r[5],
        is_call=bool(r[6]),
        error=bool(r[7]),
        latency_ms=r[8],
        in_tokens=r[9],
        out_tokens=r[10],
        cost_usd=r[11],
    )


def _events_and_contexts(rows: Sequence[Any]) -> tuple[list[FeedbackEvent], dict[str, Array]]:
    """Events and their prompts' decision contexts from rows of :func:`_event_columns` and
    the decision's ``features`` after them."""
    return (
        [_tuple_event(r) for r in rows],
        {r[1]: np.asarray(r[12], dtype=float) for r in rows if r[12]},
    )
