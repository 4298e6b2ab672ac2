"""Cooled-down models, published by executor processes so `conduit status` can show them.

Key ``P:cooldown:<model>`` (:mod:`conduit_workers.infra.keys`), a string holding the
executor that cooled it down, expiring when the cooldown ends. Each executor process keeps its
own circuit breaker; this is only its published view, never read back for routing.
"""

from __future__ import annotations

import os
import socket

import redis

from conduit_workers.infra.keys import RedisKeys


def publish(client: redis.Redis, prefix: str, remaining_s: dict[str, float]) -> None:
    """Mark each model cooling down for its remaining seconds (best effort: no error raised)."""
    if not remaining_s:
        return
    who = f"{socket.gethostname()}:{os.getpid()}"
    keys = RedisKeys(prefix)
    try:
        pipe = client.pipeline(transaction=False)
        for model, seconds in remaining_s.items():
            pipe.set(keys.cooldown(model), who, px=max(1, int(seconds * 1000)))
        pipe.execute()
    except redis.RedisError:
        pass  # status is informational; the breaker itself works without Redis


def read(client: redis.Redis, prefix: str) -> dict[str, float]:
    """Model → seconds of cooldown left, as published by any executor."""
    rk = RedisKeys(prefix)
    keys = list(client.scan_iter(match=rk.cooldown_pattern, count=500))
    if not keys:
        return {}
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.pttl(k)
    out = {}
    for k, ttl in zip(keys, pipe.execute(), strict=True):
        if ttl and ttl > 0:
            out[rk.cooldown_model(k.decode())] = ttl / 1000
    return out
