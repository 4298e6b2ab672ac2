"""What `conduit serve` adds: latency over calling the replay server directly, and throughput
against a bare client, in the same run on the same replay server.

    python -m bench.gateway [--latency-ms 20] [--requests 2000] [--json]

1. The replay server starts with a fixed latency per call; `conduit serve` starts as a
   subprocess (one uvicorn process) over it, with a fresh history database (SQLite file, or
   ``--database`` for PostgreSQL), Redis (``--redis``, a key prefix of its own) and an API key
   with a daily budget (``--no-budget``: without), so each call is authenticated, routed by the
   engine over the Redis posteriors (``model: conduit``), held and settled against the budget,
   recorded in the history and its feedback queued — everything the request path does.
2. The client is the throughput bench's bare one (aiohttp, ``concurrency`` request loops,
   bodies pre-encoded); the same client, at the same concurrency, calls the replay server
   directly ("bare") and through Conduit, after a warm-up of both.
3. Latency at concurrency 64: p50 and p99 of each side's calls and their difference (what
   Conduit adds). Throughput at concurrency 64 and 256: requests/s of each side and the ratio.

Prints a table; ``--json`` one JSON object on the last line. Cleans up its Redis keys, its
broker queue and its work folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import redis

from bench.pipeline_run import SAMPLE, prompts
from conduit_workers.settings import RouterSettings
from producers.local import free_port, start_replay_server

PREFIX = "conduit-bench-gw"


async def _run(
    url: str, key: str, model: str, texts: list[str], concurrency: int
) -> dict[str, Any]:
    bodies = [
        json.dumps({"model": model, "messages": [{"role": "user", "content": t}]}).encode()
        for t in texts
    ]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    call_ms: list[float] = []
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
                call_ms.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(loop() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"per_s": len(texts) / wall, "call_ms": call_ms, "errors": errors}


def run(url: str, key: str, model: str, texts: list[str], concurrency: int) -> dict[str, Any]:
    return asyncio.run(_run(url + "/chat/completions", key, model, texts, concurrency))


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process and its live children (uvicorn's worker
    processes under ``CONDUIT_GATEWAY__WORKERS``) have used so far (Linux)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def _start_gateway(env: dict[str, str], work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(work / "serve.log", "wb")  # noqa: SIM115 - the process owns it until it ends
    proc = subprocess.Popen(
        [sys.executable, "-m", "producers.cli", "serve", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600  # a first run may build the static embedder
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
                if r.status == 200:
                    return proc, base + "/v1"
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"conduit serve did not start:\n{(work / 'serve.log').read_text()}")
        time.sleep(0.2)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=20.0, help="replay server latency per call")
    ap.add_argument("--requests", type=int, default=2000, help="requests per measured run")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    ap.add_argument("--database", default=None, help="history URL (default: a fresh SQLite file)")
    ap.add_argument("--embedder", default=RouterSettings().embedder)
    ap.add_argument("--no-budget", action="store_true", help="an API key without a daily budget")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, database)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    db = a.database or f"sqlite:///{work / 'history.db'}"
    replay, replay_url = start_replay_server([SAMPLE], work / "replay.log", latency_ms=a.latency_ms)
    env = dict(
        os.environ,
        CONDUIT_REDIS__URL=a.redis,
        CONDUIT_REDIS__KEY_PREFIX=PREFIX,
        CONDUIT_DATABASE__URL=db,
        CONDUIT_REPLAY_URL=replay_url,
        CONDUIT_ROUTER__EMBEDDER=a.embedder,
        CONDUIT_LOG_LEVEL="WARNING",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    os.environ["CONDUIT_DATABASE__URL"] = db
    from conduit_workers.history.history_gateway import GatewayHistory

    history = GatewayHistory(db)
    history.create_schema()
    _, key = history.create_key("bench", budget_usd_per_day=None if a.no_budget else 1e6)
    history.dispose()
    gateway, gw_url = _start_gateway(env, work)
    direct_model = "mistralai/Mixtral-8x7B-Instruct-v0.1"  # one of the sample's models
    n = a.requests
    out: dict[str, Any] = {
        "latency_ms": a.latency_ms,
        "requests": n,
        "embedder": a.embedder,
        "budget": not a.no_budget,
        "provisional": True,
    }
    try:
        warm = [t for _, t in prompts(400, "warm")]
        run(replay_url, "x", direct_model, warm, 32)
        run(gw_url, key, "conduit", warm, 32)
        for conc in (64, 256):
            texts = [t for _, t in prompts(n, f"c{conc}")]
            bare = run(replay_url, "x", direct_model, texts, conc)
            cpu = _cpu_s(gateway.pid)
            conduit = run(gw_url, key, "conduit", [t + " ." for t in texts], conc)
            cpu_ms = (_cpu_s(gateway.pid) - cpu) * 1000 / n
            row = {
                "bare_per_s": bare["per_s"],
                "conduit_per_s": conduit["per_s"],
                "ratio": conduit["per_s"] / bare["per_s"],
                "errors": bare["errors"] + conduit["errors"],
                "server_cpu_ms_per_request": cpu_ms,
            }
            for q in (50, 99):
                b, c = _pct(bare["call_ms"], q), _pct(conduit["call_ms"], q)
                row[f"bare_p{q}_ms"], row[f"conduit_p{q}_ms"], row[f"added_p{q}_ms"] = b, c, c - b
            out[f"c{conc}"] = row
    finally:
        gateway.terminate()
        gateway.wait(30)
        replay.stop()
        client = redis.Redis.from_url(a.redis)
        stale = list(client.scan_iter(f"{PREFIX}:*", count=1000))
        if stale:
            client.delete(*stale)
        client.delete("feedback")  # the feedback tasks nobody consumed in this run
        if a.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"conduit serve vs the replay server directly ({a.latency_ms:g} ms per call, "
        f"{n} requests per run; figures provisional on a shared machine)"
    )
    print(
        f"{'concurrency':>11} {'bare/s':>8} {'conduit/s':>9} {'ratio':>6} "
        f"{'p50 added':>10} {'p99 added':>10} {'cpu/req':>8} {'errors':>6}"
    )
    for conc in (64, 256):
        r = out[f"c{conc}"]
        print(
            f"{conc:>11} {r['bare_per_s']:>8.0f} {r['conduit_per_s']:>9.0f} {r['ratio']:>6.2f} "
            f"{r['added_p50_ms']:>8.1f}ms {r['added_p99_ms']:>8.1f}ms "
            f"{r['server_cpu_ms_per_request']:>6.2f}ms {r['errors']:>6}"
        )
    if a.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
