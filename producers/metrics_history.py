"""The exporter's history counters, kept incrementally: no scrape reads the whole history.

Each counter family is a grouped sum over one table. The exporter keeps, per family, the
totals of the rows created up to a watermark ``until`` (process-local) and at each scrape:

- folds the rows created between the old watermark and ``now - settle_s`` into the totals
  and moves the watermark there (one range query on the indexed ``created_at``);
- adds the rows created after the watermark (the last ``settle_s``: a second range query)
  to a copy of the totals, without keeping them.

Rows are counted once they are older than the watermark, so a row committed more than
``settle_s`` after its ``created_at`` (a clock skew between hosts, a transaction held that
long) or changed after that is not counted again; the totals start from the whole history
once, at the exporter's first scrape after it starts (Prometheus sees a counter reset only
if the history shrank).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Integer, Table, cast, func, select

from conduit_workers.history import history_schema as t

Sums = dict[tuple[Any, ...], list[float]]
Query = Callable[[Any], list[Any]]


class Incremental:
    """``select keys, values … group by keys`` over ``table``, summed incrementally."""

    def __init__(
        self,
        table: Table,
        keys: Sequence[Any],
        values: Sequence[Any],
        where: Any = None,
        source: Any = None,
    ) -> None:
        self.created = table.c.created_at
        stmt = select(*keys, *values).select_from(table if source is None else source)
        stmt = stmt.group_by(*keys)
        self.stmt = stmt if where is None else stmt.where(where)
        self.nkeys = len(keys)
        self.settled: Sums = {}
        self.until: datetime | None = None

    def read(self, q: Query, now: datetime, settle: timedelta) -> Sums:
        cut = now - settle
        if self.until is None or cut > self.until:
            stmt = self.stmt.where(self.created <= cut)
            if self.until is not None:
                stmt = stmt.where(self.created > self.until)
            _add(self.settled, q(stmt), self.nkeys)
            self.until = cut
        out = {k: list(v) for k, v in self.settled.items()}
        _add(out, q(self.stmt.where(self.created > self.until)), self.nkeys)
        return out


def _add(into: Sums, rows: list[Any], nkeys: int) -> None:
    for row in rows:
        key, values = tuple(row[:nkeys]), [float(v or 0) for v in row[nkeys:]]
        have = into.get(key)
        if have is None:
            into[key] = values
        else:
            for i, v in enumerate(values):
                have[i] += v


class HistoryCounters:
    """Routing decisions by model; answers by model and status with their tokens, spend and
    latency; the answers' spend and tokens by batch tag (``""``: untagged; a prompt in two
    batches counts in both); model tries (``is_call`` feedback) and their errors."""

    def __init__(self, settle_s: float) -> None:
        self.settle = timedelta(seconds=settle_s)
        r, d, f = t.results, t.decisions, t.feedback
        self.decisions = Incremental(d, [d.c.model], [func.count()])
        self.results = Incremental(
            r,
            [r.c.model, r.c.status],
            [
                func.count(),
                func.sum(r.c.input_tokens),
                func.sum(r.c.output_tokens),
                func.sum(r.c.cost_usd),
                func.sum(r.c.latency_ms),
            ],
        )
        b, bi = t.batches, t.batch_items
        self.tags = Incremental(
            r,
            [b.c.tag, r.c.status],
            [func.sum(r.c.cost_usd), func.sum(r.c.input_tokens), func.sum(r.c.output_tokens)],
            source=r.join(bi, bi.c.query_id == r.c.query_id).join(b, b.c.id == bi.c.batch_id),
        )
        self.calls = Incremental(
            f,
            [f.c.model],
            [func.count(), func.sum(cast(f.c.error, Integer))],
            where=f.c.is_call.is_(True),
        )

    def read(self, q: Query, now: datetime | None = None) -> tuple[Sums, Sums, Sums]:
        now = now or datetime.now(UTC)
        return (
            self.decisions.read(q, now, self.settle),
            self.results.read(q, now, self.settle),
            self.calls.read(q, now, self.settle),
        )

    def read_tags(self, q: Query, now: datetime | None = None) -> Sums:
        return self.tags.read(q, now or datetime.now(UTC), self.settle)
