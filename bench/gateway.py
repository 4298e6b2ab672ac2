"""What `conduit serve` adds: latency over calling the replay server directly, and throughput
against a bare client, in the same run on the same replay server.

    python -m bench.gateway [--latency-ms 20] [--requests 2000] [--rates 100 200]
                            [--slow-latency-ms 500] [--sdk-header] [--stream] [--json]

1. The replay server starts with a fixed latency per call; `conduit serve` starts as a
   subprocess (one uvicorn process) over it, with a fresh history database (SQLite file, or
   ``--database`` for PostgreSQL), Redis (``--redis``, a key prefix of its own) and an API key
   with a daily budget (``--no-budget``: without), so each call is authenticated, routed by the
   engine over the Redis posteriors (``model: conduit``), held and settled against the budget,
   recorded in the history and its feedback queued — everything the request path does.
2. The client is the throughput bench's bare one (aiohttp, ``concurrency`` request loops,
   bodies pre-encoded); the same client, at the same concurrency, calls the replay server
   directly ("bare") and through Conduit, after a warm-up of both.
3. The issue's figure: latency at concurrency 64 (p50 and p99 of each side's calls and their
   difference, what Conduit adds) and throughput at concurrency 64 and 256 (requests/s of each
   side and the ratio), closed loop against the ``--latency-ms`` server.

What that figure measures on a small machine: at 20 ms per call, 64 closed loops offer
64 / 0.02 = 3,200 requests/s; the bare client and the replay server already fill the cores
at ~2,000/s, and one server process at ~1.5 ms of CPU per request cannot pass ~650/s on a
whole core, so the 64 requests in flight queue for the server's CPU and the "added latency" is
that queue (Little's law: 64 / requests/s), not the request path's own time. Hence the
decomposition printed beside it:

4. Server CPU per request (user + system of the server's processes over the run, divided by
   the requests) and the capacity it implies, requests/s per core.
5. Open loop at fixed rates (``--rates``, requests/s, each for ``--rate-seconds``), below what
   the machine can serve: requests sent on a fixed schedule whatever the answers, to the
   replay server directly and through Conduit; the added p50/p99 at a load that does not
   saturate the cores (LiteLLM's published +2 ms / 13 ms is of that kind: ~1,170 requests/s
   spread over 4 instances of 4 CPUs, ~75/s per CPU, measured inside the proxy). Latency runs
   from each request's actual send; ``lag`` is how late the client sent (its own loop, on the
   same cores), p99.
6. Closed loop at concurrency 64 against a replay server with an LLM's latency
   (``--slow-latency-ms``, default 500 ms; 0 skips it): the issue's ratio and added latency with
   a provider as slow as real ones, where 64 in flight is ~128 requests/s. The 64 loops start
   spread over one call's latency: started together against a fixed latency they would stay in
   step and arrive as bursts of 64 (real calls' latencies vary), and the added latency would be
   the burst's queue (half of 64 requests' CPU at p50).

Prints tables; ``--json`` one JSON object on the last line. Cleans up its Redis keys, its
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
# Headers every request carries besides its key (``--sdk-header``: the OpenAI SDK's attempt
# number, with which Conduit keeps each call for the SDK's retries).
EXTRA_HEADERS: dict[str, str] = {}
# Fields every request body carries besides model and messages (``--stream``: stream: true).
EXTRA_BODY: dict[str, Any] = {}


async def _run(
    url: str, key: str, model: str, texts: list[str], concurrency: int, stagger_s: float = 0.0
) -> dict[str, Any]:
    bodies = [
        json.dumps(
            {"model": model, "messages": [{"role": "user", "content": t}], **EXTRA_BODY}
        ).encode()
        for t in texts
    ]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    headers.update(EXTRA_HEADERS)
    call_ms: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        it = iter(bodies)
        t0 = time.perf_counter()

        async def loop(k: int) -> None:
            nonlocal errors
            # Loop k starts k/concurrency of the way into stagger_s: loops that start together
            # against a fixed latency stay in step and arrive in bursts of `concurrency`.
            await asyncio.sleep(stagger_s * k / concurrency)
            for body in it:
                started = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    data = await resp.read()
                    if resp.status != 200 or b'"choices"' not in data:
                        errors += 1
                call_ms.append((time.perf_counter() - started) * 1000)

        await asyncio.gather(*(loop(k) for k in range(concurrency)))
        wall = time.perf_counter() - t0
    return {"per_s": len(texts) / wall, "call_ms": call_ms, "errors": errors}


def run(
    url: str, key: str, model: str, texts: list[str], concurrency: int, stagger_s: float = 0.0
) -> dict[str, Any]:
    return asyncio.run(_run(url + "/chat/completions", key, model, texts, concurrency, stagger_s))


async def _open_loop(
    url: str, key: str, model: str, texts: list[str], rate: float
) -> dict[str, Any]:
    """Request i sent at ``i / rate`` s whatever the answers (no request waits for another)."""
    bodies = [
        json.dumps(
            {"model": model, "messages": [{"role": "user", "content": t}], **EXTRA_BODY}
        ).encode()
        for t in texts
    ]
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    headers.update(EXTRA_HEADERS)
    call_ms: list[float] = []
    lag_ms: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(body: bytes, due: float) -> None:
            nonlocal errors
            started = time.perf_counter()
            lag_ms.append((started - due) * 1000)
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    data = await resp.read()
                    if resp.status != 200 or b'"choices"' not in data:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            call_ms.append((time.perf_counter() - started) * 1000)

        tasks = []
        t0 = time.perf_counter()
        for i, body in enumerate(bodies):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(body, due)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    return {"per_s": len(texts) / wall, "call_ms": call_ms, "lag_ms": lag_ms, "errors": errors}


def open_loop(url: str, key: str, model: str, texts: list[str], rate: float) -> dict[str, Any]:
    return asyncio.run(_open_loop(url + "/chat/completions", key, model, texts, rate))


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


def _start_gateway(
    env: dict[str, str], work: Path, log_name: str = "serve.log"
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log = open(work / log_name, "wb")  # noqa: SIM115 - the process owns it until it ends
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
            raise SystemExit(f"conduit serve did not start:\n{(work / log_name).read_text()}")
        time.sleep(0.2)


def _compare(bare: dict[str, Any], conduit: dict[str, Any], cpu_ms: float) -> dict[str, Any]:
    row: dict[str, Any] = {
        "bare_per_s": bare["per_s"],
        "conduit_per_s": conduit["per_s"],
        "ratio": conduit["per_s"] / bare["per_s"],
        "errors": bare["errors"] + conduit["errors"],
        "server_cpu_ms_per_request": cpu_ms,
        # The cores the server used meanwhile: near 1 it was CPU-bound (one process).
        "server_cores": cpu_ms * conduit["per_s"] / 1000,
    }
    for q in (50, 99):
        b, c = _pct(bare["call_ms"], q), _pct(conduit["call_ms"], q)
        row[f"bare_p{q}_ms"], row[f"conduit_p{q}_ms"], row[f"added_p{q}_ms"] = b, c, c - b
    if "lag_ms" in bare:
        row["lag_p99_ms"] = max(_pct(bare["lag_ms"], 99), _pct(conduit["lag_ms"], 99))
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=20.0, help="replay server latency per call")
    ap.add_argument("--requests", type=int, default=2000, help="requests per measured run")
    ap.add_argument(
        "--rates", type=float, nargs="*", default=[100.0, 200.0],
        help="open-loop rates, requests/s (none: skip)",
    )  # fmt: skip
    ap.add_argument("--rate-seconds", type=float, default=10.0, help="length of each open loop")
    ap.add_argument(
        "--slow-latency-ms", type=float, default=500.0,
        help="latency of the second replay server (concurrency 64, closed loop); 0: skip",
    )  # fmt: skip
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    ap.add_argument("--database", default=None, help="history URL (default: a fresh SQLite file)")
    ap.add_argument("--embedder", default=RouterSettings().embedder)
    ap.add_argument("--no-budget", action="store_true", help="an API key without a daily budget")
    ap.add_argument(
        "--sdk-header",
        action="store_true",
        help="send x-stainless-retry-count: 0 as the OpenAI SDK does (each call is then kept "
        "for the SDK's retries, gateway/idempotency.py)",
    )
    ap.add_argument(
        "--stream",
        action="store_true",
        help="stream: true on every request, to the replay server and through Conduit (a "
        "call's latency is then until its last event)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, database)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.sdk_header:
        EXTRA_HEADERS["x-stainless-retry-count"] = "0"
    if a.stream:
        EXTRA_BODY["stream"] = True

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
    slow = slow_gateway = None
    direct_model = "mistralai/Mixtral-8x7B-Instruct-v0.1"  # one of the sample's models
    n = a.requests
    out: dict[str, Any] = {
        "latency_ms": a.latency_ms,
        "requests": n,
        "embedder": a.embedder,
        "budget": not a.no_budget,
        "sdk_header": a.sdk_header,
        "stream": a.stream,
        "load_average_1m": os.getloadavg()[0],
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
            out[f"c{conc}"] = _compare(bare, conduit, (_cpu_s(gateway.pid) - cpu) * 1000 / n)
        for rate in a.rates:
            texts = [t for _, t in prompts(int(rate * a.rate_seconds), f"r{rate:g}")]
            bare = open_loop(replay_url, "x", direct_model, texts, rate)
            cpu = _cpu_s(gateway.pid)
            conduit = open_loop(gw_url, key, "conduit", [t + " ." for t in texts], rate)
            cpu_ms = (_cpu_s(gateway.pid) - cpu) * 1000 / len(texts)
            out[f"rate{rate:g}"] = {"rate": rate, **_compare(bare, conduit, cpu_ms)}
        if a.slow_latency_ms > 0:
            gateway.terminate()
            gateway.wait(30)
            slow, slow_url = start_replay_server(
                [SAMPLE], work / "replay-slow.log", latency_ms=a.slow_latency_ms
            )
            slow_gateway, slow_gw_url = _start_gateway(
                {**env, "CONDUIT_REPLAY_URL": slow_url}, work, "serve-slow.log"
            )
            run(slow_gw_url, key, "conduit", warm[:64], 64)
            m = max(n // 2, 640)  # >= 10 rounds of 64
            texts = [t for _, t in prompts(m, "slow")]
            stagger = a.slow_latency_ms / 1000
            bare = run(slow_url, "x", direct_model, texts, 64, stagger)
            cpu = _cpu_s(slow_gateway.pid)
            conduit = run(slow_gw_url, key, "conduit", [t + " ." for t in texts], 64, stagger)
            out["slow_c64"] = {
                "latency_ms": a.slow_latency_ms,
                "requests": m,
                **_compare(bare, conduit, (_cpu_s(slow_gateway.pid) - cpu) * 1000 / m),
            }
    finally:
        for proc in (gateway, slow_gateway):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(30)
        replay.stop()
        if slow is not None:
            slow.stop()
        client = redis.Redis.from_url(a.redis)
        stale = list(client.scan_iter(f"{PREFIX}:*", count=1000))
        if stale:
            client.delete(*stale)
        client.delete("feedback")  # the feedback tasks nobody consumed in this run
        if a.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    _print(out, a)
    if a.json:
        print(json.dumps(out))


def _print(out: dict[str, Any], a: argparse.Namespace) -> None:
    cpu = [out[f"c{c}"]["server_cpu_ms_per_request"] for c in (64, 256)]
    print(
        f"conduit serve vs the replay server directly ({a.latency_ms:g} ms per call, "
        f"{out['requests']} requests per run, load average {out['load_average_1m']:.1f}; "
        "figures provisional on a shared machine)"
    )
    head = (
        f"{'bare/s':>8} {'conduit/s':>9} {'ratio':>6} {'p50 added':>10} {'p99 added':>10} "
        f"{'cpu/req':>8} {'cores':>5} {'errors':>6}"
    )

    def cells(r: dict[str, Any]) -> str:
        return (
            f"{r['bare_per_s']:>8.0f} {r['conduit_per_s']:>9.0f} {r['ratio']:>6.2f} "
            f"{r['added_p50_ms']:>8.1f}ms {r['added_p99_ms']:>8.1f}ms "
            f"{r['server_cpu_ms_per_request']:>6.2f}ms {r['server_cores']:>5.2f} {r['errors']:>6}"
        )

    print("1. the issue's figure: closed loop (queueing included when the cores are full)")
    print(f"{'concurrency':>11} {head}")
    for conc in (64, 256):
        print(f"{conc:>11} {cells(out[f'c{conc}'])}")
    best = min(cpu)
    print(
        f"2. server CPU per request {cpu[0]:.2f} / {cpu[1]:.2f} ms (concurrency 64 / 256): "
        f"at most ~{1000 / best:,.0f} requests/s per core and server process"
    )
    rates = [k for k in out if k.startswith("rate")]
    if rates:
        print("3. open loop at a fixed rate (added latency below saturation)")
        print(f"{'rate/s':>11} {head} {'lag p99':>8}")
        for k in rates:
            r = out[k]
            print(f"{r['rate']:>11g} {cells(r)} {r['lag_p99_ms']:>6.1f}ms")
    if "slow_c64" in out:
        r = out["slow_c64"]
        print(
            f"4. closed loop, concurrency 64, {r['latency_ms']:g} ms per call "
            f"({r['requests']} requests)"
        )
        print(f"{'concurrency':>11} {head}")
        print(f"{64:>11} {cells(r)}")


if __name__ == "__main__":
    main()
