"""The daily report's reads and its one row per day in the history database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, case, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from conduit_workers.domain.report import CallFact, ResultFact
from conduit_workers.domain.report_trend import DayFigures
from conduit_workers.domain.rewards import EXPLICIT
from conduit_workers.history import history_schema as t
from conduit_workers.history.history import SqlHistory
from conduit_workers.history.history_base import now


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def _utc(ts: datetime) -> datetime:
    # SQLite hands back naive datetimes; Conduit writes UTC.
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


class SqlReports:
    def __init__(self, history: SqlHistory) -> None:
        self.history = history

    def facts(self, day: date) -> tuple[list[ResultFact], list[CallFact], dict[str, float]]:
        """The day's results (with decision and billing batch), call events and ratings."""
        start, end = day_bounds(day)
        r, d, f, bi, b, qu = t.results, t.decisions, t.feedback, t.batch_items, t.batches, t.queries
        in_day = and_(r.c.created_at >= start, r.c.created_at < end)

        def run(conn: Connection) -> tuple[list[ResultFact], list[CallFact], dict[str, float]]:
            # A prompt submitted again in a later batch is billed to the first batch holding it.
            first: dict[str, tuple[Any, str, str | None, float | None]] = {}
            stmt = (
                select(bi.c.query_id, b.c.created_at, b.c.id, b.c.tag, b.c.budget_usd)
                .select_from(
                    r.join(bi, bi.c.query_id == r.c.query_id).join(b, b.c.id == bi.c.batch_id)
                )
                .where(in_day)
            )
            for qid, created, bid, tag, budget in conn.execute(stmt):
                cand = (_utc(created), bid, tag, budget)
                if qid not in first or cand[:2] < first[qid][:2]:
                    first[qid] = cand
            stmt = (
                select(
                    r.c.query_id,
                    r.c.model,
                    d.c.model,
                    r.c.status,
                    r.c.input_tokens,
                    r.c.output_tokens,
                    r.c.cost_usd,
                    r.c.latency_ms,
                    r.c.attempts,
                    r.c.fallbacks,
                    r.c.created_at,
                    qu.c.user_name,
                )
                .select_from(
                    r.outerjoin(d, d.c.query_id == r.c.query_id).join(qu, qu.c.id == r.c.query_id)
                )
                .where(in_day)
                .order_by(r.c.created_at, r.c.query_id)
            )
            results = []
            for row in conn.execute(stmt):
                qid = row[0]
                submitted, bid, tag, budget = first.get(qid, (None, None, None, None))
                results.append(
                    ResultFact(
                        qid,
                        row[1],
                        row[2],
                        row[3],
                        int(row[4]),
                        int(row[5]),
                        float(row[6]),
                        float(row[7]),
                        int(row[8]),
                        int(row[9]),
                        _utc(row[10]),
                        bid,
                        tag,
                        None if budget is None else float(budget),
                        row[11],
                        submitted,
                    )
                )
            calls = [
                CallFact(q, m, bool(e), float(c))
                for q, m, e, c in conn.execute(
                    select(f.c.query_id, f.c.model, f.c.error, f.c.cost_usd)
                    .select_from(f.join(r, r.c.query_id == f.c.query_id))
                    .where(in_day, f.c.is_call.is_(True))
                )
            ]
            ratings = {
                q: float(v)
                for q, v in conn.execute(
                    select(f.c.query_id, f.c.reward)
                    .select_from(f.join(r, r.c.query_id == f.c.query_id))
                    .where(in_day, f.c.kind == EXPLICIT)
                )
            }
            return results, calls, ratings

        return self.history._tx(run)

    def unanswered(self, day: date) -> list[str]:
        """The ids of the prompts submitted during ``day`` that have no result (yet)."""
        start, end = day_bounds(day)
        q, r = t.queries, t.results
        stmt = (
            select(q.c.id)
            .select_from(q.outerjoin(r, r.c.query_id == q.c.id))
            .where(q.c.created_at >= start, q.c.created_at < end, r.c.query_id.is_(None))
        )
        return list(self.history._tx(lambda conn: conn.scalars(stmt).all()))

    def key_budgets(self) -> dict[str, float | None]:
        """Each API key's daily budget (None: unlimited)."""
        k = t.api_keys
        rows = self.history._tx(
            lambda conn: conn.execute(select(k.c.name, k.c.budget_usd_per_day)).all()
        )
        return {name: None if b is None else float(b) for name, b in rows}

    def stored_days(self, first: date, last: date) -> list[DayFigures]:
        """The built daily rows from ``first`` to ``last`` (inclusive), oldest first."""
        dr = t.daily_reports
        stmt = (
            select(dr)
            .where(dr.c.day >= first, dr.c.day <= last, dr.c.status == "done")
            .order_by(dr.c.day)
        )
        rows = self.history._tx(lambda conn: conn.execute(stmt).all())
        return [DayFigures.from_row(dict(row._mapping)) for row in rows]

    def model_ratings(self, model: str, first: date, last: date) -> tuple[int, float]:
        """(count, sum) of the explicit ratings of ``model``'s answers of those days."""
        start, end = day_bounds(first)[0], day_bounds(last)[1]
        r, f = t.results, t.feedback
        stmt = (
            select(func.count(), func.coalesce(func.sum(f.c.reward), 0.0))
            .select_from(f.join(r, r.c.query_id == f.c.query_id))
            .where(
                f.c.kind == EXPLICIT,
                r.c.model == model,
                r.c.status == "ok",
                r.c.created_at >= start,
                r.c.created_at < end,
            )
        )
        n, total = self.history._tx(lambda conn: conn.execute(stmt).one())
        return int(n), float(total)

    # -- the day's row ---------------------------------------------------------------------

    def _dialect(self) -> Any:
        return sqlite if self.history.engine.dialect.name == "sqlite" else postgresql

    def claim(self, day: date, owner: str, stale_after_s: float) -> bool:
        """Take the day for a scheduled run: False when the day is done, or another run holds
        it (unless that claim is older than ``stale_after_s``: its run died)."""
        dr = t.daily_reports
        ts = now()

        def run(conn: Connection) -> bool:
            ins = (
                self._dialect()
                .insert(dr)
                .on_conflict_do_nothing()
                .values(day=day, status="building", claimed_by=owner, claimed_at=ts, **_zeros())
            )
            if conn.execute(ins).rowcount == 1:
                return True
            taken = conn.execute(
                update(dr)
                .where(
                    dr.c.day == day,
                    dr.c.status == "building",
                    dr.c.claimed_at < ts - timedelta(seconds=stale_after_s),
                )
                .values(claimed_by=owner, claimed_at=ts)
            )
            return bool(taken.rowcount == 1)

        return self.history._tx(run)

    def save(
        self, day: date, owner: str, summary: dict[str, Any], figures: dict[str, Any], out_dir: str
    ) -> None:
        """Write (or replace) the day's row."""
        dr = t.daily_reports
        ts = now()
        values = {
            "status": "done",
            "claimed_by": owner,
            "claimed_at": ts,
            "built_at": ts,
            "figures": figures,
            "out_dir": out_dir,
            **summary,
        }
        stmt = self._dialect().insert(dr).values(day=day, **values)
        stmt = stmt.on_conflict_do_update(index_elements=[dr.c.day], set_=values)
        self.history._tx(lambda conn: conn.execute(stmt))

    def release(self, day: date, owner: str) -> None:
        """Give up a claim after a failed build, so the next run may try at once."""
        dr = t.daily_reports
        self.history._tx(
            lambda conn: conn.execute(
                dr.delete().where(
                    dr.c.day == day, dr.c.status == "building", dr.c.claimed_by == owner
                )
            )
        )

    def row(self, day: date) -> dict[str, Any] | None:
        dr = t.daily_reports
        stmt = select(dr).where(dr.c.day == day)
        found = self.history._tx(lambda conn: conn.execute(stmt).first())
        return dict(found._mapping) if found is not None else None

    def count_rows(self) -> int:
        stmt = select(func.count()).select_from(t.daily_reports)
        return int(self.history._tx(lambda conn: conn.scalar(stmt)) or 0)

    def spend_since(self, since: datetime) -> tuple[int, float]:
        """(answers, USD) recorded since ``since``."""
        r = t.results
        stmt = select(func.count(), func.coalesce(func.sum(r.c.cost_usd), 0.0)).where(
            r.c.created_at >= since
        )
        n, usd = self.history._tx(lambda conn: conn.execute(stmt).one())
        return int(n), float(usd)

    def budgeted_batches(self, limit: int = 10) -> list[BatchSpend]:
        """The newest batches with a budget: their prompts, answers and recorded spend."""
        b, bi, r = t.batches, t.batch_items, t.results
        stmt = (
            select(
                b.c.id,
                b.c.tag,
                b.c.created_at,
                b.c.budget_usd,
                func.count(bi.c.query_id),
                func.count(r.c.query_id),
                func.coalesce(func.sum(case((r.c.status == "over_budget", 1), else_=0)), 0),
                func.coalesce(func.sum(r.c.cost_usd), 0.0),
            )
            .select_from(
                b.join(bi, bi.c.batch_id == b.c.id).outerjoin(r, r.c.query_id == bi.c.query_id)
            )
            .where(b.c.budget_usd.is_not(None))
            .group_by(b.c.id, b.c.tag, b.c.created_at, b.c.budget_usd)
            .order_by(b.c.created_at.desc(), b.c.id)
            .limit(limit)
        )
        rows = self.history._tx(lambda conn: conn.execute(stmt).all())
        return [
            BatchSpend(bid, tag, _utc(ts), float(budget), int(n), int(done), int(over), float(usd))
            for bid, tag, ts, budget, n, done, over, usd in rows
        ]


@dataclass(frozen=True)
class BatchSpend:
    """A budgeted batch as the history database sees it."""

    batch_id: str
    tag: str | None
    created_at: datetime
    budget_usd: float
    prompts: int
    answered: int  # with a result of any status
    over_budget: int
    spend_usd: float  # the recorded cost of its prompts' answers


def _zeros() -> dict[str, Any]:
    return {
        "prompts": 0,
        "calls": 0,
        "errors": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "spend_usd": 0.0,
        "reference_cost_usd": 0.0,
        "savings_usd": 0.0,
        "waste_usd": 0.0,
    }


__all__ = ["BatchSpend", "SqlReports", "day_bounds"]
