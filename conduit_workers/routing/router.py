"""Router role: embed a chunk of prompts, Thompson-sample a model for each, record decisions."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from conduit_workers.celery_app import app
from conduit_workers.domain.constraints import parse_constraints
from conduit_workers.domain.ports import BudgetLedger, FeatureCache, History
from conduit_workers.execution.budget_pacing import chunk_shares
from conduit_workers.infra.runtime import Runtime, chunks, runtime
from conduit_workers.learning.reask import ReAskDetector
from conduit_workers.learning.recent_prompts import RedisRecentPrompts
from conduit_workers.names import APPLY_EVENTS, EXECUTE, EXECUTE_BATCH, FEEDBACK, ROUTE_BATCH
from conduit_workers.routing.engine import RoutingEngine

log = logging.getLogger(__name__)


def handle_route_batch(
    query_ids: Sequence[str],
    history: History,
    engine: RoutingEngine,
    reasks: ReAskDetector | None = None,
    features: FeatureCache | None = None,
    ledger: BudgetLedger | None = None,
) -> int:
    """Decide a model for each prompt of the chunk that has no decision yet; return how many.

    With a ``reasks`` detector, prompts repeating a user's recent prompt are reported first.
    With a ``features`` cache, prompts seen before (by text hash) are not embedded again.
    With the budgets' ``ledger``, the prompts of a budgeted batch are routed within their
    share of what the batch has left (:mod:`conduit_workers.execution.budget_pacing`).
    """
    rows = history.load_queries(query_ids)
    if not rows:
        return 0
    if reasks is not None:
        reasks.detect(rows)
    constraints = [
        parse_constraints(r.constraints).merged_over(parse_constraints(r.batch_constraints))
        for r in rows
    ]
    texts = [r.prompt for r in rows]
    contexts, analyses = (
        features.featurize(texts, engine.featurize, engine.dim)
        if features is not None
        else (None, None)
    )
    ids = [r.id for r in rows]
    # No budgets query for a chunk none of whose prompts a budget may pay for (the usual one).
    budgeted = any(r.budgeted for r in rows)
    shares = chunk_shares(ids, history, ledger if budgeted else None)
    if len(shares) == 1 and shares[0].allowance_usd is None:
        decisions = engine.decide(ids, texts, constraints, contexts, analyses)
    else:
        decisions = []
        for share in shares:
            pos = share.positions
            decisions += engine.decide(
                [ids[i] for i in pos],
                [texts[i] for i in pos],
                [constraints[i] for i in pos],
                contexts[pos] if contexts is not None else None,
                [analyses[i] for i in pos] if analyses is not None else None,
                allowance_usd=share.allowance_usd,
                spend_allowance=share.buys_quality,
            )
    history.insert_decisions(decisions)
    return len(decisions)


def _reask_detector(rt: Runtime) -> ReAskDetector | None:
    cfg = rt.settings.retry
    if not cfg.enabled:
        return None

    def send(event_ids: list[str]) -> None:
        app.send_task(APPLY_EVENTS, args=[event_ids], queue=FEEDBACK)

    recent = RedisRecentPrompts(
        rt.store.client, rt.settings.redis.key_prefix, cfg.window_s, cfg.window_prompts
    )
    return ReAskDetector(recent, rt.history, cfg.threshold, send)


@app.task(name=ROUTE_BATCH, bind=True)
def route_batch(self, query_ids: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Route a chunk of prompts.

    Queue ``route``. Payload: prompt ids only (the text is read from the history database, so
    it never shows in Flower). Idempotent: prompts already decided are skipped, and the
    execute tasks it sends skip prompts already answered. Retries with backoff while Redis
    or the database is unavailable.
    """
    rt = runtime()
    started = time.perf_counter()
    decided = handle_route_batch(
        query_ids,
        rt.history,
        rt.engine,
        _reask_detector(rt),
        rt.feature_cache,
        rt.budget_ledger,
    )
    for chunk in chunks(list(query_ids), rt.settings.executor.prompts_per_task):
        app.send_task(EXECUTE_BATCH, args=[chunk], queue=EXECUTE)
    log.info(
        "route_batch %s: %d prompts, %d decided in %.0f ms",
        self.request.id,
        len(query_ids),
        decided,
        (time.perf_counter() - started) * 1000,
    )
    return decided


__all__ = ["handle_route_batch", "route_batch"]
