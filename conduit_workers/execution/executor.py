"""Executor role: call the chosen model for each prompt of a chunk, concurrently.

Per prompt: retry retryable errors (5xx, timeout, empty answer) with exponential backoff; after
``max_attempts`` fall back to the next-best model of the decision. A 429 closes the model's gate
for its Retry-After (one probe goes first when it reopens): the prompt waits there, using up no
attempt, for up to ``rate_limit_wait_s`` before it falls back. A permanent error (400, 401, …)
ends the prompt with that error. The result and one
implicit feedback event per model tried are stored in one transaction, once per prompt.

A prompt of a budgeted batch reserves each call's worst-case cost in the batch's ledger before
the call and settles the real cost after (:mod:`conduit_workers.execution.budget_guard`); a model
the batch cannot afford is passed over for the next of the ranked list, and a prompt that no
model fits ends with status ``over_budget`` and no call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from conduit_workers.celery_app import app
from conduit_workers.domain.budget import OVER_BUDGET
from conduit_workers.domain.catalog import Catalog
from conduit_workers.domain.health import ModelHealth
from conduit_workers.domain.ports import LLM, BudgetLedger, History
from conduit_workers.domain.records import ExecutionRow, ResultRow
from conduit_workers.domain.rewards import FeedbackEvent, call_event
from conduit_workers.errors import (
    ConfigError,
    PermanentProviderError,
    ProviderError,
    StoreUnavailable,
)
from conduit_workers.execution import cooldowns
from conduit_workers.execution.answer_stash import AnswerStash, StashKeeper
from conduit_workers.execution.budget_guard import CallBudget, call_budgets
from conduit_workers.execution.call_metrics import CallMetrics, MeteredLLM
from conduit_workers.execution.claims import ExecClaims
from conduit_workers.execution.waiting import CallSlot, admit, backoff_s
from conduit_workers.infra.runtime import chunks, runtime
from conduit_workers.names import APPLY_EVENTS, EXECUTE_BATCH, FEEDBACK
from conduit_workers.settings import BudgetSettings, ExecutorSettings, FeedbackSettings

log = logging.getLogger(__name__)

MAX_MODELS_TRIED = 3  # the chosen model and two fallbacks


@dataclass
class _Outcome:
    result: ResultRow
    events: list[FeedbackEvent]


async def _execute_one(
    row: ExecutionRow,
    llm: LLM,
    catalog: Catalog,
    ex: ExecutorSettings,
    fb: FeedbackSettings,
    health: ModelHealth | None = None,
    callable_models: Collection[str] | None = None,
    budget: CallBudget | None = None,
    slot: CallSlot | None = None,
) -> _Outcome:
    if row.model is None:
        return _Outcome(
            ResultRow(
                row.query_id, None, "unroutable", error_class="unroutable", error_message=row.reason
            ),
            [],
        )
    unusable: dict[str, str] = {}
    models = _callable_ranking(row, catalog, callable_models, unusable)
    if budget is None:  # else the whole ranking: the best model that fits is called
        models = models[:MAX_MODELS_TRIED]
    if health is not None:
        # Models cooling down go last: traffic falls back to the next-best, they stay a last resort.
        now = time.monotonic()
        cooling = [m for m in models if health.cooling(m, now)]
        if cooling:
            models = [m for m in models if m not in cooling] + cooling
    events: list[FeedbackEvent] = []
    attempts = 0
    tried = 0
    last_error: ProviderError | None = None
    for k, model in enumerate(models):
        if tried >= MAX_MODELS_TRIED:
            break
        spent_ms = 0.0
        model_attempts = 0
        failures = 0  # retryable failures; a 429 under the shared gate is not one
        force = k == len(models) - 1 and not events
        # A rate-limited model is waited for (at its gate) for up to ``rate_limit_wait_s``
        # before the prompt falls back: a provider's 429 window must not end prompts in error.
        wait_until = time.monotonic() + ex.rate_limit_wait_s
        while failures < ex.max_attempts:
            budget_s = max(0.0, wait_until - time.monotonic())
            if not await admit(health, model, force, budget_s):
                break
            held = (
                await budget.reserve(model, slot.pause if slot is not None else asyncio.sleep)
                if budget is not None
                else None
            )
            if budget is not None and held is None:
                if health is not None:
                    health.release(model)
                break  # the batch cannot afford this model: the next one may fit
            attempts += 1
            model_attempts += 1
            started = time.perf_counter()
            try:
                cap = budget.output_cap(model) if budget is not None else None
                done = await llm.complete(model, row.prompt, row.request, max_output_tokens=cap)
            except BaseException as exc:
                if health is not None and not isinstance(exc, ProviderError):
                    health.release(model)  # cancelled or a bug: never leave a probe slot taken
                if not isinstance(exc, (ProviderError, ConfigError)):
                    raise  # a reservation held here expires (the call may have cost)
                if budget is not None and held is not None:
                    await budget.settle(held, 0.0)
                if isinstance(exc, ConfigError):
                    # No request was sent (no key, no SDK): the next model of the ranking.
                    unusable[model] = str(exc)
                    attempts -= 1
                    model_attempts -= 1
                    break
                assert isinstance(exc, ProviderError)
                err = exc
                spent_ms += (time.perf_counter() - started) * 1000
                last_error = err
                permanent = isinstance(err, PermanentProviderError)
                gated = health is not None and err.status_code == 429
                if health is not None:
                    # A permanent error (400, 401) is the request's or the key's fault, not a
                    # sign that the model is down.
                    health.record(
                        model,
                        time.monotonic(),
                        ok=permanent,
                        rate_limited=err.status_code == 429,
                        retry_after_s=err.retry_after_s,
                    )
                if permanent or (health is not None and health.cooling(model, time.monotonic())):
                    break
                if gated:
                    if time.monotonic() >= wait_until:
                        break
                    continue  # the gate holds every call to the model until Retry-After
                failures += 1
                if failures < ex.max_attempts:
                    await asyncio.sleep(
                        backoff_s(failures, ex.backoff_base_s, ex.backoff_max_s, err.retry_after_s)
                    )
                continue
            if health is not None:
                health.record(model, time.monotonic(), ok=True)
            cost = catalog.get(model).cost_usd(done.input_tokens, done.output_tokens)
            if budget is not None and held is not None:
                await budget.settle(held, cost)
            events.append(
                call_event(
                    row.query_id,
                    model,
                    fb.call_weights,
                    error=False,
                    latency_ms=done.latency_ms,
                    in_tokens=done.input_tokens,
                    out_tokens=done.output_tokens,
                    cost_usd=cost,
                )
            )
            return _Outcome(
                ResultRow(
                    row.query_id,
                    model,
                    "ok",
                    done.text,
                    done.input_tokens,
                    done.output_tokens,
                    cost,
                    done.latency_ms,
                    attempts,
                    tried,
                ),
                events,
            )
        if model_attempts == 0:
            continue  # skipped (cooling down or rate limited): no call, no evidence
        tried += 1
        events.append(
            call_event(row.query_id, model, fb.call_weights, error=True, latency_ms=spent_ms)
        )
        if isinstance(last_error, PermanentProviderError):
            break
    if last_error is None:
        if budget is not None and budget.refused:
            return _Outcome(
                ResultRow(
                    row.query_id,
                    None,
                    OVER_BUDGET,
                    error_class=OVER_BUDGET,
                    error_message=budget.reason(),
                ),
                events,
            )
        return _unavailable(row, unusable, attempts)
    return _Outcome(
        ResultRow(
            row.query_id,
            last_error.model_name,
            "error",
            attempts=attempts,
            fallbacks=max(0, len(events) - 1),
            error_class=last_error.error_class,
            error_message=str(last_error),
        ),
        events,
    )


def _callable_ranking(
    row: ExecutionRow,
    catalog: Catalog,
    callable_models: Collection[str] | None,
    unusable: dict[str, str],
) -> list[str]:
    """The decided model then the rest of the ranking, without the models this worker cannot
    call (gone from its catalog since the decision, or without key or SDK); ``unusable``
    gets why each was left out."""
    names = set(catalog.names)
    out = []
    for m in [row.model] + [m for m in row.ranked if m != row.model]:
        if m is None:
            continue
        if m not in names:
            unusable[m] = "not in this worker's catalog"
        elif callable_models is not None and m not in callable_models:
            unusable[m] = "cannot be called by this worker (API key or SDK missing)"
        else:
            out.append(m)
    return out


def _unavailable(row: ExecutionRow, unusable: dict[str, str], attempts: int) -> _Outcome:
    """No model of the prompt's ranking could be called here: the prompt ends on its own."""
    why = "; ".join(f"{m}: {r}" for m, r in unusable.items())
    return _Outcome(
        ResultRow(
            row.query_id,
            row.model,
            "unavailable",
            attempts=attempts,
            error_class="model_unavailable",
            error_message=(
                f"no model of the prompt's ranking can be called ({why}); fix the catalog or "
                "the keys, then submit it again under a new id"
            )[:2000],
        ),
        [],
    )


