"""The batch ledger's Lua scripts: each one atomic step on a budget's keys in Redis.

Keys and amounts are described in :mod:`conduit_workers.execution.batch_ledger`, which runs
these scripts; every script first resolves the ledger's expired reservations.
"""

from __future__ import annotations

# Resolves the batch's expired reservations: charged as spent (``charge``) or released.
# KEYS: ledger hash, reservations hash, expiries zset, settled set, charged hash. Expects
# ``now`` (ms) and ``charge`` in scope.
_RESOLVE_EXPIRED = """
local dead = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
for _, id in ipairs(dead) do
  local held = redis.call('HGET', KEYS[2], id)
  if held then
    redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. held)
    redis.call('HINCRBY', KEYS[1], 'expired', 1)
    redis.call('HDEL', KEYS[2], id)
    if charge then
      redis.call('HINCRBY', KEYS[1], 'spent', held)
      redis.call('HSET', KEYS[5], id, held)
    end
  end
  redis.call('ZREM', KEYS[3], id)
end
"""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""


def _opening(charge_arg: int, recorded_arg: int | None = None) -> str:
    """What every ledger script starts with: the charge flag (ARGV ``charge_arg``), Redis's
    clock, the expired reservations resolved; with ``recorded_arg``, a ledger made anew (Redis
    lost it) takes its limit (ARGV 1) and the spend already recorded (ARGV ``recorded_arg``)."""
    text = f"local charge = ARGV[{charge_arg}] == '1'\n" + _NOW + _RESOLVE_EXPIRED
    if recorded_arg is not None:
        text += (
            "\nif redis.call('HSETNX', KEYS[1], 'limit', ARGV[1]) == 1 and "
            f"tonumber(ARGV[{recorded_arg}]) > 0 then\n"
            f"  redis.call('HSET', KEYS[1], 'spent', ARGV[{recorded_arg}])\nend"
        )
    return text


# KEYS: ledger hash, reservations hash, expiries zset, settled set, charged hash.
# ARGV: limit, reservation id, amount, ttl ms, ledger ttl s, spend already recorded (a ledger
# made anew, e.g. after Redis lost it, starts from it), '1' to charge expired reservations.
# Returns {1 if held, limit, spent, reserved}; a reservation id already held returns 1 again.
RESERVE_LUA = (
    _opening(7, 6)
    + """
local f = redis.call('HMGET', KEYS[1], 'limit', 'spent', 'reserved')
local limit, spent, reserved = tonumber(f[1]), tonumber(f[2] or 0), tonumber(f[3] or 0)
local amount = tonumber(ARGV[3])
local ok = 0
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  ok = 1
elseif redis.call('SISMEMBER', KEYS[4], ARGV[2]) == 0 and limit - spent - reserved >= amount then
  redis.call('HINCRBY', KEYS[1], 'reserved', ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[2])
  reserved = reserved + amount
  ok = 1
end
for i = 1, 5 do redis.call('EXPIRE', KEYS[i], ARGV[5]) end
return {ok, string.format('%.0f', limit), string.format('%.0f', spent),
        string.format('%.0f', reserved)}
"""
)

# KEYS: as RESERVE_LUA. ARGV: reservation id, real cost, ledger ttl s, charge flag.
# Returns 1 when settled now, 0 when it had been settled before (nothing changes).
SETTLE_LUA = (
    _opening(4)
    + """
if redis.call('SADD', KEYS[4], ARGV[1]) == 0 then return 0 end
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then
  redis.call('HINCRBY', KEYS[1], 'reserved', '-' .. held)
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
end
local charged = redis.call('HGET', KEYS[5], ARGV[1])
if charged then
  redis.call('HINCRBY', KEYS[1], 'spent', '-' .. charged)
  redis.call('HDEL', KEYS[5], ARGV[1])
end
local cost = tonumber(ARGV[2])
if cost > 0 then
  redis.call('HINCRBY', KEYS[1], 'spent', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'calls', 1)
end
for i = 1, 5 do redis.call('EXPIRE', KEYS[i], ARGV[3]) end
return 1
"""
)

