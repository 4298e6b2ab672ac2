"""The executor's side of a batch budget: reserve before each call, settle after.

One :class:`CallBudget` per prompt of a budgeted batch. Before every call (every attempt, every
fallback model) the executor asks :meth:`CallBudget.reserve` for the call's worst-case cost
(the prompt's input tokens at most, the output cap, at the model's prices); no reservation, no
call. After the call, :meth:`CallBudget.settle` replaces the reservation with the real cost (0
for a failed call). A worker that dies between the two leaves a reservation that expires after
``budget.reservation_ttl_s`` (at least the call timeout + 60 s): the budget is held that long,
never lost.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from conduit_workers.domain.budget import (
    BudgetState,
    parse_key_ledger,
    worst_case_cost_usd,
    worst_input_tokens,
)
from conduit_workers.domain.catalog import Catalog
from conduit_workers.domain.ports import BudgetLedger
from conduit_workers.errors import StoreUnavailable
from conduit_workers.settings import BudgetSettings, ExecutorSettings

log = logging.getLogger(__name__)


@dataclass
class CallBudget:
    """The budget that one prompt's calls are paid from."""

    ledger: BudgetLedger
    catalog: Catalog
    batch_id: str  # the ledger's id: the batch's, or an API key's day (``apikey:<name>:<day>``)
    limit_usd: float
    input_tokens: int  # at most
    max_output_tokens: int | None  # executor.max_output_tokens
    settings: BudgetSettings
    ttl_s: float
    recorded_spend_usd: float = 0.0  # the batch's spend in the history database
    request_max_tokens: int | None = None  # the prompt's own max_tokens (the call obeys it)
    refused: list[tuple[str, float]] = field(default_factory=list)  # (model, worst case)
    last_state: BudgetState | None = None

    def output_cap(self, model: str) -> int:
        """The output tokens a call to ``model`` may produce (the call is capped at it, and at
        the prompt's own ``max_tokens``, which the call obeys as well)."""
        cap = (
            self.max_output_tokens
            or self.catalog.get(model).max_output_tokens
            or self.settings.max_output_tokens
        )
        return min(cap, self.request_max_tokens) if self.request_max_tokens else cap

    def worst_case_usd(self, model: str) -> float:
        spec = self.catalog.get(model)
        return worst_case_cost_usd(spec, self.input_tokens, self.output_cap(model))

    async def reserve(
        self, model: str, pause: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> str | None:
        """A reservation id for one call to ``model``, or None: the batch cannot afford it.

        Refused only because of the holds of calls in flight (which usually cost less than
        their worst case), the call waits for them to settle, up to ``hold_wait_s``, by
        ``pause`` (the executor's gives the prompt's call slot back while it waits: a prompt
        that only waits for a budget must not keep other batches' prompts from being called)."""
        amount = self.worst_case_usd(model)
        reservation = f"{uuid.uuid4().hex}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.hold_wait_s
        pause_s = 0.02
        while True:
            hold = await asyncio.to_thread(
                self.ledger.reserve,
                self.batch_id,
                self.limit_usd,
                reservation,
                amount,
                self.ttl_s,
                self.recorded_spend_usd,
            )
            self.last_state = s = hold.state
            if hold.held:
                return reservation
            if s.limit_usd - s.spent_usd < amount or loop.time() + pause_s > deadline:
                self.refused.append((model, amount))
                return None
            await pause(pause_s)
            pause_s = min(1.0, pause_s * 2)

    async def settle(self, reservation: str, cost_usd: float) -> None:
        """Replace the reservation with the real cost. A ledger that cannot be reached after
        the call is logged, not raised: the answer is kept (a retried task would pay twice)."""
        for attempt in range(3):
            try:
                await asyncio.to_thread(self.ledger.settle, self.batch_id, reservation, cost_usd)
                return
            except StoreUnavailable as exc:
                if attempt == 2:
                    log.error(
                        "batch %s: cost $%.6f of reservation %s not settled (%s); the "
                        "reservation is released at its expiry, the cost is not counted",
                        self.batch_id,
                        cost_usd,
                        reservation,
                        exc,
                    )
                    return
                await asyncio.sleep(0.2 * 2**attempt)

    def reason(self) -> str:
        """Why no model was called, for the result's error message."""
        s = self.last_state
        key = parse_key_ledger(self.batch_id)
        # A key's day is also held by `conduit serve` processes' leases (gateway/budget_lease.py).
        holders = "calls in flight and the servers' leases" if key else "calls in flight"
        left = (
            f"${s.spent_usd:.6f} spent and ${s.reserved_usd:.6f} held by {holders}, "
            f"${s.remaining_usd:.6f} left"
            if s is not None
            else "nothing left"
        )
        needs = ", ".join(f"{m} up to ${usd:.6f}" for m, usd in self.refused)
        whose = (
            f"API key {key[0]!r}'s daily budget of ${self.limit_usd:.2f} ({key[1]}, UTC)"
            if key is not None
            else f"batch budget ${self.limit_usd:.2f}"
        )
        return (
            f"{whose} cannot pay for a call: {left}; "
            f"the candidates need {needs or 'more'} (worst case: input and output caps)"
        )


def call_budgets(
    ledger: BudgetLedger,
    catalog: Catalog,
    budgets: dict[str, tuple[str, float]],
    rows: Sequence[tuple[str, str, int, int | None]],
    settings: BudgetSettings,
    ex: ExecutorSettings,
    recorded: dict[str, float] | None = None,
) -> dict[str, CallBudget]:
    """A :class:`CallBudget` per (query id, prompt text, messages, max_tokens) of a budgeted batch
    (``budgets``: query id → (batch id, limit); ``recorded``: batch id → spend; both from the
    history database). Each message adds its chat-template overhead to the input's worst case."""
    ttl_s = max(settings.reservation_ttl_s, ex.timeout_s + 60.0)
    out = {}
    for qid, prompt, messages, max_tokens in rows:
        if qid not in budgets:
            continue
        batch_id, limit = budgets[qid]
        out[qid] = CallBudget(
            ledger,
            catalog,
            batch_id,
            limit,
            worst_input_tokens(prompt, settings.input_overhead_tokens * max(1, messages)),
            ex.max_output_tokens,
            settings,
            ttl_s,
            (recorded or {}).get(batch_id, 0.0),
            max_tokens,
        )
    return out