async def handle_execute_batch(
    query_ids: Sequence[str],
    history: History,
    llm: LLM,
    catalog: Catalog,
    ex: ExecutorSettings,
    fb: FeedbackSettings,
    health: ModelHealth | None = None,
    slots: asyncio.Semaphore | None = None,
    callable_models: Collection[str] | None = None,
    ledger: BudgetLedger | None = None,
    budget_settings: BudgetSettings | None = None,
    stash: AnswerStash | None = None,
    metrics: CallMetrics | None = None,
) -> tuple[list[ResultRow], list[str]]:
    """Answer the chunk's decided, unanswered prompts; return the new results and the ids of
    the feedback events to apply. With ``metrics``, each new result's time since its prompt
    was submitted is counted there (read with the prompts, no query of its own).

    ``ledger``: the batch budgets' ledger (prompts of budgeted batches are never called
    without it). ``slots`` bounds the calls in flight; the process's (shared by the chunks that
    its pool threads run at once) or, when None, ``ex.concurrency`` for this chunk alone.

    The event ids are all the chunk's events not applied yet, not only the new ones: a task
    redelivered after its worker died between storing results and sending them to the
    feedback queue sends them now (an event is claimed by one update only, so never twice).

    Per prompt, never per chunk: a prompt whose models cannot be called here is re-routed or
    ends as ``unavailable``, and should one prompt raise, the answers of the others are stored
    before the error propagates, so that a redelivery never pays for them again. Answers that
    cannot be stored (the history database unreachable) go to the ``stash`` before the error
    propagates, and a prompt with a stashed answer is stored, not called
    (:mod:`conduit_workers.execution.answer_stash`).
    """
    rows = await asyncio.to_thread(history.load_for_execution, query_ids)
    submitted = {r.query_id: r.submitted_at for r in rows if r.submitted_at is not None}
    results: list[ResultRow] = []
    fresh: set[str] = set()
    stashed: dict[str, tuple[ResultRow, list[FeedbackEvent]]] = {}
    if rows and stash is not None:
        stashed = await asyncio.to_thread(stash.take, [r.query_id for r in rows])
        if stashed:
            log.info("%d answers of an earlier attempt stored, not called again", len(stashed))
            rows = [r for r in rows if r.query_id not in stashed]
    if rows or stashed:
        sem = slots if slots is not None else asyncio.Semaphore(ex.concurrency)
        budgets: dict[str, CallBudget] = {}
        if ledger is not None:
            by_batch = await asyncio.to_thread(history.batch_budgets, [r.query_id for r in rows])
            recorded: dict[str, float] = {}
            if by_batch:
                batch_ids = sorted({b for b, _ in by_batch.values()})
                recorded = await asyncio.to_thread(history.batch_spend, batch_ids)
            budgets = call_budgets(
                ledger,
                catalog,
                by_batch,
                [
                    (
                        r.query_id,
                        r.prompt,
                        len(r.request.messages) if r.request else 1,
                        r.request.max_tokens if r.request else None,
                    )
                    for r in rows
                ],
                budget_settings or BudgetSettings(),
                ex,
                recorded,
            )

        keeper = StashKeeper(stash, ex.stash_every_s) if stash is not None else None

        async def bounded(row: ExecutionRow) -> _Outcome:
            async with CallSlot(sem) as slot:
                out = await _execute_one(
                    row,
                    llm,
                    catalog,
                    ex,
                    fb,
                    health,
                    callable_models,
                    budgets.get(row.query_id),
                    slot,
                )
            if keeper is not None:
                keeper.add((out.result, out.events))
            return out

        try:
            done = await asyncio.gather(*(bounded(r) for r in rows), return_exceptions=True)
        finally:
            if keeper is not None:
                keeper.stop()  # also when the task is cancelled: no keeper outlives its chunk
        kept = await keeper.close() if keeper is not None else []
        outcomes = [o for o in done if isinstance(o, _Outcome)]
        outcomes += [_Outcome(r, evs) for r, evs in stashed.values()]
        results = [o.result for o in outcomes]
        events = [e for o in outcomes for e in o.events]
        try:
            fresh = set(await asyncio.to_thread(history.record_results, results, events))
        except StoreUnavailable:
            if stash is not None:  # kept for the retry (the stashed ones are kept already)
                new = [(o.result, o.events) for o in outcomes if o.result.query_id not in stashed]
                await asyncio.to_thread(stash.put, new)
            raise
        if stash is not None and (stashed or kept):
            await asyncio.to_thread(stash.drop, sorted({*stashed, *kept}))
        failed = [e for e in done if isinstance(e, BaseException)]
        if failed:
            raise failed[0]
    stored = [r for r in results if r.query_id in fresh]
    if metrics is not None and stored:
        _end_to_end(metrics, stored, submitted)
    pending = await asyncio.to_thread(history.unapplied_feedback_for, query_ids)
    return stored, pending


