"""Feedback role: turn feedback events into one atomic, idempotent posterior update per model."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from conduit_workers.celery_app import app
from conduit_workers.domain.learning import learn, update_id_for
from conduit_workers.domain.ports import FloorStore, History, PosteriorStore
from conduit_workers.errors import StoreUnavailable
from conduit_workers.infra.runtime import runtime
from conduit_workers.names import APPLY_EVENTS, FEEDBACK, ROUTE, ROUTE_BATCH, SWEEP
from conduit_workers.routing.quality_floor import rate_events

log = logging.getLogger(__name__)


def handle_apply_events(
    event_ids: Sequence[str],
    history: History,
    store: PosteriorStore,
    dim: int,
    decay: float,
    floors: FloorStore | None = None,
) -> tuple[int, int]:
    """Claim the events, apply them to Redis, mark them applied; (events, updates applied).

    Exactly once: an event is claimed by one update id (derived from the task's event ids, so a
    redelivered task has the same id), and Redis applies each update id at most once. With
    ``floors``, explicit ratings also feed the quality floors their prompts were routed under.
    """
    update_id = update_id_for(event_ids)
    events, contexts = history.claim_feedback(event_ids, update_id)
    if not events:
        return 0, 0
    if floors is not None:
        rate_events(floors, events, update_id, history.floor_marks)
    applied = learn(store, events, contexts, dim, update_id, decay)
    history.mark_applied(update_id)
    return len(events), applied


@app.task(name=APPLY_EVENTS, bind=True, max_retries=None)  # feedback is never dropped
def apply_events(self, event_ids: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Apply feedback events (implicit and explicit) to the posteriors.

    Queue ``feedback``. Payload: feedback event ids. Idempotent by event id and update id.
    Retries with backoff, without limit, while Redis or the database is unavailable: feedback
    is never dropped.
    """
    rt = runtime()
    n, applied = handle_apply_events(
        event_ids,
        rt.history,
        rt.store,
        rt.settings.context_dim,
        rt.settings.router.decay,
        rt.floor_store,
    )
    log.info("apply_events %s: %d events, %d posterior updates", self.request.id, n, applied)
    return n


def handle_sweep(
    history: History,
    store: PosteriorStore,
    dim: int,
    decay: float,
    older_than_s: float,
) -> tuple[list[str], list[str], int]:
    """Find work whose task was lost; (prompts to route again, unclaimed events to apply again,
    events applied here under the update id that had claimed them).

    Sending a prompt or an event again is safe: routing, execution and claims skip what is done.
    Claimed events are applied under their own update id, which Redis applies at most once.
    """
    prompts = history.stale_unanswered(older_than_s)
    stale = history.stale_feedback(older_than_s)
    applied = 0
    for update_id, _ids in stale.items():
        if update_id is None:
            continue
        events, contexts = history.claim_feedback([], update_id)
        if events:
            learn(store, events, contexts, dim, update_id, decay)
            history.mark_applied(update_id)
            applied += len(events)
    return prompts, stale.get(None, []), applied


@app.task(name=SWEEP, bind=True, max_retries=0)
def sweep(self, older_than_s: float | None = None) -> int:  # type: ignore[no-untyped-def]
    """Re-send work lost with the broker: prompts without a result, feedback not applied.

    Queue ``feedback``, sent by beat every ``feedback.sweep_interval_s``, and with
    ``older_than_s=0`` by the worker that notices the broker restarted empty (its epoch gone).
    Payload: that age or none. Looks at work older than ``older_than_s`` (default
    ``feedback.sweep_after_s``) only. Idempotent: whatever it re-sends is skipped where already
    done. No retry: the next sweep comes soon enough.
    """
    from conduit_workers.infra.runtime import chunks

    rt = runtime()
    fb = rt.settings.feedback
    try:
        prompts, events, applied = handle_sweep(
            rt.history,
            rt.store,
            rt.settings.context_dim,
            rt.settings.router.decay,
            fb.sweep_after_s if older_than_s is None else float(older_than_s),
        )
    except StoreUnavailable as exc:
        log.warning("sweep %s skipped: %s", self.request.id, exc)
        return 0
    for chunk in chunks(prompts, rt.settings.router.chunk_size):
        app.send_task(ROUTE_BATCH, args=[chunk], queue=ROUTE)
    for chunk in chunks(events, fb.chunk_size):
        app.send_task(APPLY_EVENTS, args=[chunk], queue=FEEDBACK)
    if prompts or events or applied:
        log.warning(
            "sweep %s: %d prompts without a result and %d feedback events re-sent, "
            "%d claimed events applied (their tasks were lost)",
            self.request.id,
            len(prompts),
            len(events),
            applied,
        )
    return len(prompts) + len(events) + applied
