"""One chat call of the HTTP API: constraints, decision, budget reservation, the model's call
(with the executor's retries, backoff and fallback), settlement, and the history record.

The decision is made in-process by the routing engine over the shared Redis posteriors; the call
goes through the executor's own per-prompt logic (:func:`_execute_one`), so a call answered here
and one answered by an executor worker are retried, billed and learned from alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from conduit_workers.domain.budget import (
    key_ledger,
    utc_day,
    worst_case_cost_usd,
    worst_input_tokens,
)
from conduit_workers.domain.catalog import Catalog
from conduit_workers.domain.chat import ChatRequest
from conduit_workers.domain.constraints import Constraints, parse_constraints
from conduit_workers.domain.health import ModelHealth
from conduit_workers.domain.records import DecisionRow, ExecutionRow, ResultRow
from conduit_workers.domain.rewards import FeedbackEvent
from conduit_workers.execution.batch_ledger import AsyncRedisBatchLedger
from conduit_workers.execution.executor import MAX_MODELS_TRIED, _execute_one
from conduit_workers.execution.llm import LLMClient
from conduit_workers.gateway.budget_lease import BudgetLeases, Lease
from conduit_workers.gateway.decider import Decider
from conduit_workers.gateway.errors import ApiError
from conduit_workers.gateway.recorder import HistoryRecorder
from conduit_workers.gateway.schemas import ROUTED, ChatCompletionRequest
from conduit_workers.history.history_gateway import ApiKey, CallRecord
from conduit_workers.settings import Settings

log = logging.getLogger(__name__)

RECORDED_SPEND_CACHE_S = 30.0


@dataclass(frozen=True)
class Reservation:
    """A hold on a key's daily budget (the batch ledger's, by a scope of the key and day): one
    of its own, or part of the process's lease on it (``gateway/budget_lease.py``)."""

    scope: str  # apikey:<name>:<day>
    id: str
    worst_usd: float
    lease: Lease | None = None


@dataclass(frozen=True)
class Prepared:
    """A call decided and paid for in advance, not made yet."""

    body: ChatCompletionRequest
    key: ApiKey
    query_id: str
    text: str
    request: ChatRequest
    constraints: Constraints
    decision: DecisionRow
    models: list[str]  # the chosen model, then its fallbacks
    reservation: Reservation | None


@dataclass(frozen=True)
class Answer:
    query_id: str
    created: int
    result: ResultRow
    finish_reason: str