# One server process's lease on a budget (gateway/budget_lease.py): a reservation whose amount
# the process sets, checked as RESERVE_LUA checks a new hold. In one script: the costs of the
# calls the process settled since its last lease script move to ``spent`` (ARGV 8-11 are
# cumulative per lease, so a script repeated after a lost answer adds nothing twice); the hold
# becomes ``floor`` (the calls in flight, held unchecked: they were granted already), then each
# waiting call's worst case if it fits in ``limit − spent − what the others hold``, then a
# headroom of at most ``keep`` and at most ``share`` of what is left after that, none if that is
# less than ``least`` (one call's worth); the hold's expiry is renewed. A lease hold that is gone
# although the process counted on one (Redis lost it, or it expired and was charged while the
# process lived: the charge is taken back, the real costs follow) is reported in ``lost`` (1
# gone, 2 expired and charged), and the calls in flight are held again.
# KEYS: ledger hash, reservations hash, expiries zset, settled set, charged hash, leases hash.
# ARGV: 1 limit, 2 lease id, 3 the hold the process counts on, 4 floor, 5 keep, 6 share (0-1),
# 7 least, 8 costs settled through the lease so far, 9 of them acknowledged by an earlier
# script, 10 calls settled so far, 11 of them acknowledged, 12 ttl ms, 13 ledger ttl s, 14 spend
# already recorded (a ledger made anew starts from it), 15 charge flag, 16… the waiting calls'
# worst cases. Returns {hold, limit, spent, reserved, lost, then 1 or 0 per waiting call}.
LEASE_LUA = (
    _opening(15, 14)
    + """
local id = ARGV[2]
local done = tonumber(redis.call('HGET', KEYS[6], id) or ARGV[9])
if tonumber(ARGV[8]) > done then
  redis.call('HINCRBY', KEYS[1], 'spent', string.format('%.0f', tonumber(ARGV[8]) - done))
  redis.call('HSET', KEYS[6], id, ARGV[8])
end
local calls_id = id .. ':calls'
local calls_done = tonumber(redis.call('HGET', KEYS[6], calls_id) or ARGV[11])
if tonumber(ARGV[10]) > calls_done then
  redis.call('HINCRBY', KEYS[1], 'calls', string.format('%.0f', tonumber(ARGV[10]) - calls_done))
  redis.call('HSET', KEYS[6], calls_id, ARGV[10])
end
local lost = 0
local cur = redis.call('HGET', KEYS[2], id)
if cur then
  cur = tonumber(cur)
else
  cur = 0
  local charged = redis.call('HGET', KEYS[5], id)
  if charged then
    redis.call('HINCRBY', KEYS[1], 'spent', '-' .. charged)
    redis.call('HDEL', KEYS[5], id)
    lost = 2
  elseif tonumber(ARGV[3]) > 0 then
    lost = 1
  end
end
local f = redis.call('HMGET', KEYS[1], 'limit', 'spent', 'reserved')
local limit, spent, reserved = tonumber(f[1]), tonumber(f[2] or 0), tonumber(f[3] or 0)
local avail = limit - spent - (reserved - cur)
local hold = tonumber(ARGV[4])
local out = {'', '', '', '', lost}
for i = 16, #ARGV do
  local w = tonumber(ARGV[i])
  if hold + w <= avail then
    hold = hold + w
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
local extra = math.min(tonumber(ARGV[5]), math.floor((avail - hold) * tonumber(ARGV[6])))
if extra > 0 and extra >= tonumber(ARGV[7]) then hold = hold + extra end
if hold > 0 then
  redis.call('HSET', KEYS[2], id, string.format('%.0f', hold))
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[12]), id)
else
  redis.call('HDEL', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
end
if hold ~= cur then
  redis.call('HINCRBY', KEYS[1], 'reserved', string.format('%.0f', hold - cur))
end
for i = 1, 6 do redis.call('EXPIRE', KEYS[i], ARGV[13]) end
out[1] = string.format('%.0f', hold)
out[2] = string.format('%.0f', limit)
out[3] = string.format('%.0f', spent)
out[4] = string.format('%.0f', reserved - cur + hold)
return out
"""
)

# KEYS: as RESERVE_LUA. ARGV: charge flag. Resolves expired reservations; returns the fields.
STATE_LUA = (
    _opening(1)
    + """
return redis.call('HMGET', KEYS[1], 'limit', 'spent', 'reserved', 'calls', 'expired')
"""
)
