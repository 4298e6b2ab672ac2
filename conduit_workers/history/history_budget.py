"""The history's reads for budgets: which ledger pays for a prompt, what a ledger has spent
(to seed a ledger Redis lost) and how many of its prompts wait (to pace it). A ledger is a
batch's budget or an API key's budget of one UTC day (``apikey:<name>:<day>``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.engine import Connection

from conduit_workers.domain.budget import key_ledger, parse_key_ledger, utc_day
from conduit_workers.domain.report import API_TAG
from conduit_workers.history import history_schema as t
from conduit_workers.history.history_base import SqlBase, chunks

KEY_BATCH_WINDOW = timedelta(days=1)  # a key's batches older than its day's start by this are done


def _day_start(day: str) -> datetime:
    return datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)


def _key_day_spend(key_name: str, day: str) -> Any:
    """The cost of the answers of ``day`` (UTC) to prompts that came through the key."""
    bi, r, b = t.batch_items, t.results, t.batches
    start = _day_start(day)
    keyed = (
        select(bi.c.query_id)
        .select_from(bi.join(b, b.c.id == bi.c.batch_id))
        .where(b.c.tag == API_TAG + key_name)
    )
    return select(func.coalesce(func.sum(r.c.cost_usd), 0.0)).where(
        r.c.created_at >= start,
        r.c.created_at < start + timedelta(days=1),
        r.c.query_id.in_(keyed),
    )


class BudgetHistory(SqlBase):
    """Budget ledgers' reads of the history database (part of
    :class:`~conduit_workers.history.history.SqlHistory`)."""

    def batch_spend(self, batch_ids: Sequence[str]) -> dict[str, float]:
        """The recorded cost of each ledger's answers (seeds a budget ledger made anew): a
        batch's, or an API key's of one day (``apikey:<name>:<day>``: every answer of that UTC
        day to a prompt that came through the key, chat calls and Batch API lines alike)."""
        if not batch_ids:
            return {}
        plain = [b for b in batch_ids if parse_key_ledger(b) is None]
        bi, r = t.batch_items, t.results
        stmt = (
            select(bi.c.batch_id, func.coalesce(func.sum(r.c.cost_usd), 0.0))
            .select_from(bi.join(r, r.c.query_id == bi.c.query_id))
            .where(bi.c.batch_id.in_(plain))
            .group_by(bi.c.batch_id)
        )

        def run(conn: Connection) -> dict[str, float]:
            found = {b: float(usd) for b, usd in conn.execute(stmt)} if plain else {}
            for ledger in batch_ids:
                parsed = parse_key_ledger(ledger)
                if parsed is not None:
                    found[ledger] = float(conn.scalar(_key_day_spend(*parsed)) or 0.0)
            return found

        found = self._tx(run)
        return {b: found.get(b, 0.0) for b in batch_ids}

    def unanswered_counts(self, batch_ids: Sequence[str]) -> dict[str, int]:
        """Prompts of each batch that have no result yet (for pacing a budget); for an API
        key's daily ledger, those of the key's batches made since the day before (a Batch API
        batch runs within its 24 h window; older ones are not counted on every chunk)."""
        if not batch_ids:
            return {}
        bi, r, b = t.batch_items, t.results, t.batches
        plain = [x for x in batch_ids if parse_key_ledger(x) is None]
        stmt = (
            select(bi.c.batch_id, func.count())
            .select_from(bi.outerjoin(r, r.c.query_id == bi.c.query_id))
            .where(bi.c.batch_id.in_(plain), r.c.query_id.is_(None))
            .group_by(bi.c.batch_id)
        )

        def run(conn: Connection) -> dict[str, int]:
            found = {x: int(n) for x, n in conn.execute(stmt)} if plain else {}
            for ledger in batch_ids:
                parsed = parse_key_ledger(ledger)
                if parsed is None:
                    continue
                key_stmt = (
                    select(func.count(func.distinct(bi.c.query_id)))
                    .select_from(
                        bi.join(b, b.c.id == bi.c.batch_id).outerjoin(
                            r, r.c.query_id == bi.c.query_id
                        )
                    )
                    .where(
                        b.c.tag == API_TAG + parsed[0],
                        b.c.created_at >= _day_start(parsed[1]) - KEY_BATCH_WINDOW,
                        r.c.query_id.is_(None),
                    )
                )
                found[ledger] = int(conn.scalar(key_stmt) or 0)
            return found

        found = self._tx(run)
        return {x: found.get(x, 0) for x in batch_ids}

    def batch_budgets(self, query_ids: Sequence[str]) -> dict[str, tuple[str, float]]:
        """(ledger id, budget in USD) of each prompt that is paid from a budget: its batch's,
        or, for a line of a Batch API batch whose API key has a daily budget, the key's ledger
        of today (``apikey:<name>:<day>``, the one its chat calls reserve in).

        A prompt submitted in several budgeted batches is paid for by the first of them; a
        batch's own budget comes before a key's. One statement per 1,000 prompts (it runs on
        every route and execute chunk): the key's budget is read with the batch's, as it is
        at that moment (a key revoked and made again under its name with another budget
        applies from the next chunk on)."""
        bi, b, ab, k = t.batch_items, t.batches, t.api_batches, t.api_keys
        day = utc_day()
        stmt = (
            select(bi.c.query_id, b.c.id, b.c.budget_usd, k.c.name, k.c.budget_usd_per_day)
            .select_from(
                bi.join(b, b.c.id == bi.c.batch_id)
                .outerjoin(ab, ab.c.id == bi.c.batch_id)
                .outerjoin(k, k.c.name == ab.c.key_name)
            )
            .where(
                or_(b.c.budget_usd.is_not(None), k.c.budget_usd_per_day.is_not(None)),
            )
            .order_by(b.c.created_at, b.c.id)
        )

        def run(conn: Connection) -> dict[str, tuple[str, float]]:
            own: dict[str, tuple[str, float]] = {}
            keyed: dict[str, tuple[str, float]] = {}
            for chunk in chunks(list(query_ids), 1000):
                found = conn.execute(stmt.where(bi.c.query_id.in_(chunk)))
                for qid, batch_id, budget, name, key_budget in found:
                    if budget is not None:
                        own.setdefault(qid, (batch_id, float(budget)))
                    if key_budget is not None:
                        keyed.setdefault(qid, (key_ledger(name, day), float(key_budget)))
            return {**keyed, **own}

        return self._tx(run)