async def _cooling(health: ModelHealth, names: Sequence[str]) -> dict[str, float]:
    """Seconds of cooldown left per cooling model; read on the event loop, the only thread
    that changes the breakers."""
    now = time.monotonic()
    return {m: s for m in names if (s := health.cooling_for(m, now)) > 0}


def _end_to_end(
    metrics: CallMetrics, results: Sequence[ResultRow], submitted: Mapping[str, datetime]
) -> None:
    """Count each new result's time since its prompt was ``submitted``, per model."""
    done = datetime.now(UTC)
    for r in results:
        at = submitted.get(r.query_id)
        if at is not None:
            metrics.end_to_end(r.model or "none", max(0.0, (done - at).total_seconds()))


def _claim(claims: ExecClaims, query_ids: list[str], owner: str) -> list[str]:
    """The chunk's prompts this task may call (see :mod:`conduit_workers.execution.claims`);
    all of them when Redis cannot say (results are still stored once)."""
    try:
        mine = claims.claim(query_ids, owner)
    except (redis.RedisError, OSError) as exc:
        log.warning("execute claims unavailable (%s): calling the chunk unclaimed", exc)
        return list(query_ids)
    if len(mine) < len(query_ids):
        log.info(
            "execute task %s: %d of %d prompts belong to another execute task; left to it",
            owner,
            len(query_ids) - len(mine),
            len(query_ids),
        )
    return mine


