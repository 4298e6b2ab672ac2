"""The executor alone on prompts already routed: does it keep its call slots full?

    python -m bench.executor_slots --prompts 4000 --latency-ms 200 --concurrency 512 [--tasks N]
        [--jitter-ms J]

The replay server (fixed latency, or uniform ± ``--jitter-ms``), a router and a feedback worker
start; the prompts are submitted and routed with no executor running; then one executor worker
starts as ``ops/worker executor`` does (threads pool, no ``-c``: ``executor.pool_tasks`` tasks
at once; ``--tasks`` sets ``CONDUIT_EXECUTOR__TASKS``). Printed: its pool size, its rate, and
the mean calls in flight against ``--concurrency`` while prompts wait for it: the calls the
replay server holds (its counters read every 20 ms), from one latency after the first call
started (the pool's start-up left out) until the last prompt's call started (from then on no
prompt waits and the slots empty as the last calls end). The window must span several
latencies: ``--prompts`` at least ~6 × ``--concurrency``. Also printed, as before: the results'
call time over [first answer, 90% answered], which places each call at its chunk's store time
(a chunk's results are stored together) and, where 10% of the prompts are fewer than the slots,
counts the drain. Uses Redis db 12 (own key prefix) and an SQLite file of its own; cleans up
after itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path

import redis
import sqlalchemy as sa

from bench.pipeline_run import SAMPLE, prompts
from conduit_workers.domain.items import PromptItem
from conduit_workers.history import history_schema as t
from producers.local import Proc, start_replay_server, start_worker, wait_worker_ready


class _ReplaySampler:
    """Reads the replay server's counters every ``every_s`` seconds in a thread: (monotonic
    time, calls started, calls in flight)."""

    def __init__(self, base: str, every_s: float = 0.02) -> None:
        self._url = base.removesuffix("/v1") + "/_replay/stats"
        self._every_s = every_s
        self._stop = threading.Event()
        self.samples: list[tuple[float, int, int]] = []
        self._thread = threading.Thread(target=self._run, name="replay-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                with urllib.request.urlopen(self._url, timeout=5) as r:
                    s = json.load(r)
            except OSError:  # a sample missed: the time-weighted mean spans the gap
                continue
            ended = sum(s["statuses"].values()) + s["abandoned"]
            self.samples.append((time.monotonic(), s["calls"], s["calls"] - ended))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def held_while_waiting(
    samples: Sequence[tuple[float, int, int]], prompts: int, latency_s: float
) -> tuple[float, float]:
    """Mean calls in flight, time-weighted, from one latency after the first call started until
    the last prompt's call started; and that window's length in seconds."""
    first = next(t for t, started, _ in samples if started > 0)
    last = next(t for t, started, _ in samples if started >= prompts)
    lo, area = first + latency_s, 0.0
    for (t0, _, n0), (t1, _, _) in zip(samples, samples[1:], strict=False):
        a, b = max(t0, lo), min(t1, last)
        if b > a:
            area += n0 * (b - a)
    return (area / (last - lo) if last > lo else float("nan")), last - lo


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.executor_slots", description=__doc__)
    ap.add_argument("--prompts", type=int, default=4000)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument(
        "--jitter-ms", type=float, default=0.0, help="replay latency ± this, uniform (default 0)"
    )
    ap.add_argument("--concurrency", type=int, default=512)
    ap.add_argument("--tasks", type=int, default=0, help="CONDUIT_EXECUTOR__TASKS (0: derived)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    a = ap.parse_args(argv)
    run = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix=f"executor-slots-{run}-"))
    replay, base = start_replay_server(
        [SAMPLE],
        work / "replay.log",
        latency_ms=a.latency_ms,
        extra_args=["--jitter-ms", str(a.jitter_ms)] if a.jitter_ms else (),
    )
    db = f"sqlite:///{work / 'history.db'}"
    prefix = f"bench-slots-{run}"
    env = dict(
        os.environ,
        CONDUIT_REDIS__URL=a.redis,
        CONDUIT_REDIS__KEY_PREFIX=prefix,
        CONDUIT_DATABASE__URL=db,
        CONDUIT_REPLAY_URL=base,
        CONDUIT_ROUTER__EMBEDDER="static",
        CONDUIT_EXECUTOR__CONCURRENCY=str(a.concurrency),
        CONDUIT_EXECUTOR__TASKS=str(a.tasks),
    )
    os.environ.update({k: v for k, v in env.items() if k.startswith("CONDUIT_")})
    from conduit_workers.settings import Settings
    from producers.api import ConduitClient

    procs: list[Proc] = []
    client = ConduitClient(Settings())
    engine = sa.create_engine(db)
    like = f"{run}-%"

    def count(table: sa.Table) -> int:
        with engine.connect() as conn:
            q = sa.select(sa.func.count()).select_from(table).where(table.c.query_id.like(like))
            return int(conn.scalar(q) or 0)

    try:
        _ = client.history
        procs += [
            start_worker(["route"], env, work / "router.log", concurrency=2, name="slots-r"),
            start_worker(["feedback"], env, work / "feedback.log", concurrency=1, name="slots-f"),
        ]
        for p in procs:
            wait_worker_ready(p, 120)
        items = [
            PromptItem(prompt=p, key=i, external_id=i, line=k + 1)
            for k, (i, p) in enumerate(prompts(a.prompts, run))
        ]
        client.submit_items(items, tag="bench-slots")
        while count(t.decisions) < a.prompts:
            time.sleep(0.2)
        ex = start_worker(
            ["execute"],
            env,
            work / "executor.log",
            concurrency=None,
            name="slots-e",
            pool="threads",
        )
        procs.append(ex)
        sampler = _ReplaySampler(base)
        try:
            wait_worker_ready(ex, 120)
            while count(t.results) < a.prompts:
                time.sleep(0.05)
        finally:
            sampler.stop()
        held, window_s = held_while_waiting(sampler.samples, a.prompts, a.latency_ms / 1000)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(t.results.c.created_at, t.results.c.latency_ms).where(
                    t.results.c.query_id.like(like)
                )
            ).all()
        calls = sorted(
            ((r[0] if r[0].tzinfo else r[0].replace(tzinfo=UTC)).timestamp(), r[1] / 1000)
            for r in rows
        )
        start, cut = calls[0][0], calls[int(0.9 * len(calls))][0]
        # Call time inside [first answer, 90% answered] over that window's length.
        busy = sum(max(0.0, min(end, cut) - max(end - lat, start)) for end, lat in calls)
        m = re.search(r"concurrency: (\d+)", (work / "executor.log").read_text(errors="replace"))
        out = {
            "benchmark": "executor_slots",
            "prompts": a.prompts,
            "latency_ms": a.latency_ms,
            "jitter_ms": a.jitter_ms,
            "concurrency": a.concurrency,
            "pool_tasks": int(m.group(1)) if m else None,
            "rate_per_s": round(0.9 * len(calls) / (cut - start), 1),
            "calls_in_flight": round(held, 1),
            "window_s": round(window_s, 1),
            "calls_in_flight_results": round(busy / (cut - start), 1),
            "call_p50_ms": round(sorted(lat for _, lat in calls)[len(calls) // 2] * 1000, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        print(
            f"executor alone: {a.prompts} routed prompts, "
            f"replay latency {a.latency_ms:.0f} ± {a.jitter_ms:.0f} ms, "
            f"concurrency {a.concurrency}, {out['pool_tasks']} tasks at once: "
            f"{out['calls_in_flight']} calls in flight "
            f"({held / a.concurrency:.1%} of the slots) over {window_s:.1f} s while prompts "
            f"waited; {out['rate_per_s']} prompts/s, call p50 {out['call_p50_ms']} ms, "
            f"as the results place them {out['calls_in_flight_results']}, "
            f"load {out['load_avg_1m']}"
        )
        print(json.dumps(out))
    finally:
        for p in procs:
            p.stop()
        replay.stop()
        client.close()
        engine.dispose()
        r = redis.Redis.from_url(a.redis)
        keys = list(r.scan_iter(match=f"{prefix}:*", count=5000))
        for i in range(0, len(keys), 5000):
            r.delete(*keys[i : i + 5000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
