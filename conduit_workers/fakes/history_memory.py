"""InMemoryHistory: the :class:`~conduit_workers.domain.ports.History` port in dicts, for unit
tests of the workers' ``handle_*`` functions (no database, milliseconds).

The same contract as :class:`~conduit_workers.history.history.SqlHistory` (the contract tests
in ``tests/integration/test_contracts.py`` run the same assertions over both): every write a
redelivered task may repeat ignores what is there already; an event is claimed by one update
id only. Not thread-safe; one process only.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conduit_workers.domain.bandit import Array
from conduit_workers.domain.budget import check_batch_id
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


@dataclass
class _Batch:
    constraints: dict[str, Any]
    budget_usd: float | None
    created: float
    items: list[str] = field(default_factory=list)


@dataclass
class _Event:
    event: FeedbackEvent
    created: float
    update_id: str | None = None
    applied: bool = False


class InMemoryHistory:
    """Prompts, decisions, results and feedback in dicts, written once each."""

    def __init__(self, clock: Any = time.time) -> None:
        self.clock = clock
        self.batches: dict[str, _Batch] = {}
        self.queries: dict[str, PromptItem] = {}
        self.created: dict[str, float] = {}
        self.decisions: dict[str, DecisionRow] = {}
        self.results: dict[str, ResultRow] = {}
        self.events: dict[str, _Event] = {}
        self._order: list[str] = []  # event ids in insertion order

    # -- producers (not part of the port: how a test seeds it) ----------------------------

    def submit(
        self,
        batch_id: str,
        items: Sequence[PromptItem],
        *,
        tag: str | None = None,
        rejected: int = 0,
        constraints: dict[str, Any] | None = None,
        budget_usd: float | None = None,
    ) -> SubmitOutcome:
        try:
            check_batch_id(batch_id)
        except ValueError as exc:
            raise InputError(f"batch id {batch_id[:80]!r}: {exc}") from None
        now = self.clock()
        batch = self.batches.setdefault(batch_id, _Batch(constraints or {}, budget_usd, now))
        keys = list(dict.fromkeys(i.key for i in items))
        existing = [k for k in keys if k in self.queries]
        for it in items:
            if it.key not in self.queries:
                self.queries[it.key] = it
                self.created[it.key] = now
            if it.key not in batch.items:
                batch.items.append(it.key)
        return SubmitOutcome(batch_id, [k for k in keys if k not in existing], existing)

    # -- router ---------------------------------------------------------------------------

    def _batches_of(self, query_id: str) -> list[tuple[str, _Batch]]:
        found = [(b, v) for b, v in self.batches.items() if query_id in v.items]
        return sorted(found, key=lambda bv: (bv[1].created, bv[0]))

    def load_queries(self, query_ids: Sequence[str]) -> list[QueryRow]:
        out = []
        for qid in dict.fromkeys(query_ids):
            item = self.queries.get(qid)
            batches = self._batches_of(qid)
            if item is None or qid in self.decisions or not batches:
                continue
            out.append(
                QueryRow(
                    qid,
                    item.prompt,
                    item.constraints.to_json(),
                    batches[0][1].constraints,
                    item.user,
                    item.request.last_user_turn if item.request and item.user else None,
                )
            )
        return out

    def insert_decisions(self, rows: Sequence[DecisionRow]) -> None:
        for r in rows:
            self.decisions.setdefault(r.query_id, r)

    def unanswered_counts(self, batch_ids: Sequence[str]) -> dict[str, int]:
        return {
            b: sum(1 for q in self.batches[b].items if q not in self.results)
            if b in self.batches
            else 0
            for b in batch_ids
        }

    # -- executor -------------------------------------------------------------------------

    def load_for_execution(self, query_ids: Sequence[str]) -> list[ExecutionRow]:
        out = []
        for qid in dict.fromkeys(query_ids):
            d = self.decisions.get(qid)
            if d is None or qid in self.results or qid not in self.queries:
                continue
            item = self.queries[qid]
            out.append(
                ExecutionRow(qid, item.prompt, d.model, list(d.ranked), d.reason, item.request)
            )
        return out

    def record_results(
        self, results: Sequence[ResultRow], events: Sequence[FeedbackEvent]
    ) -> list[str]:
        fresh = {r.query_id for r in results if r.query_id not in self.results}
        for r in results:
            self.results.setdefault(r.query_id, r)
        self.add_feedback([e for e in events if e.query_id in fresh])
        return sorted(fresh)

    def unapplied_feedback_for(self, query_ids: Sequence[str]) -> list[str]:
        wanted = set(query_ids)
        return sorted(
            eid for eid, ev in self.events.items() if ev.event.query_id in wanted and not ev.applied
        )

    def batch_budgets(self, query_ids: Sequence[str]) -> dict[str, tuple[str, float]]:
        out = {}
        for qid in query_ids:
            for b, batch in self._batches_of(qid):
                if batch.budget_usd is not None:
                    out[qid] = (b, float(batch.budget_usd))
                    break
        return out

    def batch_spend(self, batch_ids: Sequence[str]) -> dict[str, float]:
        return {
            b: float(
                sum(self.results[q].cost_usd for q in self.batches[b].items if q in self.results)
            )
            if b in self.batches
            else 0.0
            for b in batch_ids
        }

    # -- feedback -------------------------------------------------------------------------

    def add_feedback(self, events: Sequence[FeedbackEvent]) -> list[str]:
        fresh = []
        for e in events:
            if e.id in self.events:
                continue
            self.events[e.id] = _Event(e, self.clock())
            self._order.append(e.id)
            fresh.append(e.id)
        return fresh

    def _contexts(self, events: Sequence[FeedbackEvent]) -> dict[str, Array]:
        return {
            e.query_id: np.asarray(self.decisions[e.query_id].features, dtype=float)
            for e in events
            if e.query_id in self.decisions and self.decisions[e.query_id].features
        }

    def floor_marks(self, query_ids: Sequence[str]) -> dict[str, str]:
        out = {}
        for q in query_ids:
            mark = self.decisions[q].floor_mark if q in self.decisions else None
            if mark is not None:
                out[q] = mark
        return out

    def claim_feedback(
        self, event_ids: Sequence[str], update_id: str
    ) -> tuple[list[FeedbackEvent], dict[str, Array]]:
        for eid in event_ids:
            ev = self.events.get(eid)
            if ev is not None and ev.update_id is None:
                ev.update_id = update_id
        owned = [
            self.events[eid].event
            for eid in self._order
            if self.events[eid].update_id == update_id and not self.events[eid].applied
        ]
        return owned, self._contexts(owned)

    def mark_applied(self, update_id: str) -> None:
        for ev in self.events.values():
            if ev.update_id == update_id:
                ev.applied = True

    def answered_by(self, refs: Sequence[str]) -> dict[str, tuple[str, str]]:
        ok = {q: r.model for q, r in self.results.items() if r.status == "ok" and r.model}
        out: dict[str, tuple[str, str]] = {}
        for ref in dict.fromkeys(refs):
            if ref in ok:
                out[ref] = (ref, ok[ref])
                continue
            hits = [q for q in ok if self.queries[q].external_id == ref]
            if len(hits) == 1:
                out[ref] = (hits[0], ok[hits[0]])
        return out

    def stale_unanswered(self, older_than_s: float, limit: int = 10_000) -> list[str]:
        cutoff = self.clock() - older_than_s
        old = [q for q in self.queries if q not in self.results and self.created[q] <= cutoff]
        return sorted(old, key=lambda q: self.created[q])[:limit]

    def stale_feedback(
        self, older_than_s: float, limit: int = 10_000
    ) -> dict[str | None, list[str]]:
        cutoff = self.clock() - older_than_s
        out: dict[str | None, list[str]] = {}
        stale = [
            eid
            for eid in self._order
            if not self.events[eid].applied and self.events[eid].created <= cutoff
        ]
        for eid in stale[:limit]:
            out.setdefault(self.events[eid].update_id, []).append(eid)
        return out