def _release(claims: ExecClaims, query_ids: list[str], owner: str) -> None:
    try:
        claims.release(query_ids, owner)
    except (redis.RedisError, OSError) as exc:  # they expire after executor.claim_ttl_s
        log.warning("execute claims not released (%s)", exc)


@app.task(name=EXECUTE_BATCH, bind=True)
def execute_batch(self, query_ids: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Call the LLMs for a chunk of routed prompts.

    Queue ``execute``. Payload: prompt ids only. Idempotent: prompts with a result are skipped
    and a result is stored at most once per prompt (a duplicate call after a crash is
    possible, a duplicate bill is not). Provider retries happen inside; the task itself
    retries only while the history database is unavailable. Thread-safe: under the threads
    pool several run at once on the process's one event loop and share its
    ``executor.concurrency`` call slots.
    """
    rt = runtime()
    started = time.perf_counter()
    metrics = rt.call_metrics
    results: list[ResultRow] = []
    claims = ExecClaims(
        rt.store.client, rt.settings.redis.key_prefix, rt.settings.executor.claim_ttl_s
    )
    mine = _claim(claims, query_ids, self.request.id)
    try:
        results, event_ids = rt.run(
            handle_execute_batch(
                mine,
                rt.history,
                MeteredLLM(rt.llm, metrics),
                rt.catalog,
                rt.settings.executor,
                rt.settings.feedback,
                rt.health,
                rt.call_slots,
                rt.callable_models,
                rt.budget_ledger,
                rt.settings.budget,
                AnswerStash(
                    rt.store.client,
                    rt.settings.redis.key_prefix,
                    rt.settings.executor.stash_ttl_s,
                ),
                metrics,
            )
        )
    finally:
        _release(claims, mine, self.request.id)
        for r in results:
            metrics.fallbacks(r.model or "none", r.fallbacks)
        metrics.flush(rt.store.client, rt.settings.redis.key_prefix)
    for chunk in chunks(event_ids, rt.settings.feedback.chunk_size):
        app.send_task(APPLY_EVENTS, args=[chunk], queue=FEEDBACK)
    if rt.health is not None:
        cooling = rt.run(_cooling(rt.health, rt.catalog.names))
        cooldowns.publish(rt.store.client, rt.settings.redis.key_prefix, cooling)
    status = Counter(r.status for r in results)
    log.info(
        "execute_batch %s: %d prompts, %d new results (%s), models %s, tokens %d/%d, "
        "cost $%.6f, %.0f ms",
        self.request.id,
        len(query_ids),
        len(results),
        dict(status),
        dict(Counter(r.model for r in results if r.status == "ok")),
        sum(r.input_tokens for r in results),
        sum(r.output_tokens for r in results),
        sum(r.cost_usd for r in results),
        (time.perf_counter() - started) * 1000,
    )
    return len(results)
