"""Posterior sufficient statistics in Redis hashes: the key schema and scripts, in one place.

Keys (``P`` is ``settings.redis.key_prefix``, ``conduit`` by default):

=================================  =======  ==================================================
key                                type     content
=================================  =======  ==================================================
``P:posterior:<model>``            hash     ``xx:i:j`` (upper triangle of Σ w x xᵀ), ``xr:i``
                                            (Σ w r x), counters ``n r rr calls errors
                                            latency_ms in_tokens out_tokens cost_usd``,
                                            ``version`` (+1 per applied update), ``dim``
``P:applied:<update id>``          string   marks an applied update; expires after
                                            ``redis.applied_ttl_s``
=================================  =======  ==================================================

Every change goes through one Lua script (atomic); it applies an update id at most once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import redis

from conduit_workers.domain.bandit import ArmStats
from conduit_workers.errors import StoreUnavailable

# KEYS[1] = P:posterior:<model>   (hash, read and written)
# KEYS[2] = P:applied:<update id> (string, written)
# ARGV[1] = ttl of the applied marker (s); ARGV[2] = decay per unit of evidence weight (1 = none)
# ARGV[3] = context dimension; ARGV[4..] = field, delta, field, delta, …
# Returns 1 if applied, 0 if this update id had been applied already.
APPLY_LUA = """
local dim = redis.call('HGET', KEYS[1], 'dim')
if dim and dim ~= ARGV[3] then
  return redis.error_reply('posterior dim is ' .. dim .. ', update has ' .. ARGV[3] ..
    '; reset the posteriors (conduit posteriors --reset) after changing the context size')
end
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[1])) then
  return 0
end
local decay = tonumber(ARGV[2])
if decay < 1 then
  local weight = 0
  for i = 4, #ARGV, 2 do
    if ARGV[i] == 'n' then weight = tonumber(ARGV[i + 1]) end
  end
  if weight > 0 then
    local factor = decay ^ weight
    local current = redis.call('HGETALL', KEYS[1])
    for i = 1, #current, 2 do
      local f = current[i]
      if f ~= 'version' and f ~= 'dim' then
        redis.call('HSET', KEYS[1], f, string.format('%.17g', tonumber(current[i + 1]) * factor))
      end
    end
  end
end
for i = 4, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'dim', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'version', 1)
return 1
"""


@dataclass(frozen=True)
class Update:
    """A change to one model's statistics, applied at most once under ``update_id``."""

    update_id: str
    model: str
    delta: ArmStats


class PosteriorStore(Protocol):
    def read(self, models: list[str], dim: int) -> dict[str, tuple[int, ArmStats]]: ...

    def apply(self, updates: list[Update], decay: float = 1.0) -> int: ...

    def reset(self, models: list[str]) -> None: ...


class RedisPosteriorStore:
    """:class:`PosteriorStore` on Redis hashes; reads are cached per model version."""

    def __init__(self, client: redis.Redis, prefix: str = "conduit", applied_ttl_s: int = 604_800) -> None:
        self.client = client
        self.prefix = prefix
        self.applied_ttl_s = applied_ttl_s
        self._apply = client.register_script(APPLY_LUA)
        self._cache: dict[str, tuple[int, ArmStats]] = {}

    @classmethod
    def from_url(cls, url: str, prefix: str = "conduit", applied_ttl_s: int = 604_800,
                 socket_timeout_s: float = 5.0) -> RedisPosteriorStore:
        client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
        )
        return cls(client, prefix, applied_ttl_s)

    def posterior_key(self, model: str) -> str:
        return f"{self.prefix}:posterior:{model}"

    def applied_key(self, update_id: str) -> str:
        return f"{self.prefix}:applied:{update_id}"

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
                m for m, v in zip(models, versions, strict=True)
                if m not in self._cache or self._cache[m][0] != v or self._cache[m][1].dim != dim
            ]
            if stale:
                pipe = self.client.pipeline(transaction=False)
                for m in stale:
                    pipe.hgetall(self.posterior_key(m))
                for m, raw in zip(stale, pipe.execute(), strict=True):
                    fields = {k.decode(): float(v) for k, v in raw.items()}
                    version = int(fields.pop("version", 0))
                    stored_dim = int(fields.pop("dim", dim))
                    stats = ArmStats.from_fields(fields, dim) if stored_dim == dim else ArmStats.zeros(dim)
                    self._cache[m] = (version, stats)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis posterior read failed: {type(exc).__name__}") from exc
        return {m: self._cache[m] for m in models}

    def apply(self, updates: list[Update], decay: float = 1.0) -> int:
        """Apply each update atomically, at most once per update id; returns how many applied."""
        if not updates:
            return 0
        try:
            pipe = self.client.pipeline(transaction=False)
            for u in updates:
                args: list[str | float | int] = [self.applied_ttl_s, repr(float(decay)), u.delta.dim]
                for field, value in u.delta.to_fields().items():
                    if value != 0.0:
                        args.extend((field, repr(value)))
                self._apply(
                    keys=[self.posterior_key(u.model), self.applied_key(u.update_id)],
                    args=args,
                    client=pipe,
                )
            return sum(int(r) for r in pipe.execute())
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis posterior update failed: {type(exc).__name__}") from exc

    def reset(self, models: list[str]) -> None:
        """Forget all evidence of these models (their applied markers stay until they expire)."""
        self.client.delete(*[self.posterior_key(m) for m in models])
        self._cache.clear()


class InMemoryPosteriorStore:
    """A :class:`PosteriorStore` in a dict, for unit tests and in-process routing."""

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
            weight = u.delta.counters.get("n", 0.0)
            if decay < 1.0 and weight > 0:
                f = decay**weight
                stats.xx *= f
                stats.xr *= f
                stats.counters = {k: v * f for k, v in stats.counters.items()}
            stats.merge(u.delta)
            self._stats[u.model] = (version + 1, stats)
            applied += 1
        return applied

    def reset(self, models: list[str]) -> None:
        for m in models:
            self._stats.pop(m, None)
