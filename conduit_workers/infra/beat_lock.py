"""One beat per deployment: a lock in Redis that a second beat waits for.

Key ``P:beat:lock`` (:mod:`conduit_workers.infra.keys`), a string holding the id of the
beat that owns it, expiring after ``beat.lock_ttl_s`` unless renewed. The owner renews it every
third of that; a beat that finds it taken waits (checking every second) and takes over once the
owner is gone (stopped: released at once; killed: after the TTL). An owner whose lock vanished
(Redis restarted empty) takes it again; one that finds another beat holding it (Redis was
unreachable for longer than the TTL) stops sending and exits, for its supervisor to restart it.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import redis

from conduit_workers.infra.keys import RedisKeys

log = logging.getLogger(__name__)

# KEYS[1] = P:beat:lock; ARGV[1] = owner id, ARGV[2] = ttl (ms). Renews if still the owner,
# takes it again if nobody holds it (Redis restarted empty); 0 if another beat holds it.
RENEW_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# KEYS[1] = P:beat:lock; ARGV[1] = owner id. Deletes it if still the owner.
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class BeatLock:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: float) -> None:
        self.client = client
        self.key = RedisKeys(prefix).beat_lock
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renew = client.register_script(RENEW_LUA)
        self._release = client.register_script(RELEASE_LUA)

    def try_acquire(self) -> bool:
        return bool(self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        return bool(self._renew(keys=[self.key], args=[self.owner, self.ttl_ms]))

    def release(self) -> None:
        try:
            self._release(keys=[self.key], args=[self.owner])
        except redis.RedisError:
            pass  # it expires by itself

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        return value.decode() if isinstance(value, bytes) else None

    def wait_and_hold(self, on_lost: Callable[[], None], poll_s: float = 1.0) -> None:
        """Block until this beat owns the lock, then keep renewing it in a daemon thread;
        ``on_lost`` is called if it is ever lost."""
        warned = False
        while True:
            try:
                if self.try_acquire():
                    break
                if not warned:
                    log.warning(
                        "another beat holds the beat lock (%s): this one waits and takes over "
                        "when it stops (run exactly one beat per deployment)",
                        self.holder(),
                    )
                    warned = True
            except redis.RedisError as exc:
                log.warning("beat lock: Redis unreachable (%s); retrying", type(exc).__name__)
            time.sleep(poll_s)
        log.info("beat lock %s held by %s", self.key, self.owner)
        atexit.register(self.release)
        threading.Thread(target=self._keep, args=(on_lost,), name="beat-lock", daemon=True).start()

    def _keep(self, on_lost: Callable[[], None]) -> None:
        period_s = self.ttl_ms / 3000
        while True:
            time.sleep(period_s)
            try:
                if self.renew():
                    continue
            except redis.RedisError as exc:
                # Not lost yet: nobody else can take it before it expires.
                log.warning("beat lock: renewal failed (%s); retrying", type(exc).__name__)
                continue
            log.error("beat lock lost (now held by %s): this beat stops", self.holder())
            on_lost()
            return
