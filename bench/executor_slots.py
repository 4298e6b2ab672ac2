"""The executor alone on prompts already routed: does it keep its call slots full?

    python -m bench.executor_slots --prompts 4000 --latency-ms 200 --concurrency 512 [--tasks N]

The replay server (fixed latency), a router and a feedback worker start; the prompts are
submitted and routed with no executor running; then one executor worker starts as
``ops/worker executor`` does (threads pool, no ``-c``: ``executor.pool_tasks`` tasks at once;
``--tasks`` sets ``CONDUIT_EXECUTOR__TASKS``). Printed: its pool size, its rate, and the mean
calls in flight from its first answer until 90% of the prompts are answered (all the while
prompts wait for it), against ``--concurrency``. Uses Redis db 12 (own key prefix) and an
SQLite file of its own; cleans up after itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
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


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.executor_slots", description=__doc__)
    ap.add_argument("--prompts", type=int, default=4000)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--concurrency", type=int, default=512)
    ap.add_argument("--tasks", type=int, default=0, help="CONDUIT_EXECUTOR__TASKS (0: derived)")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/12")
    a = ap.parse_args(argv)
    run = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix=f"executor-slots-{run}-"))
    replay, base = start_replay_server([SAMPLE], work / "replay.log", latency_ms=a.latency_ms)
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
        wait_worker_ready(ex, 120)
        while count(t.results) < a.prompts:
            time.sleep(0.05)
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
            "concurrency": a.concurrency,
            "pool_tasks": int(m.group(1)) if m else None,
            "rate_per_s": round(0.9 * len(calls) / (cut - start), 1),
            "calls_in_flight": round(busy / (cut - start), 1),
            "call_p50_ms": round(sorted(lat for _, lat in calls)[len(calls) // 2] * 1000, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        print(
            f"executor alone: {a.prompts} routed prompts, replay latency {a.latency_ms:.0f} ms, "
            f"concurrency {a.concurrency}, {out['pool_tasks']} tasks at once: "
            f"{out['calls_in_flight']} calls in flight "
            f"({out['calls_in_flight'] / a.concurrency:.0%} of the slots), "
            f"{out['rate_per_s']} prompts/s, call p50 {out['call_p50_ms']} ms, "
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
