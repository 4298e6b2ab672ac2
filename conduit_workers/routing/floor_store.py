"""The quality floor's shared state: counters per floor stream, in one Redis hash each.

Keys ``P:floor:<stream>`` (hash) and ``P:floor-applied:<update id>`` (string), described in
:mod:`conduit_workers.infra.keys`. Where each prompt's rating counts (its floor mark) is kept
with its decision in the history database (``decisions.floor_mark``).

A stream is one floor held together, one per floor value: ``default:<floor>``, for the prompts
that take the settings' floor and for those whose batch or constraints set that value (the
engine can count a chunk in a stream of its own, ``floor_stream``, which no task uses today).
Every router and feedback process changes it through one Lua script (atomic), which applies an
update id at most once, so a redelivered task counts once.
"""

from __future__ import annotations

import math

import redis

from conduit_workers.domain.floor import LOG_LAMBDA, OFFLINE_STREAM
from conduit_workers.errors import StoreUnavailable
from conduit_workers.infra.keys import RedisKeys

# KEYS[1] = P:floor:<stream> (hash, read and written); KEYS[2] = P:floor-applied:<id> (string)
# ARGV[1] = ttl of the marker (s); ARGV[2], ARGV[3] = bounds of log_lambda; ARGV[4] = its
# value before any change; then pairs (field, increment).
# Returns 1 if applied, 0 if this update id had been applied already.
APPLY_LUA = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', tonumber(ARGV[1])) then
  return 0
end
for i = 5, #ARGV, 2 do
  local field = ARGV[i]
  local inc = tonumber(ARGV[i + 1])
  if field == 'log_lambda' then
    local old = tonumber(redis.call('HGET', KEYS[1], field) or ARGV[4])
    local new = math.max(tonumber(ARGV[2]), math.min(tonumber(ARGV[3]), old + inc))
    redis.call('HSET', KEYS[1], field, string.format('%.17g', new))
  else
    redis.call('HINCRBYFLOAT', KEYS[1], field, inc)
  end
end
return 1
"""


class RedisFloorStore:
    """:class:`FloorStore` on Redis hashes (see the module docstring for the keys)."""

    def __init__(
        self, client: redis.Redis, prefix: str = "conduit", applied_ttl_s: int = 604_800
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.applied_ttl_s = applied_ttl_s
        self._apply = client.register_script(APPLY_LUA)

    def key(self, stream: str) -> str:
        return RedisKeys(self.prefix).floor(stream)

    def applied_key(self, update_id: str) -> str:
        return RedisKeys(self.prefix).floor_applied(update_id)

    def read(self, stream: str) -> dict[str, float]:
        try:
            raw = self.client.hgetall(self.key(stream))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis floor read failed: {type(exc).__name__}") from exc
        return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}

    def apply(
        self,
        stream: str,
        update_id: str,
        increments: dict[str, float],
        log_lambda_bounds: tuple[float, float] = (-math.inf, math.inf),
        log_lambda_init: float = 0.0,
    ) -> bool:
        if not increments:
            return False
        args: list[str | int] = [
            self.applied_ttl_s,
            _num(log_lambda_bounds[0]),
            _num(log_lambda_bounds[1]),
            _num(log_lambda_init),
        ]
        for field, inc in sorted(increments.items()):
            args.extend((field, repr(float(inc))))
        try:
            return bool(
                self._apply(keys=[self.key(stream), self.applied_key(update_id)], args=args)
            )
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis floor update failed: {type(exc).__name__}") from exc

    def reset(self, stream: str) -> None:
        self.client.delete(self.key(stream))

    def streams(self) -> list[str]:
        """Every floor stream with counters (the warm starts' offline weights left out)."""
        head = self.key("")
        try:
            keys = self.client.scan_iter(match=head + "*", count=1000)
            found = {(k.decode() if isinstance(k, bytes) else k)[len(head) :] for k in keys}
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis floor scan failed: {type(exc).__name__}") from exc
        return sorted(found - {OFFLINE_STREAM})


def _num(v: float) -> str:
    return repr(max(-1e300, min(1e300, v)))


class InMemoryFloorStore:
    """A :class:`~conduit_workers.domain.ports.FloorStore` in a dict, for unit tests, the
    benchmark and in-process routing."""

    def __init__(self) -> None:
        self._streams: dict[str, dict[str, float]] = {}
        self._applied: set[str] = set()

    def read(self, stream: str) -> dict[str, float]:
        return dict(self._streams.get(stream, {}))

    def streams(self) -> list[str]:
        return sorted(set(self._streams) - {OFFLINE_STREAM})

    def apply(
        self,
        stream: str,
        update_id: str,
        increments: dict[str, float],
        log_lambda_bounds: tuple[float, float] = (-math.inf, math.inf),
        log_lambda_init: float = 0.0,
    ) -> bool:
        if not increments or update_id in self._applied:
            return False
        self._applied.add(update_id)
        fields = self._streams.setdefault(stream, {})
        for field, inc in increments.items():
            if field == LOG_LAMBDA:
                old = fields.get(field, log_lambda_init)
                lo, hi = log_lambda_bounds
                fields[field] = max(lo, min(hi, old + inc))
            else:
                fields[field] = fields.get(field, 0.0) + inc
        return True
