"""Re-ask detection in the router: a near-identical prompt from the same user within the window
gives the earlier answer an implicit reward of 0 (a re-ask feedback event, whose stored kind
and id keep their first name, ``retry``).

Not to be confused with a provider call's backoff (the executor's attempts) or a Celery task's
retries (:mod:`conduit_workers.infra.delivery`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from conduit_workers.domain.ports import History, RecentPrompts
from conduit_workers.domain.reask import find_reasks, text_vector
from conduit_workers.domain.records import QueryRow
from conduit_workers.domain.rewards import REASK, FeedbackEvent
from conduit_workers.errors import StoreUnavailable

log = logging.getLogger(__name__)


def reask_event_id(query_id: str) -> str:
    # The stored id keeps its first form: an event is known by it (idempotency).
    return f"retry:{query_id}"


class ReAskDetector:
    def __init__(
        self,
        recent: RecentPrompts,
        history: History,
        threshold: float,
        send_feedback: Callable[[list[str]], None],
    ) -> None:
        self.recent = recent
        self.history = history
        self.threshold = threshold
        self.send_feedback = send_feedback

    def detect(self, rows: Sequence[QueryRow]) -> list[str]:
        """Record the chunk's prompts per user; store and send a re-ask event for each earlier,
        answered prompt that one of them repeats. Returns the new event ids.

        Never fails routing: with Redis unreachable, detection is skipped for the chunk.
        """
        with_user = [r for r in rows if r.user]
        if not with_user:
            return []
        # What the user asks now: a request's last user turn, not its system prompt and the
        # conversation so far, which one user's requests share (with a shared system prompt of
        # ~120 words, two different questions scored >= 0.9 and marked each other's answers).
        vectors = {r.id: text_vector(r.asked or r.prompt) for r in with_user}
        users = sorted({r.user for r in with_user if r.user})
        try:
            recent = self.recent.recent(users)
            self.recent.remember([(r.user or "", r.id, vectors[r.id]) for r in with_user])
        except StoreUnavailable as exc:
            log.warning("re-ask detection skipped for %d prompts: %s", len(with_user), exc)
            return []
        reasks = []
        for user in users:
            new = [(r.id, vectors[r.id]) for r in with_user if r.user == user]
            reasks += find_reasks(
                new, recent.get(user, []), self.threshold, self.recent.max_prompts
            )
        if not reasks:
            return []
        answered = self.history.answered_by([x.earlier_query_id for x in reasks])
        events = [
            FeedbackEvent(
                reask_event_id(x.earlier_query_id),
                x.earlier_query_id,
                answered[x.earlier_query_id][1],
                REASK,
                0.0,
                1.0,
            )
            for x in reasks
            if x.earlier_query_id in answered
        ]
        fresh = self.history.add_feedback(events) if events else []
        if fresh:
            log.info("re-ask detection: %d prompts repeat an earlier answer", len(fresh))
            self.send_feedback(fresh)
        return fresh
