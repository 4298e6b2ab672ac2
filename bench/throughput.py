"""Pipeline throughput: Conduit (producer → router → executor → feedback, real Celery workers)
against the fastest bare asyncio client, on the same replay server at the same concurrency.

    python -m bench.throughput --prompts 5000 --latency-ms 200 --concurrency 64 [--json]

1. The replay server starts with a fixed latency per call (no jitter, no faults).
2. Baseline: one asyncio process, aiohttp, ``--concurrency`` long-lived request loops on one
   keep-alive connection pool, request bodies pre-encoded (the fastest client we could write;
   see bench/README.md). It runs before and after Conduit; the ratio uses the faster run.
3. Conduit: router, executor and feedback workers start as subprocesses on their own queues
   (``celery -A conduit_workers worker -Q …``) with the pools of ``ops/worker``: one executor
   process, threads pool, ``executor.concurrency = --concurrency`` calls in flight shared by
   its tasks (``--executor-pool prefork``: ``procs × concurrency/procs``); a warm-up batch
   (not timed) loads the embedder and the clients; then the producer API submits the N prompts
   and the clock stops when every prompt has a result *and* every feedback event has been
   applied to the Redis posteriors.

Prints both throughputs and their ratio, p50/p95 of each prompt's completion time since the
batch was submitted and of its LLM call, each stage's busy time and CPU, and each worker
role's RSS and start-up, and the mean LLM calls in flight on each side (the sum of the call
latencies over the run's wall time: below ``--concurrency`` when slots sit idle between chunks).
Uses Redis db 12 (broker and posteriors, own key prefix) and an
SQLite file of its own (``--database`` for PostgreSQL); cleans up after itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import uuid
from collections.abc import Sequence

from bench.bare_client import baseline
from bench.pipeline_run import ROOT, SAMPLE, conduit_run, prompts
from conduit_workers.settings import Settings
from producers.local import start_replay_server

REDIS_URL = "redis://127.0.0.1:6379/12"


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: Sequence[str] | None = None) -> int:
    d = Settings()
    ap = argparse.ArgumentParser(
        prog="python -m bench.throughput", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--prompts", type=int, default=5000)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--concurrency", type=int, default=64, help="calls in flight, both sides")
    # Defaults: the pools and concurrencies of `ops/worker ROLE` and docker-compose.yml.
    ap.add_argument("--router-procs", type=int, default=2, help="prefork processes per router")
    ap.add_argument("--router-workers", type=int, default=1, help="router workers (scale-out)")
    ap.add_argument("--router-pool", default="prefork")
    ap.add_argument(
        "--executor-procs",
        type=int,
        default=1,
        help="executor processes, each with concurrency/procs call slots: worker processes "
        "with --executor-pool threads (scale-out), else the prefork pool's size",
    )
    ap.add_argument(
        "--executor-threads",
        type=int,
        default=None,
        help="threads pool size per executor process (tasks at once; default: no -c, as "
        "ops/worker: executor.pool_tasks)",
    )
    ap.add_argument("--executor-pool", default="threads", help="threads (ops/worker) or prefork")
    ap.add_argument("--feedback-pool", default="prefork")
    ap.add_argument(
        "--router-chunk",
        type=int,
        default=None,
        help=f"default router.chunk_size ({d.router.chunk_size})",
    )
    ap.add_argument(
        "--executor-chunk",
        type=int,
        default=None,
        help="executor.chunk_size (default 0: half the concurrency, 64 to 256)",
    )
    ap.add_argument(
        "--feedback-chunk",
        type=int,
        default=None,
        help=f"default feedback.chunk_size ({d.feedback.chunk_size})",
    )
    ap.add_argument("--embedder", default="static", help="router embedder (static)")
    ap.add_argument(
        "--http-client",
        default=d.executor.http_client,
        choices=["http1", "direct", "aiohttp", "httpx2"],
        help="http1 or direct (no SDK: Conduit's own HTTP/1.1 client or aiohttp), aiohttp or "
        "httpx2 (the OpenAI SDK over that transport)",
    )
    ap.add_argument("--redis", default=REDIS_URL)
    ap.add_argument("--database", default=None, help="history URL (default: a fresh SQLite file)")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs, database)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="sample the workers with py-spy (implies --keep; see bench/profile.py)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    a = ap.parse_args(argv)
    a.keep = a.keep or a.profile

    run = uuid.uuid4().hex[:8]
    workdir = ROOT / "var" / "bench" / f"throughput-{run}"
    workdir.mkdir(parents=True, exist_ok=True)
    items = prompts(a.prompts, run)
    model = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    replay, base_url = start_replay_server(
        [SAMPLE], workdir / "replay.log", latency_ms=a.latency_ms
    )
    try:
        b1 = baseline(base_url, model, items, a.concurrency)
        c = conduit_run(a, base_url, workdir, items, run)
        b2 = baseline(base_url, model, items, a.concurrency)
    finally:
        replay.stop()
    b = b1 if b1["per_s"] >= b2["per_s"] else b2
    load = os.getloadavg()[0]
    ideal = a.concurrency / (a.latency_ms / 1000) if a.latency_ms else float("inf")
    out = {
        "benchmark": "throughput",
        "prompts": a.prompts,
        "latency_ms": a.latency_ms,
        "concurrency": a.concurrency,
        "ideal_per_s": round(ideal, 1),
        "baseline_per_s": round(b["per_s"], 1),
        "baseline_runs_per_s": [round(b1["per_s"], 1), round(b2["per_s"], 1)],
        "conduit_per_s": round(c["per_s"], 1),
        "conduit_answered_per_s": round(c["answered_per_s"], 1),
        "ratio": round(c["per_s"] / b["per_s"], 3),
        "baseline_p50_done_s": round(pct(b["done_s"], 0.5), 2),
        "baseline_p95_done_s": round(pct(b["done_s"], 0.95), 2),
        "conduit_p50_done_s": round(pct(c["done_s"], 0.5), 2),
        "conduit_p95_done_s": round(pct(c["done_s"], 0.95), 2),
        "baseline_p50_call_ms": round(pct(b["call_ms"], 0.5), 1),
        "baseline_p95_call_ms": round(pct(b["call_ms"], 0.95), 1),
        "conduit_p50_call_ms": round(pct(c["call_ms"], 0.5), 1),
        "conduit_p95_call_ms": round(pct(c["call_ms"], 0.95), 1),
        "baseline_cpu_ms_per_call": round(b["cpu_s"] / a.prompts * 1000, 3),
        # Little's law: mean calls in flight = total call time / wall time.
        "baseline_mean_in_flight": round(sum(b["call_ms"]) / 1000 / b["wall_s"], 1),
        "conduit_mean_in_flight": round(sum(c["call_ms"]) / 1000 / c["drained_s"], 1),
        "baseline_errors": b["errors"],
        "conduit_errors": c["errors"],
        **{
            k: c[k]
            for k in (
                "submit_s",
                "answered_s",
                "drained_s",
                "warmup_s",
                "stages",
                "chunks",
                "executor_concurrency",
            )
        },
        "conduit_cpu_ms_per_prompt": round(
            sum(s["cpu_ms_per_prompt"] for s in c["stages"].values()), 3
        ),
        "http_client": a.http_client,
        "embedder": a.embedder,
        "load_avg_1m": round(load, 2),
        "cores": os.cpu_count(),
        "database": "sqlite" if not a.database else a.database.split(":")[0],
    }
    print(
        f"throughput: {a.prompts} prompts, replay latency {a.latency_ms:.0f} ms, concurrency "
        f"{a.concurrency} (ideal {ideal:.0f}/s); machine load {load:.1f} on "
        f"{os.cpu_count()} cores"
    )
    print(
        f"  bare asyncio (aiohttp):   {out['baseline_per_s']:8.1f} prompts/s  (runs "
        f"{out['baseline_runs_per_s']}), done p50 {out['baseline_p50_done_s']} s / p95 "
        f"{out['baseline_p95_done_s']} s, call p50 {out['baseline_p50_call_ms']} ms / p95 "
        f"{out['baseline_p95_call_ms']} ms, {out['baseline_cpu_ms_per_call']} ms CPU/call, "
        f"{out['baseline_mean_in_flight']} calls in flight"
    )
    print(
        f"  conduit (all 4 stages):   {out['conduit_per_s']:8.1f} prompts/s  (answered at "
        f"{out['conduit_answered_per_s']}/s), done p50 {out['conduit_p50_done_s']} s / p95 "
        f"{out['conduit_p95_done_s']} s, call p50 {out['conduit_p50_call_ms']} ms / p95 "
        f"{out['conduit_p95_call_ms']} ms, {out['conduit_mean_in_flight']} calls in flight"
    )
    print(
        f"  ratio {out['ratio']:.3f}   submit {c['submit_s']} s, all answered "
        f"{c['answered_s']} s, all feedback applied {c['drained_s']} s; errors "
        f"{c['errors']}; chunks {c['chunks']}, executor concurrency "
        f"{c['executor_concurrency']} per executor process, "
        f"HTTP {a.http_client}, embedder {a.embedder}"
    )
    print(
        f"  {'stage':9} {'pool':8} {'procs':>5} {'tasks':>6} {'busy s':>7} {'busy %':>7} "
        f"{'CPU s':>6} {'ms/prompt':>9} {'max/s/proc':>10} {'wait s':>6} {'RSS MB':>7} "
        f"{'max/proc':>8} {'ready s':>7} torch"
    )
    for name, s in c["stages"].items():
        print(
            f"  {name:9} {s['pool']:8} {s['processes']:>5} {s['tasks']:>6} {s['busy_s']:>7} "
            f"{s['busy_share']:>7.1%} {s['cpu_s']:>6} {s['cpu_ms_per_prompt']:>9.3f} "
            f"{s['max_per_s_per_process'] or 0:>10.0f} {s['cpu_wait_s']:>6} {s['rss_mb']:>7} "
            f"{s['rss_max_process_mb']:>8} {s['startup_s']:>7} {s['torch']}"
        )
    print(
        f"  CPU per prompt, all stages: {out['conduit_cpu_ms_per_prompt']:.3f} ms (bare client "
        f"{out['baseline_cpu_ms_per_call']} ms); max/s/proc: the prompts/s one process of the "
        "role sustains on one core at that CPU per prompt (1000 / ms per prompt)"
    )
    if not a.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"  work folder kept: {workdir}")
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
