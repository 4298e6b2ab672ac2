"""The throughput bench's Conduit run: router, executor and feedback workers started as
subprocesses on their own queues, a warm-up batch, then the producer API submits the prompts and
the clock stops when every prompt has a result and every feedback event has been applied; each
stage's busy time, CPU, RSS and start-up are measured on the way (``conduit_run``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis
import sqlalchemy as sa

from bench.procstats import busy_from_log, cpu_s, rss_mb, torch_loaded, wait_s
from conduit_workers.domain.items import PromptItem
from conduit_workers.history import history_schema as t
from conduit_workers.settings import Settings
from producers.api import ConduitClient
from producers.local import Proc, start_worker, wait_worker_ready

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "conduit_workers" / "data" / "mmlu_sample.jsonl"


def prompts(n: int, run: str) -> list[tuple[str, str]]:
    """N distinct (id, prompt) pairs: the shipped MMLU prompts, each made unique by a suffix
    (so neither the idempotency keys nor a feature cache can collapse them)."""
    texts = [json.loads(line)["prompt"] for line in SAMPLE.read_text().splitlines() if line.strip()]
    return [(f"{run}-{i}", f"{texts[i % len(texts)]}\n(request {i})") for i in range(n)]


def pool_sizes(logs: list[Path]) -> list[int]:
    """Each worker's pool size, from its start-up banner (``concurrency: 16 (thread)``)."""
    out = []
    for log in logs:
        m = re.search(r"concurrency: (\d+)", log.read_text(errors="replace"))
        out.append(int(m.group(1)) if m else 0)
    return out


@dataclass
class Role:
    """One role's workers: ``workers`` worker processes (``celery worker``), each with the pool
    size ``procs`` (None: no ``-c``, the worker's default)."""

    name: str
    queues: list[str]
    pool: str
    procs: int | None
    workers: int = 1
    proc: list[Proc] = field(default_factory=list)
    ready_s: float = 0.0

    def pids(self) -> list[int]:
        return [p.popen.pid for p in self.proc]

    def logs(self, workdir: Path) -> list[Path]:
        return [workdir / f"{self.name}-{i}.log" for i in range(self.workers)]

    def cpu_s(self) -> float:
        return sum(cpu_s(pid) for pid in self.pids())

    def wait_s(self) -> float:
        return sum(wait_s(pid) for pid in self.pids())


def _count(engine: sa.Engine, run: str) -> tuple[int, int, int]:
    """(results, feedback events, unapplied feedback events) of this run's prompts."""
    like = f"{run}%"
    r, f = t.results, t.feedback
    with engine.connect() as conn:

        def count(table: sa.Table, *where: sa.ColumnElement[bool]) -> int:
            stmt = sa.select(sa.func.count()).select_from(table).where(*where)
            return int(conn.scalar(stmt) or 0)

        return (
            count(r, r.c.query_id.like(like)),
            count(f, f.c.query_id.like(like)),
            count(f, f.c.query_id.like(like), f.c.applied_at.is_(None)),
        )


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
    # prefork: one task per pool process, each with its share of the calls; threads: each
    # executor process's pool threads run tasks at once over its share of the call slots.
    exec_conc = max(1, a.concurrency // a.executor_procs)
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
        Role("router", ["route"], a.router_pool, a.router_procs, a.router_workers),
        Role(
            "executor",
            ["execute"],
            a.executor_pool,
            a.executor_procs if a.executor_pool == "prefork" else a.executor_threads,
            1 if a.executor_pool == "prefork" else a.executor_procs,
        ),
        Role("feedback", ["feedback"], a.feedback_pool, 1),
    ]
    client = ConduitClient(settings)
    engine = sa.create_engine(db_url)
    rclient = redis.Redis.from_url(a.redis)
    try:
        _ = client.history  # create the schema before the workers race to
        for r in roles:
            started = time.perf_counter()
            r.proc = [
                start_worker(
                    r.queues,
                    env,
                    log,
                    concurrency=r.procs,
                    name=f"bench-{r.name}{i}",
                    pool=r.pool,
                )
                for i, log in enumerate(r.logs(workdir))
            ]
            r.ready_s = -started
        for r in roles:
            for proc in r.proc:
                wait_worker_ready(proc, timeout_s=120)
            r.ready_s += time.perf_counter()
        # Warm-up: loads the embedder (router), HTTP clients (executor), DB pools; not timed.
        warm = [
            PromptItem(prompt=p, key=f"{run}w-{i}", external_id=f"w-{i}", line=i + 1)
            for i, (_, p) in enumerate(
                prompts(max(2 * settings.executor.prompts_per_task, 128), run + "w")
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
        offsets = {log: log.stat().st_size for r in roles for log in r.logs(workdir)}
        cpu0 = {r.name: r.cpu_s() for r in roles}
        wait0 = {r.name: r.wait_s() for r in roles}
        spies = []
        if a.profile:
            spy_bin = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            # py-spy samples every worker process (and its pool children) during the timed run.
            for r in roles:
                for k, pid in enumerate(r.pids()):
                    suffix = f"-{k}" if k else ""
                    spies.append(
                        subprocess.Popen(
                            [
                                spy_bin,
                                "record",
                                "--pid",
                                str(pid),
                                "--subprocesses",
                                "--rate",
                                "100",
                                "--format",
                                "raw",
                                "--nonblocking",
                                "--output",
                                str(workdir / f"profile-{r.name}{suffix}.txt"),
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
        cpu1 = {r.name: r.cpu_s() for r in roles}
        wait1 = {r.name: r.wait_s() for r in roles}
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
        n = len(items_)
        for r in roles:
            busy = [busy_from_log(log, offsets[log]) for log in r.logs(workdir)]
            tasks = sum(v[0] for b in busy for v in b.values())
            secs = sum(v[1] for b in busy for v in b.values())
            rss = [mb for pid in r.pids() for mb in rss_mb(pid)]
            pool_size = pool_sizes(r.logs(workdir))
            cpu = cpu1[r.name] - cpu0[r.name]
            stages[r.name] = {
                "pool": r.pool,
                "workers": r.workers,
                "processes": sum(pool_size),
                "tasks": tasks,
                "busy_s": round(secs, 2),
                "busy_share": round(secs / drained_s / max(1, sum(pool_size)), 3),
                "cpu_s": round(cpu, 2),
                "cpu_ms_per_prompt": round(cpu / n * 1000, 3),
                # One process on one core: its CPU per prompt is the ceiling of its rate.
                "max_per_s_per_process": round(n / cpu, 1) if cpu > 0 else None,
                "cpu_wait_s": round(wait1[r.name] - wait0[r.name], 2),
                "rss_mb": round(sum(rss), 1),
                "rss_max_process_mb": round(max(rss or [0]), 1),
                "startup_s": round(r.ready_s, 2),
                "torch": any(torch_loaded(pid) for pid in r.pids()),
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
                "executor": settings.executor.prompts_per_task,
                "feedback": settings.feedback.chunk_size,
            },
        }
    finally:
        for r in roles:
            for proc in r.proc:
                proc.stop()
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
