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
import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import redis
import sqlalchemy as sa

from conduit_workers.adapters import history_schema as t
from conduit_workers.domain.items import PromptItem
from conduit_workers.settings import Settings
from producers.api import ConduitClient
from producers.local import Proc, start_replay_server, start_worker, wait_worker_ready

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "conduit_workers" / "data" / "mmlu_sample.jsonl"
REDIS_URL = "redis://127.0.0.1:6379/12"
CLK = os.sysconf("SC_CLK_TCK")


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def prompts(n: int, run: str) -> list[tuple[str, str]]:
    """N distinct (id, prompt) pairs: the shipped MMLU prompts, each made unique by a suffix
    (so neither the idempotency keys nor a feature cache can collapse them)."""
    texts = [json.loads(line)["prompt"] for line in SAMPLE.read_text().splitlines() if line.strip()]
    return [(f"{run}-{i}", f"{texts[i % len(texts)]}\n(request {i})") for i in range(n)]


# -- baseline ------------------------------------------------------------------------------


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


# -- processes -----------------------------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """The pid and its descendants (Celery prefork children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                kids = Path(f"/proc/{p}/task/{tid}/children").read_text().split()
                todo.extend(int(k) for k in kids)
        except OSError:
            pass
    return out


def cpu_s(pid: int) -> float:
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / CLK


