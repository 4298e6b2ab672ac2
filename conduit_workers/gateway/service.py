"""One chat call of the HTTP API: constraints, decision, budget reservation, the model's call
(with the executor's retries, backoff and fallback), settlement, and the history record.

The decision is made in-process by the routing engine over the shared Redis posteriors; the call
goes through the executor's own per-prompt logic (:func:`_execute_one`), so a call answered here
and one answered by an executor worker are retried, billed and learned from alike.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass

from conduit_workers.adapters.budget_ledger import RedisBudgetLedger, Reservation, utc_day
from conduit_workers.adapters.history import DecisionRow, ExecutionRow, ResultRow
from conduit_workers.adapters.history_gateway import ApiKey, CallRecord
from conduit_workers.adapters.llm import LLMClient
from conduit_workers.domain.catalog import Catalog
from conduit_workers.domain.chat import ChatRequest, max_input_tokens
from conduit_workers.domain.constraints import Constraints, parse_constraints
from conduit_workers.domain.health import ModelHealth
from conduit_workers.gateway.decider import Decider
from conduit_workers.gateway.errors import ApiError
from conduit_workers.gateway.recorder import HistoryRecorder
from conduit_workers.gateway.schemas import ROUTED, ChatCompletionRequest
from conduit_workers.settings import Settings
from conduit_workers.workers.executor import MAX_MODELS_TRIED, _execute_one


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
        ledger: RedisBudgetLedger,
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

    def visible_models(self, key: ApiKey) -> list[str]:
        allowed = key.allowed_models
        return [m for m in self.catalog.names if allowed is None or m in allowed]

    def _constraints(self, body: ChatCompletionRequest, key: ApiKey) -> Constraints:
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
        caps = [
            c
            for c in (
                request.max_tokens,
                self.settings.executor.max_output_tokens
                or self.catalog.get(model).max_output_tokens,
            )
            if c
        ]
        return min(caps) if caps else None

    async def _reserve(
        self, key: ApiKey, models: list[str], request: ChatRequest
    ) -> tuple[Reservation | None, ChatRequest]:
        """Reserve the call's worst case against the key's budget (capping its output when
        nothing else does, so that the worst case is one); 429 when it does not fit."""
        budget = key.budget_usd_per_day
        if budget is None:
            return None, request
        if any(self._output_cap(m, request) is None for m in models):
            request = dataclasses.replace(
                request, max_tokens=self.settings.gateway.default_max_output_tokens
            )
        n_in = max_input_tokens(request)
        worst = max(
            self.catalog.get(m).cost_usd(n_in, self._output_cap(m, request) or 0) for m in models
        )
        res = await self.ledger.reserve(f"apikey:{key.name}", utc_day(), worst, budget)
        if not res.ok:
            raise ApiError(
                429,
                f"API key {key.name!r} is over its daily budget of ${budget:.2f}: "
                f"${res.committed_usd:.4f} is spent or reserved today (UTC) and this call may "
                f"cost up to ${worst:.4f}. The budget renews at 00:00 UTC; a smaller max_tokens "
                "or a cheaper model may still fit.",
                code="budget_exceeded",
            )
        return res, request

    async def chat(self, body: ChatCompletionRequest, key: ApiKey) -> Answer:
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
        cons = self._constraints(body, key)
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
        reservation, request = await self._reserve(key, models, request)
        cost: float | None = None
        try:
            row = ExecutionRow(qid, text, decision.model, decision.ranked, decision.reason, request)
            outcome = await _execute_one(
                row,
                self.llm,
                self.catalog,
                self.settings.executor,
                self.settings.feedback,
                self.health,
            )
            cost = outcome.result.cost_usd
        finally:
            if reservation is not None:
                # A call cut short (client gone) may still be billed: count its worst case.
                spent = cost if cost is not None else reservation.amount_nano / 1e9
                await self.ledger.settle(reservation, spent)
        result = outcome.result
        self._record(body, key, qid, text, request, cons, decision, result, outcome.events)
        if result.status != "ok":
            raise ApiError(
                502,
                f"the model call failed: {result.error_message} (query {qid})",
                code=result.error_class,
                type_="api_error",
                headers={"x-conduit-query-id": qid},
            )
        assert result.model is not None
        cap = self._output_cap(result.model, request)
        finish = "length" if cap is not None and result.output_tokens >= cap else "stop"
        return Answer(qid, int(time.time()), result, finish)

    def _record(
        self,
        body: ChatCompletionRequest,
        key: ApiKey,
        qid: str,
        text: str,
        request: ChatRequest,
        cons: Constraints,
        decision: DecisionRow,
        result: ResultRow,
        events: list,  # type: ignore[type-arg]
    ) -> None:
        meta: dict[str, object] = {"api": "chat.completions", "model": body.model}
        if body.metadata:
            meta["metadata"] = body.metadata
        self.recorder.add(
            CallRecord(
                query_id=qid,
                prompt=text,
                user=request.user,
                batch_id=f"api-{key.name}-{utc_day()}",
                tag=f"api:{key.name}",
                metadata=meta,
                constraints=cons.to_json(),
                decision=decision,
                result=result,
                events=tuple(events),
            )
        )
