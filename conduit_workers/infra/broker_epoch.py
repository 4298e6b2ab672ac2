"""The broker's epoch: notice that a Redis broker restarted empty, and recover at once.

Keys (:mod:`conduit_workers.infra.keys`), on the broker's Redis: ``P:epoch``, a random id
written (if absent) by the first worker or producer that looks, never expiring; and
``P:epoch:<id>:recovered``, claimed by the one worker that recovers from that epoch's start.

A Redis broker that restarts without its data loses every queued and unacknowledged task, and
this key with them. Each worker checks it every ``broker.epoch_check_s``: when it is gone (or
another id replaced it), the broker was lost, and the first worker to claim the new epoch sends
one sweep over all unfinished work (``conduit.feedback.sweep`` with no age limit): prompts
without a result go back to the routers, unapplied feedback to the feedback workers. Whatever
was not lost is skipped where already done. No beat and no person is needed.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable

import redis

from conduit_workers.infra.keys import RedisKeys

log = logging.getLogger(__name__)
RECOVERED_TTL_S = 7 * 24 * 3600


class BrokerEpoch:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.keys = RedisKeys(prefix)
        self.key = self.keys.epoch

    def ensure(self) -> tuple[str, bool]:
        """The current epoch, and whether this call created it (the broker had none)."""
        new = uuid.uuid4().hex
        if self.client.set(self.key, new, nx=True):
            return new, True
        value = self.client.get(self.key)
        if value is None:  # deleted in between: try again
            return self.ensure()
        return value.decode() if isinstance(value, bytes) else str(value), False

    def claim_recovery(self, epoch: str) -> bool:
        """True for the one caller that recovers from this epoch's start."""
        key = self.keys.epoch_recovered(epoch)
        return bool(self.client.set(key, "1", nx=True, ex=RECOVERED_TTL_S))


def is_redis_url(url: str) -> bool:
    return url.startswith(("redis://", "rediss://", "unix://"))


def watch(
    epoch: BrokerEpoch,
    interval_s: float,
    recover: Callable[[str], None],
    stop: threading.Event | None = None,
) -> threading.Thread:
    """Check the epoch every ``interval_s`` in a daemon thread; call ``recover(epoch)`` (once
    per epoch, over all workers) when the broker lost it. A worker that finds no epoch when it
    starts creates it and recovers too: the broker may have been lost while no worker ran (a
    producer writes the epoch before it sends anything, so a fresh broker has one)."""
    stop = stop or threading.Event()

    def run() -> None:
        seen: str | None = None
        pending = False  # a recovery claimed here that has not been sent yet
        while not stop.is_set():
            try:
                current, created = epoch.ensure()
                lost = created or (seen is not None and current != seen)
                if lost and epoch.claim_recovery(current):
                    log.warning(
                        "the broker restarted empty (epoch %s is gone, now %s): re-sending "
                        "every unfinished prompt and feedback event",
                        seen or "unknown",
                        current,
                    )
                    pending = True
                seen = current
                if pending:
                    recover(current)
                    pending = False
            except redis.RedisError as exc:
                log.debug("broker epoch check failed: %s", exc)
            except Exception:  # noqa: BLE001 - the watcher must outlive a failed recovery send
                log.exception("broker epoch recovery failed; retrying at the next check")
            stop.wait(interval_s)

    thread = threading.Thread(target=run, name="broker-epoch", daemon=True)
    thread.start()
    return thread
