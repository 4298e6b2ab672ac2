"""A spending ledger in Redis with atomic reserve/settle: a budget that holds under concurrency.

A check-then-spend overshoots under load (every concurrent caller sees the same remainder and
spends it). Here a caller first **reserves** its call's worst-case cost in one Lua script, which
refuses when ``spent + reserved + amount`` would pass the limit, and **settles** after the call,
releasing the reservation and adding what the call actually cost. Every server process shares
the same key, so the limit holds across processes. Amounts are integers of nano-USD (1e-9), so
sums are exact.

Key (``P`` = ``settings.redis.key_prefix``): ``P:budget:<scope>:<period>``, a hash with fields
``spent`` and ``reserved``, expiring ``ttl_s`` after its last reservation. ``scope`` names what
the budget belongs to (``apikey:team-a``), ``period`` when it resets (a UTC day: ``2026-12-02``).

A process that dies between reserve and settle leaves its reservation counted until the period
ends: the ledger errs on the side of spending less, never more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import redis.asyncio as aioredis

NANO_PER_USD = 1_000_000_000

# KEYS[1] the ledger hash. ARGV[1] amount to reserve, ARGV[2] limit (both nano-USD),
# ARGV[3] TTL in seconds. Returns {1 if reserved else 0, spent, reserved (after)}.
RESERVE_LUA = """
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')
local amount = tonumber(ARGV[1])
if spent + reserved + amount > tonumber(ARGV[2]) then
  return {0, spent, reserved}
end
reserved = redis.call('HINCRBY', KEYS[1], 'reserved', amount)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {1, spent, reserved}
"""

# KEYS[1] the ledger hash. ARGV[1] the reservation to release, ARGV[2] the actual cost (both
# nano-USD). Returns the spent total after.
SETTLE_LUA = """
redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(ARGV[1]))
return redis.call('HINCRBY', KEYS[1], 'spent', tonumber(ARGV[2]))
"""


def to_nano(usd: float) -> int:
    """USD as nano-USD, rounded up (a reservation or a spend never counts less than it is)."""
    return max(0, math.ceil(usd * NANO_PER_USD - 1e-6))


def utc_day(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Reservation:
    key: str  # the ledger hash it was made in (settled there, even after the period ends)
    amount_nano: int
    ok: bool
    spent_nano: int
    reserved_nano: int  # after this reservation (when ok)

    @property
    def committed_usd(self) -> float:
        """Spent plus reserved (after this reservation when it was made, before it if not)."""
        return (self.spent_nano + self.reserved_nano) / NANO_PER_USD


class RedisBudgetLedger:
    """Reserve/settle against per-scope, per-period limits (asyncio Redis client)."""

    def __init__(self, client: aioredis.Redis, prefix: str, ttl_s: int = 3 * 24 * 3600) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._reserve = client.register_script(RESERVE_LUA)
        self._settle = client.register_script(SETTLE_LUA)

    def key(self, scope: str, period: str) -> str:
        return f"{self.prefix}:budget:{scope}:{period}"

    async def reserve(
        self, scope: str, period: str, amount_usd: float, limit_usd: float
    ) -> Reservation:
        """Reserve ``amount_usd`` unless spent + reserved + it would pass ``limit_usd``."""
        key = self.key(scope, period)
        amount = to_nano(amount_usd)
        limit = math.floor(limit_usd * NANO_PER_USD + 1e-6)
        ok, spent, reserved = await self._reserve(keys=[key], args=[amount, limit, self.ttl_s])
        return Reservation(key, amount, bool(ok), int(spent), int(reserved))

    async def settle(self, reservation: Reservation, cost_usd: float) -> int:
        """Release a granted reservation and record the actual cost; the spent total (nano)."""
        if not reservation.ok:
            return reservation.spent_nano
        spent = await self._settle(
            keys=[reservation.key], args=[reservation.amount_nano, to_nano(cost_usd)]
        )
        return int(spent)

    async def totals(self, scope: str, period: str) -> tuple[float, float]:
        """(spent, reserved) in USD."""
        spent, reserved = await self.client.hmget(self.key(scope, period), ["spent", "reserved"])
        return int(spent or 0) / NANO_PER_USD, int(reserved or 0) / NANO_PER_USD
