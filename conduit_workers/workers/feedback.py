"""Feedback role: turn feedback events into one atomic, idempotent posterior update per model."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from conduit_workers.adapters.history import SqlHistory
from conduit_workers.adapters.posterior_store import PosteriorStore
from conduit_workers.celery_app import app
from conduit_workers.engine import learn, update_id_for
from conduit_workers.errors import StoreUnavailable
from conduit_workers.workers.runtime import runtime

log = logging.getLogger(__name__)


def handle_apply_events(
    event_ids: Sequence[str], history: SqlHistory, store: PosteriorStore, dim: int, decay: float
) -> tuple[int, int]:
    """Claim the events, apply them to Redis, mark them applied; (events, updates applied).

    Exactly once: an event is claimed by one update id (derived from the task's event ids, so a
    redelivered task has the same id), and Redis applies each update id at most once.
    """
    update_id = update_id_for(event_ids)
    events, contexts = history.claim_feedback(event_ids, update_id)
    if not events:
        return 0, 0
    applied = learn(store, events, contexts, dim, update_id, decay)
    history.mark_applied(update_id)
    return len(events), applied


@app.task(name="conduit.feedback.apply_events", bind=True, max_retries=None)
def apply_events(self, event_ids: list[str]) -> int:  # type: ignore[no-untyped-def]
    """Apply feedback events (implicit and explicit) to the posteriors.

    Queue ``feedback``. Payload: feedback event ids. Idempotent by event id and update id.
    Retries with backoff, without limit, while Redis or the database is unavailable: feedback
    is never dropped.
    """
    rt = runtime()
    try:
        n, applied = handle_apply_events(event_ids, rt.history, rt.store,
                                         rt.settings.context_dim, rt.settings.router.decay)
    except StoreUnavailable as exc:
        raise self.retry(exc=exc, countdown=min(2 ** min(self.request.retries, 5), 30)) from None
    log.info("apply_events %s: %d events, %d posterior updates", self.request.id, n, applied)
    return n
