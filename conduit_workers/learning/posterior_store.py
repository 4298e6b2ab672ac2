"""Posterior sufficient statistics in Redis hashes (keys ``P:posterior:<model>`` and
``P:applied:<update id>``, described in :mod:`conduit_workers.infra.keys`).

Every change goes through one Lua script (atomic); it applies an update id at most once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import redis

from conduit_workers.domain.bandit import COUNTERS, ArmStats
from conduit_workers.domain.learning import decay_factor, decayed_sum, decayed_values
from conduit_workers.domain.records import Update
from conduit_workers.errors import StoreUnavailable
from conduit_workers.infra.keys import RedisKeys

# KEYS[1] = P:posterior:<model>   (hash, read and written)
# KEYS[2] = P:applied:<update id> (string, written)
# ARGV[1] = ttl of the applied marker (s); ARGV[2] = context dimension;
# ARGV[3] = the change, packed like ``stats``; ARGV[4] = factor applied to the old evidence
# first (decay ^ weight of the change; 1 = no forgetting); ARGV[5] = how many leading numbers
# are evidence that decays (Σ w x xᵀ, Σ w r x, n, r, rr): the counters after them (calls,
# errors, latency, tokens, cost) are exact sums, never decayed
# Returns 1 if applied, 0 if this update id had been applied already.
# This script is the reference of the decay arithmetic: domain.learning.decayed_sum (the
# in-memory store's) computes the same numbers, and the contract tests hold it to them.
# The statistics are one packed string, not one hash field per number: an update adds ~250
# numbers, and one HINCRBYFLOAT per number made Redis the bottleneck of the feedback stage
# (~1 ms per update); unpack, add and pack cost a few µs per update instead.
APPLY_LUA = """
local dim = redis.call('HGET', KEYS[1], 'dim')
if dim and dim ~= ARGV[2] then
  return redis.error_reply('posterior dim is ' .. dim .. ', update has ' .. ARGV[2] ..
    '; reset the posteriors (conduit posteriors --reset) after changing the context size')
end
local old = redis.call('HGET', KEYS[1], 'stats')
if not old and redis.call('HEXISTS', KEYS[1], 'n') == 1 then
  return redis.error_reply('posteriors in the old one-field-per-number layout; reset them ' ..
    '(conduit posteriors --reset) and rebuild them from the history database')
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[1])) then
  return 0