class Gateway:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        decider: Decider,
        llm: LLMClient,
        health: ModelHealth,
        ledger: AsyncRedisBatchLedger,
        recorder: HistoryRecorder,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.decider = decider
        self.llm = llm
        self.health = health
        self.ledger = ledger
        self.recorder = recorder
        self.known = frozenset(catalog.names)
        self._recorded: dict[str, tuple[float, float]] = {}
        self._caps: dict[str, int] = {}  # model: the executor's or the catalog's cap, 0: none
        self._settling: set[asyncio.Future[Any]] = set()
        cap = settings.gateway.budget_lease_usd
        # One lease per key and day in this process (0: a hold per call, a round trip each).
        self.leases = (
            BudgetLeases(ledger, cap, self.hold_ttl_s(), self._recorded_spend) if cap > 0 else None
        )

    def visible_models(self, key: ApiKey) -> list[str]:
        allowed = key.allowed_models
        return [m for m in self.catalog.names if allowed is None or m in allowed]

    def constraints_for(self, body: ChatCompletionRequest, key: ApiKey) -> Constraints:
        """The request's routing constraints within what the key may use (a catalog model's
        name: that model alone); :class:`ApiError` 403/404/422 otherwise."""
        try:
            cons = parse_constraints(body.constraint_fields() or None, self.known)
        except ValueError as exc:
            raise ApiError(422, f"constraints: {exc}", param="constraints") from None
        if body.model != ROUTED:
            if body.model not in self.known:
                raise ApiError(
                    404,
                    f"The model {body.model!r} is not in Conduit's catalog: use 'conduit' to be "
                    "routed, or one of GET /v1/models.",
                    code="model_not_found",
                    param="model",
                )
            if key.allowed_models is not None and body.model not in key.allowed_models:
                raise ApiError(
                    403,
                    f"API key {key.name!r} may not use model {body.model!r}; it may use "
                    f"{', '.join(key.allowed_models)} (or 'conduit').",
                    code="model_not_allowed",
                    param="model",
                )
            return dataclasses.replace(cons, allowed_models=(body.model,))
        if key.allowed_models is not None:
            wanted = cons.allowed_models or tuple(self.catalog.names)
            both = tuple(m for m in wanted if m in key.allowed_models)
            if not both:
                raise ApiError(
                    403,
                    f"API key {key.name!r} may use none of the models the constraints allow.",
                    code="model_not_allowed",
                    param="constraints",
                )
            cons = dataclasses.replace(cons, allowed_models=both)
        return cons

    def _output_cap(self, model: str, request: ChatRequest) -> int | None:
        """The output tokens a call may produce: the smaller of the request's ``max_tokens``
        and the executor's or the catalog's cap (None: uncapped)."""
        cap = self._caps.get(model)
        if cap is None:
            cap = self._caps[model] = (
                self.settings.executor.max_output_tokens
                or self.catalog.get(model).max_output_tokens
                or 0
            )
        asked = request.max_tokens
        if asked and cap:
            return min(asked, cap)
        return asked or cap or None

    async def _reserve(
        self, key: ApiKey, query_id: str, models: list[str], request: ChatRequest, text: str
    ) -> tuple[Reservation | None, ChatRequest]:
        """Hold the call's worst case on the key's budget of the day (capping its output when
        nothing else does, so that the worst case is one); 429 when it does not fit. The hold
        is the batch ledger's (``execution/batch_ledger.py``), scoped ``apikey:<name>:<day>``:
        part of the process's lease on it (``budget_lease.py``), or, with
        ``gateway.budget_lease_usd`` 0, a hold of its own."""
        budget = key.budget_usd_per_day
        if budget is None:
            return None, request
        bs = self.settings.budget
        caps = [self._output_cap(m, request) for m in models]
        if None in caps:
            request = dataclasses.replace(request, max_tokens=bs.max_output_tokens)
            caps = [self._output_cap(m, request) for m in models]
        n_in = worst_input_tokens(text, bs.input_overhead_tokens * len(request.messages))
        worst = max(
            worst_case_cost_usd(self.catalog.get(m), n_in, cap or 0)
            for m, cap in zip(models, caps, strict=True)
        )
        scope = key_ledger(key.name, utc_day())
        if self.leases is not None:
            hold, lease = await self.leases.reserve(scope, budget, worst)
            res = Reservation(scope, lease.id, worst, lease)
        else:
            # The hold's id is the call's query id: unique, and one uuid fewer per request.
            res = Reservation(scope, query_id, worst)
            ex = self.settings.executor
            # Held for the longest the call can take: every model tried, every attempt timing
            # out.
            ttl_s = max(bs.reservation_ttl_s, ex.timeout_s * ex.max_attempts * len(models) + 60.0)
            recorded = await self._recorded_spend(res.scope)
            hold = await self.ledger.reserve(res.scope, budget, res.id, worst, ttl_s, recorded)
        if not hold.held:
            st = hold.state
            raise ApiError(
                429,
                f"API key {key.name!r} is over its daily budget of ${st.limit_usd:.2f}: "
                f"${st.spent_usd + st.reserved_usd:.4f} is spent or held today (UTC) and this "
                f"call may cost up to ${worst:.4f}. The budget renews at 00:00 UTC; a smaller "
                "max_tokens or a cheaper model may still fit.",
                code="budget_exceeded",
            )
        return res, request

    def _settle_later(self, p: Prepared, cost_usd: float | None) -> None:
        """Settle behind the answer: counted in the lease (sent with its next flush), or the
        script joins the ledger's next pipeline; no task either way."""
        r = p.reservation
        if r is None:
            return
        spent = cost_usd if cost_usd is not None else r.worst_usd
        if r.lease is not None and self.leases is not None:
            self.leases.settle(r.lease, r.worst_usd, spent)
            return
        future = self.ledger.settle_soon(r.scope, r.id, spent)
        self._settling.add(future)
        future.add_done_callback(self._settled)

    def _settled(self, future: asyncio.Future[Any]) -> None:
        self._settling.discard(future)
        if not future.cancelled() and (exc := future.exception()) is not None:
            log.warning(
                "a budget hold was not settled (%s); it expires after its TTL and is then "
                "charged at its worst case",
                type(exc).__name__,
            )

    async def drain(self) -> None:
        """Wait for the settlements still running, then flush and release the budget leases
        (at shutdown)."""
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        if self.leases is not None:
            await self.leases.aclose()

    async def _recorded_spend(self, scope: str) -> float:
        """What the history database recorded of the key's calls today, chat and Batch API
        alike (cached for ``RECORDED_SPEND_CACHE_S``): a ledger lost with Redis starts again
        from it, not 0."""
        now = time.monotonic()
        cached = self._recorded.get(scope)
        if cached is not None and cached[0] > now:
            return cached[1]
        usd = (await asyncio.to_thread(self.recorder.history.batch_spend, [scope]))[scope]
        self._recorded[scope] = (now + RECORDED_SPEND_CACHE_S, usd)
        return usd

    def call_ttl_s(self) -> float:
        """The longest a call can take: every model tried, every attempt timing out."""
        ex = self.settings.executor
        return ex.timeout_s * ex.max_attempts * MAX_MODELS_TRIED + 60.0

    def hold_ttl_s(self) -> float:
        """How long a budget lease outlives its last script: the longest call (a lease is
        renewed every flush while the process lives, so only a dead process's expires)."""
        return max(self.settings.budget.reservation_ttl_s, self.call_ttl_s())

    async def prepare(self, body: ChatCompletionRequest, key: ApiKey) -> Prepared:
        """Everything before the call: validation, constraints, decision, budget reservation
        (the caller must :meth:`settle` a granted one)."""
        request = body.chat_request()
        text = request.prompt
        limit = self.settings.limits.max_prompt_chars
        if len(text) > limit:
            raise ApiError(
                422,
                f"the messages hold {len(text)} characters, over the limit of {limit} "
                "(CONDUIT_LIMITS__MAX_PROMPT_CHARS)",
                param="messages",
            )
        if not text.strip():
            raise ApiError(422, "the messages hold no text", param="messages")
        if "\x00" in text:  # PostgreSQL refuses it: the history write of its batch would fail
            raise ApiError(422, "the messages hold a NUL character", param="messages")
        cons = self.constraints_for(body, key)
        qid = uuid.uuid4().hex
        decision = await self.decider.decide(qid, text, cons)
        if decision.model is None:
            raise ApiError(
                422,
                f"no model satisfies the request's constraints: {decision.reason}",
                code="unroutable",
                param="constraints",
            )
        models = ([decision.model] + [m for m in decision.ranked if m != decision.model])[
            :MAX_MODELS_TRIED
        ]
        reservation, request = await self._reserve(key, qid, models, request, text)
        return Prepared(body, key, qid, text, request, cons, decision, models, reservation)

    async def settle(self, p: Prepared, cost_usd: float | None) -> None:
        """Replace the hold by the call's cost; None (the call was cut short and may still be
        billed): by its worst case."""
        if p.reservation is not None:
            r = p.reservation
            spent = cost_usd if cost_usd is not None else r.worst_usd
            if r.lease is not None and self.leases is not None:
                self.leases.settle(r.lease, r.worst_usd, spent)
            else:
                await self.ledger.settle(r.scope, r.id, spent)

    def finish_reason(self, p: Prepared, result: ResultRow) -> str:
        cap = self._output_cap(result.model, p.request) if result.model else None
        return "length" if cap is not None and result.output_tokens >= cap else "stop"

    async def chat(self, body: ChatCompletionRequest, key: ApiKey) -> Answer:
        p = await self.prepare(body, key)
        cost: float | None = None
        try:
            row = ExecutionRow(
                p.query_id,
                p.text,
                p.decision.model,
                p.decision.ranked,
                p.decision.reason,
                p.request,
            )
            ex, fb = self.settings.executor, self.settings.feedback
            outcome = await _execute_one(row, self.llm, self.catalog, ex, fb, self.health)
            cost = outcome.result.cost_usd
        finally:
            # Settled behind the answer (the hold already covers the call): the client does
            # not wait for it. A process killed first leaves the hold to expire, charged at its
            # worst case.
            self._settle_later(p, cost)
        result = outcome.result
        self.record(p, result, outcome.events)
        if result.status != "ok":
            raise ApiError(
                502,
                f"the model call failed: {result.error_message} (query {p.query_id})",
                code=result.error_class,
                type_="api_error",
                headers={"x-conduit-query-id": p.query_id},
            )
        return Answer(p.query_id, int(time.time()), result, self.finish_reason(p, result))

    def record(self, p: Prepared, result: ResultRow, events: Sequence[FeedbackEvent]) -> None:
        """Hand the call's rows to the history writer (written behind the answer)."""
        meta: dict[str, object] = {"api": "chat.completions", "model": p.body.model}
        if p.body.metadata:
            meta["metadata"] = p.body.metadata
        self.recorder.add(
            CallRecord(
                query_id=p.query_id,
                prompt=p.text,
                user=p.request.user,
                asked=p.request.last_user_turn if p.request.user else None,
                batch_id=f"api-{p.key.name}-{utc_day()}",
                tag=f"api:{p.key.name}",
                metadata=meta,
                constraints=p.constraints.to_json(),
                decision=p.decision,
                result=result,
                events=tuple(events),
            )
        )
