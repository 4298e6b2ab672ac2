"""The throughput bench's baseline: the fastest bare asyncio client we could write (one process,
aiohttp, ``concurrency`` long-lived request loops on one keep-alive connection pool, request
bodies pre-encoded), against the same replay server as Conduit.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp


async def _bare(
    base_url: str, model: str, items: list[tuple[str, str]], concurrency: int
) -> dict[str, Any]:
    bodies = [
        json.dumps({"model": model, "messages": [{"role": "user", "content": p}]}).encode()
        for _, p in items
    ]
    url = base_url + "/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "Bearer not-needed"}
    call_ms: list[float] = []
    done_s: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        it = iter(bodies)
        t0 = time.perf_counter()

        async def loop() -> None:
            nonlocal errors
            for body in it:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    data = await resp.read()
                    if resp.status != 200 or b'"choices"' not in data:
                        errors += 1
                end = time.perf_counter()
                call_ms.append((end - started) * 1000)
                done_s.append(end - t0)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "per_s": len(items) / wall,
        "call_ms": call_ms,
        "done_s": done_s,
        "errors": errors,
    }


def baseline(
    base_url: str, model: str, items: list[tuple[str, str]], concurrency: int
) -> dict[str, Any]:
    cpu = time.process_time()
    out = asyncio.run(_bare(base_url, model, items, concurrency))
    out["cpu_s"] = time.process_time() - cpu
    return out