end
local delta = ARGV[3]
local factor = tonumber(ARGV[4])
local ndecay = tonumber(ARGV[5])
if old and #old ~= #delta then
  return redis.error_reply('stored statistics have ' .. #old .. ' bytes, update has ' .. #delta)
end
local parts = {}
local count = #delta / 8
local i = 0
while i < count do
  local k = math.min(128, count - i)  -- unpack() is bounded by Lua's C stack
  local fmt = '<' .. string.rep('d', k)
  local d = {struct.unpack(fmt, delta, i * 8 + 1)}
  if old then
    local o = {struct.unpack(fmt, old, i * 8 + 1)}
    for j = 1, k do
      if i + j <= ndecay then d[j] = o[j] * factor + d[j] else d[j] = o[j] + d[j] end
    end
  end
  parts[#parts + 1] = struct.pack(fmt, unpack(d, 1, k))
  i = i + k
end
redis.call('HSET', KEYS[1], 'stats', table.concat(parts), 'dim', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""


_TRIU: dict[int, tuple[Any, Any]] = {}


def _triu(dim: int) -> tuple[Any, Any]:
    if dim not in _TRIU:
        _TRIU[dim] = np.triu_indices(dim)
    return _TRIU[dim]


def pack(stats: ArmStats) -> bytes:
    """The stored form of statistics: float64 little-endian, xx upper triangle, xr, counters."""
    counters = np.array([stats.counters.get(k, 0.0) for k in COUNTERS])
    return np.concatenate((stats.xx[_triu(stats.dim)], stats.xr, counters)).astype("<f8").tobytes()


def unpack(raw: bytes, dim: int) -> ArmStats:
    values = np.frombuffer(raw, dtype="<f8").astype(np.float64)
    iu = _triu(dim)
    k = len(iu[0])
    if len(values) != k + dim + len(COUNTERS):
        raise ValueError(
            f"stored statistics hold {len(values)} numbers, dim {dim} needs "
            f"{k + dim + len(COUNTERS)}"
        )
    stats = ArmStats.zeros(dim)
    stats.xx[iu] = values[:k]
    stats.xx.T[iu] = values[:k]
    stats.xr[:] = values[k : k + dim]
    stats.counters = dict(zip(COUNTERS, values[k + dim :].tolist(), strict=True))
    return stats


class RedisPosteriorStore:
    """:class:`~conduit_workers.domain.ports.PosteriorStore` on Redis hashes; reads are cached
    per model version."""

    def __init__(
        self, client: redis.Redis, prefix: str = "conduit", applied_ttl_s: int = 604_800
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.applied_ttl_s = applied_ttl_s
        self.keys = RedisKeys(prefix)
        self._apply = client.register_script(APPLY_LUA)
        self._cache: dict[str, tuple[int, ArmStats]] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str = "conduit",
        applied_ttl_s: int = 604_800,
        socket_timeout_s: float = 5.0,
    ) -> RedisPosteriorStore:
        client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )
        return cls(client, prefix, applied_ttl_s)

    def posterior_key(self, model: str) -> str:
        return self.keys.posterior(model)

    def applied_key(self, update_id: str) -> str:
        return self.keys.applied(update_id)

    def read(self, models: list[str], dim: int) -> dict[str, tuple[int, ArmStats]]:
        """Statistics and version per model; a model never updated reads as zeros, version 0.

        One round trip for the versions; a second only for the models that changed.
        """
        try:
            pipe = self.client.pipeline(transaction=False)
            for m in models:
                pipe.hget(self.posterior_key(m), "version")
            versions = [int(v) if v is not None else 0 for v in pipe.execute()]
            stale = [
                m
                for m, v in zip(models, versions, strict=True)
                if m not in self._cache or self._cache[m][0] != v or self._cache[m][1].dim != dim
            ]
            if stale:
                pipe = self.client.pipeline(transaction=False)
                for m in stale:
                    pipe.hmget(self.posterior_key(m), "stats", "dim", "version")
                for m, (raw, stored_dim, version) in zip(stale, pipe.execute(), strict=True):
                    ok = raw is not None and int(stored_dim) == dim
                    stats = unpack(raw, dim) if ok else ArmStats.zeros(dim)
                    self._cache[m] = (int(version or 0), stats)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis posterior read failed: {type(exc).__name__}") from exc
        return {m: self._cache[m] for m in models}

    def apply(self, updates: list[Update], decay: float = 1.0) -> int:
        """Apply each update atomically, at most once per update id; returns how many applied."""
        if not updates:
            return 0
        calls = [
            (
                self.posterior_key(u.model),
                self.applied_key(u.update_id),
                self.applied_ttl_s,
                u.delta.dim,
                pack(u.delta),
                repr(decay_factor(decay, u.delta)),
                decayed_values(u.delta.dim),
            )
            for u in updates
        ]
        try:
            for attempt in (1, 2):
                # EVALSHA straight into the pipeline: a Script object would make every
                # execute() ask SCRIPT EXISTS first, one more round trip per update batch.
                pipe = self.client.pipeline(transaction=False)
                for c in calls:
                    pipe.evalsha(self._apply.sha, 2, *c)
                try:
                    return sum(int(r) for r in pipe.execute())
                except redis.exceptions.NoScriptError:
                    # Redis restarted or flushed its scripts; the updates that did run are
                    # marked applied, so running the batch again applies each once.
                    if attempt == 2:
                        raise
                    self._apply.sha = self.client.script_load(APPLY_LUA)
            raise AssertionError("unreachable")
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis posterior update failed: {type(exc).__name__}") from exc

    def reset(self, models: list[str]) -> None:
        """Forget all evidence of these models (their applied markers stay until they expire)."""
        self.client.delete(*[self.posterior_key(m) for m in models])
        self._cache.clear()

    def replace(self, model: str, version: int, stats: ArmStats, update_ids: list[str]) -> None:
        """Overwrite one model's statistics (a rebuild), in one MULTI/EXEC, and mark
        ``update_ids`` applied so that a redelivered update of the rebuilt history changes
        nothing."""
        try:
            pipe = self.client.pipeline(transaction=True)
            key = self.posterior_key(model)
            pipe.delete(key)
            pipe.hset(
                key, mapping={"stats": pack(stats), "dim": str(stats.dim), "version": str(version)}
            )
            for uid in update_ids:
                pipe.set(self.applied_key(uid), "1", ex=self.applied_ttl_s)
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis posterior rebuild failed: {type(exc).__name__}") from exc
        self._cache.pop(model, None)


class InMemoryPosteriorStore:
    """A :class:`~conduit_workers.domain.ports.PosteriorStore` in a dict, for unit tests and
    in-process routing."""

    def __init__(self) -> None:
        self._stats: dict[str, tuple[int, ArmStats]] = {}
        self._applied: set[str] = set()

    def read(self, models: list[str], dim: int) -> dict[str, tuple[int, ArmStats]]:
        out = {}
        for m in models:
            version, stats = self._stats.get(m, (0, ArmStats.zeros(dim)))
            copy = ArmStats.zeros(dim)
            copy.merge(stats)
            out[m] = (version, copy)
        return out

    def apply(self, updates: list[Update], decay: float = 1.0) -> int:
        applied = 0
        for u in updates:
            if u.update_id in self._applied:
                continue
            self._applied.add(u.update_id)
            version, stats = self._stats.get(u.model, (0, ArmStats.zeros(u.delta.dim)))
            stats = decayed_sum(stats, u.delta, decay_factor(decay, u.delta))
            self._stats[u.model] = (version + 1, stats)
            applied += 1
        return applied

    def reset(self, models: list[str]) -> None:
        for m in models:
            self._stats.pop(m, None)
