"""The history rows of answered calls, written behind the response: a thread gathers what the
requests hand it and writes up to ``batch`` calls per transaction (one PostgreSQL transaction
per call would cap a server near 900 calls/s), then sends their implicit feedback events to the
feedback queue by task name (``conduit.feedback.apply_events``), ids only.

The writer waits ``interval_s`` between writes (unless ``batch`` calls wait), so that under load
it makes one transaction per interval, not one per call or two, and sends the written events
every ``send_interval_s`` (or ``events_batch`` at once): one feedback task, not one per write. A
call's rows appear within about ``interval_s`` plus one transaction of its answer; ``flush``
waits for everything handed over so far (feedback on a call just answered, shutdown), and
makes the writer go at once. While the database is unreachable the rows wait here and are
written when it answers; a process killed in that window loses them (the answer was given and
billed in Redis, but is not in the history). Events written but not sent when a process dies
are in the history database, and the feedback sweep sends them.

``before_write`` runs in the writer's thread each time it wakes, before it writes: the HTTP
API's floor decision counts (``gateway/routing_state.py``) go to Redis there, off the requests'
path, and what is left when the server stops.

With a re-ask detector (``CONDUIT_RETRY__ENABLED``, on by default), the written calls of a
``user`` go through it as the router's prompts do (``learning/reask.py``): a user asking again
what they asked within ``CONDUIT_RETRY__WINDOW_S`` (their last user turns alike) gives the
earlier answer a reward of 0. Here, behind the answers, in the writer's thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from conduit_workers.domain.records import QueryRow
from conduit_workers.errors import StoreUnavailable
from conduit_workers.history.history_gateway import CallRecord, GatewayHistory
from conduit_workers.learning.reask import ReAskDetector

log = logging.getLogger(__name__)


class HistoryRecorder:
    def __init__(
        self,
        history: GatewayHistory,
        send_events: Callable[[list[str]], None],
        *,
        batch: int = 512,
        interval_s: float = 0.05,
        send_interval_s: float = 0.25,
        events_batch: int = 256,
        reasks: ReAskDetector | None = None,
        before_write: Callable[[], None] | None = None,
    ) -> None:
        self.history = history
        self.reasks = reasks
        self.before_write = before_write
        self.send_events = send_events
        self.batch = batch
        self.interval_s = interval_s
        self.send_interval_s = send_interval_s
        self.events_batch = events_batch
        self._events: list[str] = []  # written, not sent yet (the writer thread's alone)
        self._last_send = float("-inf")
        self._queue: list[CallRecord] = []
        self._cond = threading.Condition()
        self._added = 0
        self._written = 0
        self._closed = False
        self._urgent = False
        self._thread = threading.Thread(target=self._run, name="conduit-history", daemon=True)
        self._thread.start()

    def add(self, record: CallRecord) -> None:
        with self._cond:
            self._queue.append(record)
            self._added += 1
            if len(self._queue) == 1 or len(self._queue) >= self.batch:
                self._cond.notify_all()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every call handed over so far is written; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._added
            while self._written < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._urgent = True  # the writer goes now, not at its next interval
                self._cond.notify_all()
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout_s: float = 30.0) -> None:
        self.flush(timeout_s)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout_s)

    def _wait_for_work(self, last_write: float) -> None:
        """Until a batch is full, a flush or close asks, ``interval_s`` has passed since the
        last write with something to write (so that the writes under load are one per
        interval, not one per call: each costs a transaction), or events wait to be sent and
        their time has come."""
        while not (self._closed or self._urgent or len(self._queue) >= self.batch):
            now = time.monotonic()
            if not self._queue:
                if not self._events:
                    self._cond.wait()  # add() wakes it
                    continue
                left = self._last_send + self.send_interval_s - now
                if left <= 0:
                    return
                self._cond.wait(left)
                continue
            left = last_write + self.interval_s - now
            if left <= 0:
                return
            self._cond.wait(left)

    def _run(self) -> None:
        last_write = float("-inf")
        while True:
            with self._cond:
                self._wait_for_work(last_write)
                closing = self._closed and not self._queue
                hurry = self._urgent or self._closed
                self._urgent = False
                todo = self._queue[: self.batch]
            if self.before_write is not None:
                self._before_write()
            if todo:
                last_write = time.monotonic()
                if not self._write(todo):
                    continue
            if self._events and (
                hurry
                or len(self._events) >= self.events_batch
                or time.monotonic() >= self._last_send + self.send_interval_s
            ):
                self._send()
            if closing:
                return

    def _before_write(self) -> None:
        assert self.before_write is not None
        try:
            self.before_write()
        except Exception as exc:  # noqa: BLE001 - the rows must still be written
            log.warning("history: before writing, %s", type(exc).__name__)

    def _write(self, todo: list[CallRecord]) -> bool:
        """Write the calls; False when the database is unreachable (they wait for the next
        try)."""
        try:
            event_ids = self.history.record_calls(todo)
        except StoreUnavailable as exc:
            log.warning("history: %d answered calls wait to be written (%s)", len(todo), exc)
            time.sleep(1.0)
            return False
        except Exception as exc:  # noqa: BLE001 - a bad batch must not stop the writer
            log.error("history: %d answered calls not written (%s)", len(todo), type(exc).__name__)
            event_ids = []
        self._events.extend(event_ids)
        self._detect_reasks(todo)
        with self._cond:
            del self._queue[: len(todo)]
            self._written += len(todo)
            self._cond.notify_all()
        return True

    def _detect_reasks(self, written: list[CallRecord]) -> None:
        """Re-asks among the written calls of a user (their events are stored and sent by the
        detector); never fails the writer."""
        if self.reasks is None:
            return
        rows = [QueryRow(r.query_id, r.prompt, {}, {}, r.user, r.asked) for r in written if r.user]
        if not rows:
            return
        try:
            self.reasks.detect(rows)
        except Exception as exc:  # noqa: BLE001 - a learning signal, not the answer
            log.warning("re-ask detection skipped for %d calls (%s)", len(rows), type(exc).__name__)

    def _send(self) -> None:
        ids, self._events = self._events, []
        self._last_send = time.monotonic()
        try:
            self.send_events(ids)
        except Exception as exc:  # noqa: BLE001 - the feedback sweep re-sends them
            log.warning(
                "feedback queue: %d events not sent (%s); the sweep sends them later",
                len(ids),
                type(exc).__name__,
            )
