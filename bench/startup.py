"""Worker start-up and memory: each role's time to "ready", RSS and whether torch is loaded.

    python -m bench.startup [--repeat 3] [--json]

The three roles start together as ``bench.throughput`` starts them (router prefork 2, executor
threads 4, feedback prefork 1, as in ``ops/worker``), each ``celery -A conduit_workers worker
-Q <queue>``; the clock runs from spawn to the worker's "ready" line. Then every role gets one
empty task (the router loads its embedder, the executor its LLM client, each its database
pool) and the RSS of each process is read again. Baseline in the same run: a bare Celery worker
(an app with one no-op task, same broker) started alone, the floor Conduit cannot go under.
Redis db 12 (own key prefix) and an SQLite file of its own; everything is removed afterwards.
"""

from __future__ import annotations

from celery import Celery

# The baseline worker's app: `celery -A bench.startup:bare worker` imports this module only.
bare = Celery("bare")


@bare.task(name="bare.noop")
def noop() -> None:
    return None


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json
    import os
    import re
    import shutil
    import statistics
    import sys
    import tempfile
    import time
    import uuid
    from pathlib import Path

    import redis

    from bench.procstats import rss_mb, torch_loaded
    from producers.local import Proc, start_worker

    ap = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="start-ups per role (3)")
    ap.add_argument("--embedder", default="static", help="router embedder (static)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    a = ap.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    prefix = f"bench-startup-{uuid.uuid4().hex[:8]}"
    env = dict(
        os.environ,
        CONDUIT_REDIS__URL=a.redis,
        CONDUIT_REDIS__KEY_PREFIX=prefix,
        CONDUIT_DATABASE__URL=f"sqlite:///{workdir / 'history.db'}",
        CONDUIT_ROUTER__EMBEDDER=a.embedder,
    )
    roles = {  # queue, pool, concurrency, an empty task that builds the role's runtime
        "router": ("route", "prefork", 2, "conduit.router.route_batch"),
        "executor": ("execute", "threads", 4, "conduit.executor.execute_batch"),
        "feedback": ("feedback", "prefork", 1, "conduit.feedback.apply_events"),
    }
    ready = re.compile(r"\bready\.")
    done = re.compile(r"succeeded in")

    def wait_for(procs: dict[str, Proc], pattern: re.Pattern[str], count: int = 1) -> dict:
        t0, left, seen = time.perf_counter(), dict(procs), {}
        while left:
            for name, p in list(left.items()):
                assert p.log_path is not None
                if len(pattern.findall(p.log_path.read_text(errors="replace"))) >= count:
                    seen[name] = time.perf_counter() - t0
                    del left[name]
                elif not p.alive():
                    raise SystemExit(f"{name} worker exited:\n{p.tail()}")
            if time.perf_counter() - t0 > 120:
                raise SystemExit(f"not ready after 120 s: {sorted(left)}")
            time.sleep(0.02)
        return seen

    runs: dict[str, list[dict]] = {name: [] for name in [*roles, "bare celery"]}
    client = redis.Redis.from_url(a.redis)
    try:
        from celery import Celery as _Celery

        sender = _Celery("bench-startup", broker=a.redis)
        for i in range(a.repeat):
            procs: dict[str, Proc] = {}
            try:
                t0 = time.perf_counter()
                for name, (queue, pool, conc, _) in roles.items():
                    procs[name] = start_worker(
                        [queue],
                        env,
                        workdir / f"{name}-{i}.log",
                        concurrency=conc,
                        name=f"bench-startup-{name}",
                        pool=pool,
                    )
                spawned = time.perf_counter() - t0
                up = wait_for(procs, ready)
                at_ready = {n: rss_mb(p.popen.pid) for n, p in procs.items()}
                for name, (queue, _, conc, task) in roles.items():
                    for _ in range(conc if roles[name][1] == "prefork" else 1):
                        sender.send_task(task, args=[[]], queue=queue)
                wait_for(procs, done)
                time.sleep(0.5)  # the other prefork children, if they got a task
                for name, p in procs.items():
                    rss = rss_mb(p.popen.pid)
                    runs[name].append(
                        {
                            "ready_s": up[name] + spawned,
                            "rss_ready_mb": max(at_ready[name] or [0]),
                            "rss_mb": max(rss or [0]),
                            "rss_total_mb": sum(rss),
                            "torch": torch_loaded(p.popen.pid),
                        }
                    )
            finally:
                for p in procs.values():
                    p.stop()
            argv_bare = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "bench.startup:bare",
                "-b",
                a.redis,
                "worker",
                "-Q",
                f"{prefix}-bare",
                "-c",
                "1",
                "-n",
                f"bare-{os.getpid()}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ]
            from producers.local import _spawn

            t0 = time.perf_counter()
            bare_proc = _spawn("bare celery", argv_bare, env, workdir / f"bare-{i}.log")
            try:
                up = wait_for({"bare celery": bare_proc}, ready)
                rss = rss_mb(bare_proc.popen.pid)
                runs["bare celery"].append(
                    {
                        "ready_s": time.perf_counter() - t0,
                        "rss_ready_mb": max(rss or [0]),
                        "rss_mb": max(rss or [0]),
                        "rss_total_mb": sum(rss),
                        "torch": torch_loaded(bare_proc.popen.pid),
                    }
                )
            finally:
                bare_proc.stop()
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=5000))
        keys += list(client.scan_iter(match=f"_kombu.binding*.{prefix}*", count=5000))
        if keys:
            client.delete(*keys)
        shutil.rmtree(workdir, ignore_errors=True)

    floor = statistics.median(r["ready_s"] for r in runs["bare celery"])
    print(
        f"worker start-up, {a.repeat} runs (median; roles started together, embedder "
        f"{a.embedder}); machine load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    print(
        f"  {'role':12} {'ready s':>7} {'runs':>18} {'/ bare':>6} {'RSS@ready':>9} "
        f"{'RSS MB':>7} {'total MB':>8} torch"
    )
    out: dict = {"benchmark": "startup", "repeat": a.repeat, "embedder": a.embedder}
    for name, rs in runs.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "torch"}
        torch = any(r["torch"] for r in rs)
        spread = "[" + ", ".join(f"{r['ready_s']:.2f}" for r in rs) + "]"
        print(
            f"  {name:12} {med['ready_s']:>7.2f} {spread:>18} {med['ready_s'] / floor:>6.2f} "
            f"{med['rss_ready_mb']:>9.0f} {med['rss_mb']:>7.0f} {med['rss_total_mb']:>8.0f} {torch}"
        )
        out[name.replace(" ", "_")] = {k: round(v, 2) for k, v in med.items()} | {"torch": torch}
    print("  (RSS MB: largest process after one task; total: all of the role's processes)")
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
