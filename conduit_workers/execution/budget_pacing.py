"""The router's side of a batch budget: each chunk's allowance.

A chunk of a budgeted batch may spend, in expectation, its share of what the batch has left:
``remaining × chunk prompts / (unanswered prompts + half a chunk)`` (``allowance_usd``), with
``remaining = limit − spent − held`` read from the ledger (the whole limit before the first
call). The engine chooses within it; the executor's reservations are what guarantee the
limit. A batch's budget is spent for quality (what a chunk's choices leave buys upgrades,
``RoutingEngine.decide``); an API key's daily budget, which also paces the lines of its Batch
API batches, is a cap and only paces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from conduit_workers.domain.budget import allowance_usd, parse_key_ledger
from conduit_workers.domain.ports import BudgetLedger, History


@dataclass(frozen=True)
class Share:
    """Positions of a chunk's prompts routed together, and their allowance (None: no budget)."""

    positions: list[int]
    allowance_usd: float | None
    batch_id: str | None = None

    @property
    def buys_quality(self) -> bool:
        """A batch's budget is spent for quality (what the choices leave buys upgrades); an
        API key's daily budget is a cap on the key's spend, and only paces."""
        return self.batch_id is not None and parse_key_ledger(self.batch_id) is None


def chunk_shares(
    query_ids: Sequence[str], history: History, ledger: BudgetLedger | None
) -> list[Share]:
    """The chunk split by budgeted batch (usually one share: a chunk comes from one batch)."""
    everything = [Share(list(range(len(query_ids))), None)]
    if ledger is None or not query_ids:
        return everything
    budgets = history.batch_budgets(query_ids)
    if not budgets:
        return everything
    by_batch: dict[str | None, list[int]] = {}
    limits: dict[str, float] = {}
    for i, qid in enumerate(query_ids):
        batch, limit = budgets.get(qid, (None, 0.0))
        by_batch.setdefault(batch, []).append(i)
        if batch is not None:
            limits[batch] = limit
    batches = sorted(limits)
    states = ledger.states(batches)
    left = history.unanswered_counts(batches)
    out = []
    for batch, positions in by_batch.items():
        if batch is None:
            out.append(Share(positions, None))
            continue
        state = states.get(batch)
        remaining = state.remaining_usd if state is not None else limits[batch]
        out.append(Share(positions, allowance_usd(remaining, len(positions), left[batch]), batch))
    return out