def wait_s(pid: int) -> float:
    """Seconds the process tree spent runnable but waiting for a CPU (``/proc/PID/schedstat``):
    the share of a stage's time lost to other processes on the machine."""
    total = 0
    for p in _tree(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                total += int(Path(f"/proc/{p}/task/{tid}/schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def rss_mb(pid: int) -> list[float]:
    out = []
    for p in _tree(pid):
        try:
            m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text())
            out.append(int(m.group(1)) / 1024 if m else 0.0)
        except OSError:
            pass
    return out


def torch_loaded(pid: int) -> bool:
    for p in _tree(pid):
        try:
            if "libtorch" in Path(f"/proc/{p}/maps").read_text():
                return True
        except OSError:
            pass
    return False


@dataclass
class Role:
    name: str
    queues: list[str]
    pool: str
    procs: int
    proc: Proc | None = None
    ready_s: float = 0.0


TASK_DONE = re.compile(
    r"Task (conduit\.\w+\.\w+)\[[^\]]+\] (?:succeeded|retry|raised).*? in "
    r"([0-9.]+)s"
)


def busy_from_log(path: Path, since_bytes: int) -> dict[str, tuple[int, float]]:
    """Tasks and seconds spent in them per task name, from the worker's log after an offset."""
    text = path.read_bytes()[since_bytes:].decode(errors="replace")
    out: dict[str, tuple[int, float]] = {}
    for name, secs in TASK_DONE.findall(text):
        n, s = out.get(name, (0, 0.0))
        out[name] = (n + 1, s + float(secs))
    return out


# -- the Conduit run -----------------------------------------------------------------------


def _count(engine: sa.Engine, run: str) -> tuple[int, int, int]:
    """(results, feedback events, unapplied feedback events) of this run's prompts."""
    like = f"{run}%"
    with engine.connect() as conn:
        res = (
            conn.scalar(
                sa.select(sa.func.count())
                .select_from(t.results)
                .where(t.results.c.query_id.like(like))
            )
            or 0
        )
        fb = (
            conn.scalar(
                sa.select(sa.func.count())
                .select_from(t.feedback)
                .where(t.feedback.c.query_id.like(like))
            )
            or 0
        )
        unapplied = (
            conn.scalar(
                sa.select(sa.func.count())
                .select_from(t.feedback)
                .where(t.feedback.c.query_id.like(like), t.feedback.c.applied_at.is_(None))
            )
            or 0
        )
    return int(res), int(fb), int(unapplied)


def _wait_all(
    engine: sa.Engine, run: str, n: int, t0: float, timeout_s: float, poll_s: float = 0.1
) -> tuple[float, float]:
    """Seconds from t0 until every prompt is answered, and until all feedback is applied."""
    answered = None
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        res, fb, unapplied = _count(engine, run)
        now = time.perf_counter() - t0
        if answered is None and res >= n:
            answered = now
        if answered is not None and fb > 0 and unapplied == 0:
            return answered, now
        time.sleep(poll_s)
    raise TimeoutError(
        f"run {run}: not finished after {timeout_s:.0f} s "
        f"(results {res}/{n}, feedback unapplied {unapplied})"
    )


def conduit_run(
    a: argparse.Namespace, base_url: str, workdir: Path, items: list[tuple[str, str]], run: str
) -> dict[str, Any]:
    prefix = f"bench-tp-{run}"
    db_url = a.database or f"sqlite:///{workdir / 'history.db'}"
    schema = None
    if db_url.startswith("postgresql"):
        # A schema of this run's own, dropped at the end.
        schema = f"bench_tp_{run}"
        admin = sa.create_engine(db_url)
        with admin.begin() as conn:
            conn.execute(sa.text(f'create schema "{schema}"'))
        admin.dispose()
        sep = "&" if "?" in db_url else "?"
        db_url = f"{db_url}{sep}options={quote(f'-csearch_path={schema}')}"
    # prefork: one task per pool process, each with its share of the calls; threads: one
    # process whose pool threads run tasks at once over its shared call slots.
    exec_conc = (
        a.concurrency if a.executor_pool == "threads" else max(1, a.concurrency // a.executor_procs)
    )
    env = dict(
        os.environ,
        CONDUIT_REDIS__URL=a.redis,
        CONDUIT_REDIS__KEY_PREFIX=prefix,
        CONDUIT_DATABASE__URL=db_url,
        CONDUIT_REPLAY_URL=base_url,
        CONDUIT_ROUTER__EMBEDDER=a.embedder,
        CONDUIT_ROUTER__SEED="1",
        CONDUIT_EXECUTOR__CONCURRENCY=str(exec_conc),
        CONDUIT_EXECUTOR__HTTP_CLIENT=a.http_client,
    )
    if a.router_chunk:
        env["CONDUIT_ROUTER__CHUNK_SIZE"] = str(a.router_chunk)
    if a.executor_chunk:
        env["CONDUIT_EXECUTOR__CHUNK_SIZE"] = str(a.executor_chunk)
    if a.feedback_chunk:
        env["CONDUIT_FEEDBACK__CHUNK_SIZE"] = str(a.feedback_chunk)
    saved = {k: os.environ.get(k) for k in env if k.startswith("CONDUIT_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("CONDUIT_")})
    settings = Settings()
    roles = [
        Role("router", ["route"], a.router_pool, a.router_procs),
        Role("executor", ["execute"], a.executor_pool, a.executor_procs),
        Role("feedback", ["feedback"], a.feedback_pool, 1),
    ]
    client = ConduitClient(settings)
    engine = sa.create_engine(db_url)
    rclient = redis.Redis.from_url(a.redis)
    try:
        _ = client.history  # create the schema before the workers race to
        for r in roles:
            started = time.perf_counter()
            r.proc = start_worker(
                r.queues,
                env,
                workdir / f"{r.name}.log",
                concurrency=r.procs,
                name=f"bench-{r.name}",
                pool=r.pool,
            )
            r.ready_s = -started
        for r in roles:
            assert r.proc is not None
            wait_worker_ready(r.proc, timeout_s=120)
            r.ready_s += time.perf_counter()
        # Warm-up: loads the embedder (router), HTTP clients (executor), DB pools; not timed.
        warm = [
            PromptItem(prompt=p, key=f"{run}w-{i}", external_id=f"w-{i}", line=i + 1)
            for i, (_, p) in enumerate(
                prompts(max(2 * settings.executor.chunk_size, 128), run + "w")
            )
        ]
        w0 = time.perf_counter()
        client.submit_items(warm, tag="bench-warmup")
        _wait_all(engine, f"{run}w", len(warm), w0, a.timeout)
        warm_s = time.perf_counter() - w0
        # Query keys carry the run id, so that the counts find this run's rows.
        items_ = [
            PromptItem(prompt=p, key=i, external_id=i, line=k + 1) for k, (i, p) in enumerate(items)
        ]
        offsets = {r.name: (workdir / f"{r.name}.log").stat().st_size for r in roles}
        cpu0 = {r.name: cpu_s(r.proc.popen.pid) for r in roles if r.proc}
        wait0 = {r.name: wait_s(r.proc.popen.pid) for r in roles if r.proc}
        spies = []
        if a.profile:
            # py-spy samples every worker process (and its pool children) during the timed run.
            for r in roles:
                assert r.proc is not None
                spies.append(
                    subprocess.Popen(
                        [
                            shutil.which("py-spy") or "py-spy",
                            "record",
                            "--pid",
                            str(r.proc.popen.pid),
                            "--subprocesses",
                            "--rate",
                            "100",
                            "--format",
                            "raw",
                            "--nonblocking",
                            "--output",
                            str(workdir / f"profile-{r.name}.txt"),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            time.sleep(1.0)
        t0 = time.perf_counter()
        t0_wall = time.time()
        sub = client.submit_items(items_, tag="bench-throughput")
        submit_s = time.perf_counter() - t0
        answered_s, drained_s = _wait_all(engine, run + "-", len(items_), t0, a.timeout)
        cpu1 = {r.name: cpu_s(r.proc.popen.pid) for r in roles if r.proc}
        wait1 = {r.name: wait_s(r.proc.popen.pid) for r in roles if r.proc}
        for spy in spies:
            spy.send_signal(signal.SIGINT)
        for spy in spies:
            spy.wait(30)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.results.c.created_at, t.results.c.latency_ms, t.results.c.status).where(
                    t.results.c.query_id.like(f"{run}-%")
                )
            ).all()
        done_s = [
            (r[0] if r[0].tzinfo else r[0].replace(tzinfo=UTC)).timestamp() - t0_wall for r in rows
        ]
        stages = {}
        for r in roles:
            assert r.proc is not None
            busy = busy_from_log(workdir / f"{r.name}.log", offsets[r.name])
            tasks = sum(v[0] for v in busy.values())
            secs = sum(v[1] for v in busy.values())
            rss = rss_mb(r.proc.popen.pid)
            stages[r.name] = {
                "pool": r.pool,
                "processes": r.procs,
                "tasks": tasks,
                "busy_s": round(secs, 2),
                "busy_share": round(secs / drained_s / r.procs, 3),
                "cpu_s": round(cpu1[r.name] - cpu0[r.name], 2),
                "cpu_wait_s": round(wait1[r.name] - wait0[r.name], 2),
                "rss_mb": round(sum(rss), 1),
                "rss_max_process_mb": round(max(rss or [0]), 1),
                "startup_s": round(r.ready_s, 2),
                "torch": torch_loaded(r.proc.popen.pid),
            }
        return {
            "submitted": sub.enqueued,
            "submit_s": round(submit_s, 3),
            "answered_s": round(answered_s, 2),
            "drained_s": round(drained_s, 2),
            "per_s": len(items_) / drained_s,
            "answered_per_s": len(items_) / answered_s,
            "errors": sum(1 for r in rows if r[2] != "ok"),
            "done_s": done_s,
            "call_ms": [float(r[1]) for r in rows],
            "warmup_s": round(warm_s, 2),
            "stages": stages,
            "executor_concurrency": exec_conc,
            "chunks": {
                "router": settings.router.chunk_size,
                "executor": settings.executor.chunk_size,
                "feedback": settings.feedback.chunk_size,
            },
        }
    finally:
        for r in roles:
            if r.proc is not None:
                r.proc.stop()
        client.close()
        engine.dispose()
        keys = list(rclient.scan_iter(match=f"{prefix}:*", count=5000))
        for i in range(0, len(keys), 5000):
            rclient.delete(*keys[i : i + 5000])
        if schema is not None:
            admin = sa.create_engine(a.database)
            with admin.begin() as conn:
                conn.execute(sa.text(f'drop schema "{schema}" cascade'))
            admin.dispose()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def main(argv: Sequence[str] | None = None) -> int:
    d = Settings()
    ap = argparse.ArgumentParser(
        prog="python -m bench.throughput", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--prompts", type=int, default=5000)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--concurrency", type=int, default=64, help="calls in flight, both sides")
    # Defaults: the pools and concurrencies of `ops/worker ROLE` and docker-compose.yml.
    ap.add_argument("--router-procs", type=int, default=2)
    ap.add_argument("--router-pool", default="prefork")
    ap.add_argument(
        "--executor-procs",
        type=int,
        default=4,
        help="executor pool size (-c): threads of the one process with --executor-pool threads "
        "(tasks at once over --concurrency call slots), else processes with concurrency/procs "
        "calls each",
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
        help=f"default executor.chunk_size ({d.executor.chunk_size})",
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
        choices=["direct", "aiohttp", "httpx2"],
        help="direct (no SDK), aiohttp or httpx2 (the OpenAI SDK over that transport)",
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
        f"{c['executor_concurrency']} per process, "
        f"HTTP {a.http_client}, embedder {a.embedder}"
    )
    print(
        f"  {'stage':9} {'pool':8} {'procs':>5} {'tasks':>6} {'busy s':>7} {'busy %':>7} "
        f"{'CPU s':>6} {'wait s':>6} {'RSS MB':>7} {'max/proc':>8} {'ready s':>7} torch"
    )
    for name, s in c["stages"].items():
        print(
            f"  {name:9} {s['pool']:8} {s['processes']:>5} {s['tasks']:>6} {s['busy_s']:>7} "
            f"{s['busy_share']:>7.1%} {s['cpu_s']:>6} {s['cpu_wait_s']:>6} {s['rss_mb']:>7} "
            f"{s['rss_max_process_mb']:>8} {s['startup_s']:>7} {s['torch']}"
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
