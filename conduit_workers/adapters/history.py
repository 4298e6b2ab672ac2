"""SqlHistory: the history database (SQLite file by default, PostgreSQL in production).

Every write that a redelivered task may repeat is an insert that ignores rows already there,
keyed by the prompt's idempotency key (or the feedback event id), so effects happen once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Engine, create_engine, event, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from conduit_workers.adapters import history_schema as t
from conduit_workers.domain.bandit import Array
from conduit_workers.domain.items import PromptItem
from conduit_workers.domain.rewards import FeedbackEvent
from conduit_workers.errors import StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class QueryRow:
    id: str
    prompt: str
    constraints: dict[str, Any]
    batch_constraints: dict[str, Any]
    user: str | None = None


@dataclass(frozen=True)
class DecisionRow:
    query_id: str
    model: str | None
    ranked: list[str]
    features: list[float]
    utilities: dict[str, float]
    domain: str
    complexity: float
    expected_cost_usd: float | None
    posterior_versions: dict[str, int]
    reason: str | None = None


@dataclass(frozen=True)
class ExecutionRow:
    query_id: str
    prompt: str
    model: str | None
    ranked: list[str]
    reason: str | None


@dataclass(frozen=True)
class ResultRow:
    query_id: str
    model: str | None
    status: str
    response: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    attempts: int = 0
    fallbacks: int = 0
    error_class: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class SubmitOutcome:
    batch_id: str
    new: list[str]  # query ids first seen in this submission
    existing: list[str]  # already known: answered once, never again


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # Several worker processes share the file: WAL lets readers and one writer work together.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class SqlHistory:
    def __init__(self, url: str, *, retry_for_s: float = 60.0, pool_size: int = 5) -> None:
        self.url = url
        self.retry_for_s = retry_for_s
        kwargs: dict[str, Any] = {"future": True}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=pool_size, pool_pre_ping=True)
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)

    # -- plumbing -------------------------------------------------------------------------

    def create_schema(self, auto_migrate: bool = True) -> None:
        """Bring the schema to the newest migration (or, without ``auto_migrate``, check it is
        there and raise :class:`ConfigError` saying to run ``conduit db upgrade``)."""
        from conduit_workers.adapters.migrations import ensure_current

        self._retry(lambda: ensure_current(self.engine, auto_migrate))

    def dispose(self) -> None:
        self.engine.dispose()

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying while the database is unreachable, up to ``retry_for_s``."""
        deadline = time.monotonic() + self.retry_for_s
        delay = 0.2
        while True:
            try:
                return fn()
            except (OperationalError, DBAPIError) as exc:
                if not _is_transient(exc) or time.monotonic() + delay > deadline:
                    raise StoreUnavailable(
                        f"history database unavailable: {type(exc.orig).__name__}"
                    ) from exc
                log.warning(
                    "history database unavailable (%s); retrying in %.1fs",
                    type(exc.orig).__name__,
                    delay,
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _tx(self, fn: Callable[[Connection], T]) -> T:
        def run() -> T:
            with self.engine.begin() as conn:
                return fn(conn)

        return self._retry(run)

    def _insert_ignore(self, table: Any) -> Any:
        dialect = sqlite if self.engine.dialect.name == "sqlite" else postgresql
        return dialect.insert(table).on_conflict_do_nothing()

    # -- producers ------------------------------------------------------------------------

    def submit(
        self,
        batch_id: str,
        items: Sequence[PromptItem],
        *,
        tag: str | None,
        rejected: int,
        constraints: dict[str, Any],
    ) -> SubmitOutcome:
        """Record a batch and its prompts; a prompt known already is linked, not added again."""
        ts = now()

        def run(conn: Connection) -> SubmitOutcome:
            keys = list(dict.fromkeys(i.key for i in items))
            existing: set[str] = set()
            for chunk in _chunks(keys, 1000):
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
                        }
                    )
            for row_chunk in _chunks(rows, 500):
                conn.execute(self._insert_ignore(t.queries), row_chunk)
            for link_chunk in _chunks(links, 1000):
                conn.execute(self._insert_ignore(t.batch_items), link_chunk)
            return SubmitOutcome(
                batch_id, [k for k in keys if k not in existing], [k for k in keys if k in existing]
            )

        return self._tx(run)

    def unanswered(self, query_ids: Sequence[str]) -> list[str]:
        """The ids among these that have no result yet (for re-enqueueing a resubmission)."""

        def run(conn: Connection) -> list[str]:
            done: set[str] = set()
            for chunk in _chunks(list(query_ids), 1000):
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
        """The prompts with no decision yet (a redelivered route task skips the rest)."""
        q, d, bi, b = t.queries, t.decisions, t.batch_items, t.batches

        def run(conn: Connection) -> list[QueryRow]:
            out: dict[str, QueryRow] = {}
            for chunk in _chunks(list(query_ids), 1000):
                stmt = (
                    select(q.c.id, q.c.prompt, q.c.constraints, b.c.constraints, q.c.user_name)
                    .select_from(
                        q.outerjoin(d, d.c.query_id == q.c.id)
                        .join(bi, bi.c.query_id == q.c.id)
                        .join(b, b.c.id == bi.c.batch_id)
                    )
                    .where(q.c.id.in_(chunk), d.c.query_id.is_(None))
                )
                for qid, prompt, qc, bc, user in conn.execute(stmt):
                    out.setdefault(qid, QueryRow(qid, prompt, qc or {}, bc or {}, user))
            return [out[i] for i in query_ids if i in out]

        return self._tx(run)

    def insert_decisions(self, rows: Sequence[DecisionRow]) -> None:
        ts = now()
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
            }
            for r in rows
        ]
        if values:
            self._tx(lambda conn: conn.execute(self._insert_ignore(t.decisions), values))

    # -- executor -------------------------------------------------------------------------

    def load_for_execution(self, query_ids: Sequence[str]) -> list[ExecutionRow]:
        """Decided prompts with no result yet."""
        q, d, r = t.queries, t.decisions, t.results

        def run(conn: Connection) -> list[ExecutionRow]:
            out: list[ExecutionRow] = []
            for chunk in _chunks(list(query_ids), 1000):
                stmt = (
                    select(q.c.id, q.c.prompt, d.c.model, d.c.ranked, d.c.reason)
                    .select_from(
                        q.join(d, d.c.query_id == q.c.id).outerjoin(r, r.c.query_id == q.c.id)
                    )
                    .where(q.c.id.in_(chunk), r.c.query_id.is_(None))
                )
                out.extend(ExecutionRow(*row) for row in conn.execute(stmt))
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
            ids = [r.query_id for r in results]
            known = set(
                conn.scalars(select(t.results.c.query_id).where(t.results.c.query_id.in_(ids)))
            )
            fresh = [r for r in results if r.query_id not in known]
            if fresh:
                conn.execute(
                    self._insert_ignore(t.results),
                    [{**r.__dict__, "created_at": ts} for r in fresh],
                )
            fresh_ids = {r.query_id for r in fresh}
            evs = [e for e in events if e.query_id in fresh_ids]
            if evs:
                conn.execute(self._insert_ignore(t.feedback), [_event_row(e, ts) for e in evs])
            return sorted(fresh_ids)

        return self._tx(run)

    # -- feedback -------------------------------------------------------------------------

    def add_feedback(self, events: Sequence[FeedbackEvent]) -> list[str]:
        """Insert feedback events; return the ids that were new."""
        ts = now()

        def run(conn: Connection) -> list[str]:
            ids = [e.id for e in events]
            known = set(conn.scalars(select(t.feedback.c.id).where(t.feedback.c.id.in_(ids))))
            fresh = [e for e in events if e.id not in known]
            if fresh:
                conn.execute(self._insert_ignore(t.feedback), [_event_row(e, ts) for e in fresh])
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
                select(f, d.c.features)
                .select_from(f.outerjoin(d, d.c.query_id == f.c.query_id))
                .where(f.c.update_id == update_id, f.c.applied_at.is_(None))
            ).all()
            events = [_row_event(row._mapping) for row in rows]
            contexts = {
                row.query_id: np.asarray(row.features, dtype=float) for row in rows if row.features
            }
            return events, contexts

        return self._tx(run)

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
            for chunk in _chunks(list(query_ids), 1000):
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
            select(f, d.c.features)
            .select_from(f.outerjoin(d, d.c.query_id == f.c.query_id))
            .where(f.c.applied_at.is_not(None))
            .order_by(f.c.applied_at, f.c.id)
        )

        def run(conn: Connection) -> tuple[list[FeedbackEvent], dict[str, Array]]:
            rows = conn.execute(stmt).all()
            return (
                [_row_event(r._mapping) for r in rows],
                {r.query_id: np.asarray(r.features, dtype=float) for r in rows if r.features},
            )

        return self._tx(run)

    def applied_feedback_with_updates(
        self,
    ) -> tuple[list[tuple[str, FeedbackEvent]], dict[str, Array]]:
        """Every applied event with the update id that applied it, in order of application
        (update by update), and the decision contexts (to rebuild the posteriors)."""
        f, d = t.feedback, t.decisions
        stmt = (
            select(f, d.c.features)
            .select_from(f.outerjoin(d, d.c.query_id == f.c.query_id))
            .where(f.c.applied_at.is_not(None))
            .order_by(f.c.applied_at, f.c.update_id, f.c.id)
        )

        def run(conn: Connection) -> tuple[list[tuple[str, FeedbackEvent]], dict[str, Array]]:
            rows = conn.execute(stmt).all()
            return (
                [(r.update_id, _row_event(r._mapping)) for r in rows],
                {r.query_id: np.asarray(r.features, dtype=float) for r in rows if r.features},
            )

        return self._tx(run)

    def answered_by(self, refs: Sequence[str]) -> dict[str, tuple[str, str]]:
        """For each reference (query id or input ``id``) of an answered prompt: (query id, the
        model that answered it). Unknown, ambiguous or unanswered references are left out."""
        q, r = t.queries, t.results

        def run(conn: Connection) -> dict[str, tuple[str, str]]:
            by_id: dict[str, tuple[str, str]] = {}
            by_ext: dict[str, list[tuple[str, str]]] = {}
            for chunk in _chunks(list(dict.fromkeys(refs)), 500):
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


def _event_row(e: FeedbackEvent, ts: datetime) -> dict[str, Any]:
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


def _row_event(m: Any) -> FeedbackEvent:
    return FeedbackEvent(
        id=m["id"],
        query_id=m["query_id"],
        model=m["model"],
        kind=m["kind"],
        reward=m["reward"],
        weight=m["weight"],
        is_call=bool(m["is_call"]),
        error=bool(m["error"]),
        latency_ms=m["latency_ms"],
        in_tokens=m["in_tokens"],
        out_tokens=m["out_tokens"],
        cost_usd=m["cost_usd"],
    )


def _chunks(seq: Sequence[T], n: int) -> Iterable[list[T]]:
    for i in range(0, len(seq), n):
        yield list(seq[i : i + n])


def _is_transient(exc: DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    text = str(exc.orig).lower()
    return any(
        s in text
        for s in (
            "could not connect",
            "connection refused",
            "server closed the connection",
            "terminating connection",
            "database is locked",
            "the database system is",
            "connection reset",
            "ssl connection has been closed",
            "no connection to the server",
        )
    )


__all__ = ["SqlHistory", "QueryRow", "DecisionRow", "ExecutionRow", "ResultRow", "SubmitOutcome"]
