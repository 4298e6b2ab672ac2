"""The dead-letter queue: tasks that failed for good or kept killing their worker, in Redis.

Keys ``P:dead`` (hash) and ``P:deliveries:<task id>:<retries>`` (redeliveries of a message
keep its task id and retry count), described in :mod:`conduit_workers.infra.keys`.

Payloads are ids only, so a dead letter holds no prompt text; ``error`` is the exception's
class and message, which Conduit never fills with prompt text.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import redis

from conduit_workers.infra.keys import RedisKeys

# A message redelivered after this long counts from 1 again: well above any visibility timeout.
DELIVERY_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class DeadLetter:
    task_id: str
    task: str
    args: list[Any]
    queue: str | None
    reason: str  # "failed" (raised for good) | "redelivered" (more than max_deliveries)
    error: str
    deliveries: int
    retries: int
    at: float  # Unix time


class RedisDeadLetters:
    def __init__(self, client: redis.Redis, prefix: str = "conduit") -> None:
        self.client = client
        self.prefix = prefix
        self.keys = RedisKeys(prefix)

    @property
    def key(self) -> str:
        return self.keys.dead

    def delivery_key(self, task_id: str, retries: int) -> str:
        return self.keys.deliveries(task_id, retries)

    def count_delivery(self, task_id: str, retries: int) -> int:
        """Count one more delivery of this message; returns the count, 1 the first time."""
        key = self.delivery_key(task_id, retries)
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, DELIVERY_TTL_S)
        return int(pipe.execute()[0])

    def put(self, letter: DeadLetter) -> None:
        self.client.hset(self.key, letter.task_id, json.dumps(asdict(letter)))

    def list(self) -> list[DeadLetter]:
        raw = self.client.hgetall(self.key)
        letters = [DeadLetter(**json.loads(v)) for v in raw.values()]
        return sorted(letters, key=lambda d: d.at)

    def get(self, task_id: str) -> DeadLetter | None:
        raw = self.client.hget(self.key, task_id)
        return DeadLetter(**json.loads(raw)) if raw else None

    def query_ids(self) -> set[str]:
        """The prompt ids the dead letters hold (a chunk task's one argument: a list of ids)."""
        out: set[str] = set()
        for letter in self.list():
            if letter.args and isinstance(letter.args[0], list):
                out.update(v for v in letter.args[0] if isinstance(v, str))
        return out

    def remove(self, task_id: str) -> bool:
        return bool(self.client.hdel(self.key, task_id))


def now() -> float:
    return time.time()
