"""The base of every Conduit task: one retry policy, delivery counting, the dead-letter queue.

Task retries (Celery's, not a provider call's backoff nor a user's re-ask): a task that raises
:class:`~conduit_workers.errors.StoreUnavailable` (Redis or the history database unreachable)
is retried by Celery with exponential backoff and full jitter: the n-th retry waits a random
0 … min(``retry_backoff`` · 2ⁿ, ``retry_backoff_max``) seconds, up to ``max_retries`` times (a
task may set its own factor, cap and limit in its decorator). Every other exception fails the
task for good. A task that must handle the store's absence itself catches it first.

A message that keeps coming back without finishing (it kills its worker, or outlives the
visibility timeout each time) is delivered at most ``broker.max_deliveries`` times; the next
delivery moves it to the dead-letter queue instead of running it. A task that fails for good
(an exception that is not retried, or retries exhausted), or whose payload is not a list of
ids, goes there too. ``conduit dlq list`` shows them, ``conduit dlq redrive`` sends them again.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task
from celery.exceptions import TimeLimitExceeded

from conduit_workers.errors import InputError, StoreUnavailable
from conduit_workers.infra.dead_letters import DeadLetter, now
from conduit_workers.infra.runtime import runtime
from conduit_workers.names import ID_TASKS

log = logging.getLogger(__name__)

MAX_ID_CHARS = 200


def check_ids(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a payload that is not exactly one list of short id strings."""
    if name not in ID_TASKS:
        return
    if kwargs or len(args) != 1 or not isinstance(args[0], list):
        raise InputError(
            f"{name} takes one list of ids; got {len(args)} positional and "
            f"{len(kwargs)} keyword arguments"
        )
    bad = [
        i for i, v in enumerate(args[0]) if not isinstance(v, str) or not 0 < len(v) <= MAX_ID_CHARS
    ]
    if bad:
        raise InputError(
            f"{name}: payload item {bad[0]} is not an id string "
            f"(type {type(args[0][bad[0]]).__name__})"
        )


class ConduitTask(Task):  # type: ignore[misc]
    # The retry policy of every task (see the module's docstring).
    autoretry_for = (StoreUnavailable,)
    retry_backoff = 1  # s, doubled per retry
    retry_backoff_max = 30  # s
    retry_jitter = True
    max_retries = 20

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        req = self.request
        if req.id is not None and not req.called_directly:
            rt = runtime()
            limit = rt.settings.broker.max_deliveries
            try:
                n = rt.dead_letters.count_delivery(req.id, req.retries or 0)
            except redis.RedisError:
                n = 1  # cannot count: run it (at least once beats losing it)
            if n > limit:
                log.error(
                    "task %s %s delivered %d times without finishing: moved to the "
                    "dead-letter queue",
                    self.name,
                    req.id,
                    n - 1,
                )
                self._dead(
                    req.id,
                    list(args),
                    "redelivered",
                    f"delivered {n - 1} times without finishing (limit {limit})",
                    n - 1,
                )
                return None
        check_ids(self.name, args, kwargs)
        return super().__call__(*args, **kwargs)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        if isinstance(exc, TimeLimitExceeded) and not self.app.conf.task_acks_on_timeout:
            return  # requeued, not failed: counted as one more delivery when it comes back
        log.error(
            "task %s %s failed for good (%s): moved to the dead-letter queue",
            self.name,
            task_id,
            type(exc).__name__,
        )
        self._dead(task_id, list(args or []), "failed", f"{type(exc).__name__}: {exc}"[:500], None)

    def _dead(
        self, task_id: str, args: list[Any], reason: str, error: str, deliveries: int | None
    ) -> None:
        info = self.request.delivery_info or {}
        try:
            rt = runtime()
            if deliveries is None:
                key = rt.dead_letters.delivery_key(task_id, self.request.retries or 0)
                deliveries = int(rt.dead_letters.client.get(key) or 1)
            rt.dead_letters.put(
                DeadLetter(
                    task_id=task_id,
                    task=self.name,
                    args=args,
                    queue=info.get("routing_key"),
                    reason=reason,
                    error=error,
                    deliveries=deliveries,
                    retries=self.request.retries or 0,
                    at=now(),
                )
            )
        except redis.RedisError as exc:
            log.error("could not record dead letter %s (%s)", task_id, type(exc).__name__)
