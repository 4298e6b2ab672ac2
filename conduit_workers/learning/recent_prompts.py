"""Recent prompts per user in Redis, for re-ask detection.

Keys ``P:recent:<user>`` (sorted set) and ``P:recentvec:<user>`` (hash), described in
:mod:`conduit_workers.infra.keys`. Older entries are trimmed on each write, and so are all
but the user's ``max_prompts`` most recent ones: a user's window is a fixed size (at most
:func:`max_bytes_per_user` bytes of Redis memory), so each prompt is compared with at most
``max_prompts`` others whatever the user's batch.
"""

from __future__ import annotations

import time

import numpy as np
import redis

from conduit_workers.domain.bandit import Array
from conduit_workers.domain.reask import VECTOR_DIM
from conduit_workers.errors import StoreUnavailable
from conduit_workers.infra.keys import RedisKeys

# KEYS[1] = P:recent:<user> (sorted set), KEYS[2] = P:recentvec:<user> (hash), both written.
# ARGV = now, cutoff, ttl (s), query id, vector bytes, max prompts. Adds the prompt, drops
# entries older than the cutoff and all but the newest max prompts from both keys, and renews
# their expiry.
REMEMBER_LUA = """
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
if #old > 0 then
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('HDEL', KEYS[2], unpack(old))
end
local extra = redis.call('ZRANGE', KEYS[1], 0, -(tonumber(ARGV[6]) + 1))
if #extra > 0 then
  redis.call('ZREM', KEYS[1], unpack(extra))
  redis.call('HDEL', KEYS[2], unpack(extra))
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return #old + #extra
"""
# Redis memory of one entry: its float32 vector, its id twice (~32 bytes) and the sorted set's
# and hash's own overheads (measured 2.6 KB an entry with 512 dimensions on Redis 7: the
# allocator rounds the vector up).
_ENTRY_OVERHEAD_BYTES = 640


def max_bytes_per_user(max_prompts: int) -> int:
    """Upper bound of the Redis memory of one user's window."""
    return max_prompts * (VECTOR_DIM * 4 + _ENTRY_OVERHEAD_BYTES) + 1024


class RedisRecentPrompts:
    def __init__(
        self, client: redis.Redis, prefix: str, window_s: float, max_prompts: int = 64
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.keys = RedisKeys(prefix)
        self.window_s = window_s
        self.max_prompts = max(1, max_prompts)
        self._remember = client.register_script(REMEMBER_LUA)

    def _keys(self, user: str) -> tuple[str, str]:
        return self.keys.recent(user), self.keys.recent_vectors(user)

    def recent(
        self, users: list[str], now: float | None = None
    ) -> dict[str, list[tuple[str, Array]]]:
        """Each user's prompts of the last ``window_s`` seconds (the newest ``max_prompts``),
        oldest first."""
        now = time.time() if now is None else now
        try:
            pipe = self.client.pipeline(transaction=False)
            for u in users:
                pipe.zrangebyscore(self._keys(u)[0], now - self.window_s, "+inf")
            ids_per_user = pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            for u, ids in zip(users, ids_per_user, strict=True):
                pipe.hmget(self._keys(u)[1], ids) if ids else pipe.echo(b"")
            vecs_per_user = pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(
                f"Redis recent-prompt read failed: {type(exc).__name__}"
            ) from exc
        out: dict[str, list[tuple[str, Array]]] = {}
        for u, ids, vecs in zip(users, ids_per_user, vecs_per_user, strict=True):
            out[u] = [
                (i.decode(), np.frombuffer(v, dtype=np.float32).astype(np.float64))
                for i, v in zip(ids, vecs or [], strict=False)
                if v
            ]
        return out

    def remember(self, entries: list[tuple[str, str, Array]], now: float | None = None) -> None:
        """Record (user, query id, vector) entries and trim what fell out of the window."""
        now = time.time() if now is None else now
        ttl = max(1, int(self.window_s) + 1)
        try:
            pipe = self.client.pipeline(transaction=False)
            for user, qid, vec in entries:
                self._remember(
                    keys=list(self._keys(user)),
                    args=[
                        now,
                        now - self.window_s,
                        ttl,
                        qid,
                        vec.astype(np.float32).tobytes(),
                        self.max_prompts,
                    ],
                    client=pipe,
                )
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(
                f"Redis recent-prompt write failed: {type(exc).__name__}"
            ) from exc


class InMemoryRecentPrompts:
    """:class:`~conduit_workers.domain.ports.RecentPrompts` in a dict (unit tests): the same
    window (``window_s``) and bound (the newest ``max_prompts`` per user) as the Redis one."""

    def __init__(self, window_s: float, max_prompts: int = 64) -> None:
        self.window_s = window_s
        self.max_prompts = max(1, max_prompts)
        self._users: dict[str, list[tuple[float, str, Array]]] = {}

    def recent(
        self, users: list[str], now: float | None = None
    ) -> dict[str, list[tuple[str, Array]]]:
        now = time.time() if now is None else now
        return {
            u: [(q, v) for t, q, v in self._users.get(u, []) if t >= now - self.window_s]
            for u in users
        }

    def remember(self, entries: list[tuple[str, str, Array]], now: float | None = None) -> None:
        now = time.time() if now is None else now
        for user, qid, vec in entries:
            kept = [
                e for e in self._users.get(user, []) if e[1] != qid and e[0] >= now - self.window_s
            ]
            kept.append((now, qid, vec.astype(np.float32).astype(np.float64)))
            self._users[user] = kept[-self.max_prompts :]
