"""Which execute task owns a prompt's call: one Redis string per prompt, set to the owning
task's id.

At-least-once delivery can put two execute tasks on the same prompts at once (a router killed
after sending its execute tasks is redelivered and sends them again). Results are stored once
whatever happens, but both tasks would pay for the call. A task therefore calls only the prompts
it claims: free ones, or ones its own id already holds (a redelivery of the same message keeps
its task id, so a task whose worker died takes its prompts back at once). Claims are released
when the task ends and expire after ``executor.claim_ttl_s`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis

from conduit_workers.infra.keys import RedisKeys

# KEYS = P:exec:<query id> per prompt; ARGV[1] = owner (task id), ARGV[2] = ttl (s).
# Returns the 1-based positions of the keys now owned by ARGV[1].
CLAIM_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if not holder or holder == ARGV[1] then
    redis.call('SET', key, ARGV[1], 'EX', tonumber(ARGV[2]))
    out[#out + 1] = i
  end
end
return out
"""

# KEYS = P:exec:<query id> per prompt; ARGV[1] = owner. Deletes the keys ARGV[1] holds.
RELEASE_LUA = """
local n = 0
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
    n = n + 1
  end
end
return n
"""


class ExecClaims:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int) -> None:
        self.client = client
        self.keys = RedisKeys(prefix)
        self.ttl_s = ttl_s
        self._claim = client.register_script(CLAIM_LUA)
        self._release = client.register_script(RELEASE_LUA)

    def claim(self, query_ids: Sequence[str], owner: str) -> list[str]:
        """The prompts of ``query_ids`` that ``owner`` may call (one script call)."""
        if not query_ids:
            return []
        keys = [self.keys.exec_claim(q) for q in query_ids]
        got = self._claim(keys=keys, args=[owner, self.ttl_s])
        return [query_ids[int(i) - 1] for i in got]

    def release(self, query_ids: Sequence[str], owner: str) -> int:
        if not query_ids:
            return 0
        keys = [self.keys.exec_claim(q) for q in query_ids]
        return int(self._release(keys=keys, args=[owner]))
