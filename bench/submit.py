"""Submission: enqueueing a batch from the CLI, ``conduit submit FILE`` as a user runs it.

    python -m bench.submit --prompts 10000 [--json]

Writes a JSONL file of N distinct prompts (the shipped MMLU sample, each with its own ``id``),
then times ``conduit submit FILE`` as a subprocess, start-up and imports included: parse and
validate every line, record the batch and its prompts in the history database (SQLite file of
its own; ``--database`` for PostgreSQL), send the route tasks (``router.chunk_size`` prompts
each) to the broker (Redis db 12). The baseline is the same number of route-task messages sent
by a bare kombu producer in this process (what the broker alone costs). No worker consumes:
the queued messages are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import redis
from celery import Celery

import celeryconfig
from conduit_workers import names
from conduit_workers.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "conduit_workers" / "data" / "mmlu_sample.jsonl"
REDIS_URL = "redis://127.0.0.1:6379/12"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.submit", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--prompts", type=int, default=10_000)
    ap.add_argument("--redis", default=REDIS_URL)
    ap.add_argument("--database", default=None, help="history URL (default: a fresh SQLite file)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    a = ap.parse_args(argv)
    run = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    texts = [json.loads(line)["prompt"] for line in SAMPLE.read_text().split("\n") if line.strip()]
    path = work / "prompts.jsonl"
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(a.prompts):
            fh.write(
                json.dumps(
                    {"id": f"{run}-{i}", "prompt": texts[i % len(texts)], "metadata": {"n": i}}
                )
                + "\n"
            )
    db = a.database or f"sqlite:///{work / 'history.db'}"
    env = dict(
        os.environ,
        CONDUIT_REDIS__URL=a.redis,
        CONDUIT_DATABASE__URL=db,
        CONDUIT_REDIS__KEY_PREFIX=f"bench-submit-{run}",
    )
    client = redis.Redis.from_url(a.redis)
    before = client.llen("route")
    # Create the schema first: a first-ever run would otherwise time the migrations too.
    subprocess.run(
        [sys.executable, "-c", "from producers.api import ConduitClient; ConduitClient().history"],
        env=env,
        check=True,
        cwd=ROOT,
    )
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "producers.cli", "submit", str(path), "--tag", "bench-submit"],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return 1
    queued = client.llen("route") - before
    t1 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import producers.cli"], env=env, check=True, cwd=ROOT)
    startup = time.perf_counter() - t1

    # Baseline: the same route-task messages through a bare Celery producer.
    settings = Settings(_env_file=None, redis={"url": a.redis})  # type: ignore[call-arg]
    app = Celery("bench-submit", set_as_current=False)
    app.conf.update(celeryconfig.build(settings))
    chunk = settings.router.chunk_size
    ids = [f"x{i}" for i in range(a.prompts)]
    t2 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for i in range(0, len(ids), chunk):
            app.send_task(
                names.ROUTE_BATCH,
                args=[ids[i : i + chunk]],
                queue=names.ROUTE,
                producer=producer,
            )
    bare = time.perf_counter() - t2
    app.close()
    # Remove what was queued (no worker runs here); other keys of db 12 are left alone.
    for _ in range(queued + (a.prompts + chunk - 1) // chunk):
        client.rpop("route")
    for k in client.scan_iter(match=f"bench-submit-{run}*"):
        client.delete(k)

    out = {
        "benchmark": "submit",
        "prompts": a.prompts,
        "wall_s": round(wall, 2),
        "prompts_per_s": round(a.prompts / wall),
        "startup_s": round(startup, 2),
        "prompts_per_s_after_startup": round(a.prompts / max(wall - startup, 1e-9)),
        "route_tasks": queued,
        "chunk": chunk,
        "bare_enqueue_s": round(bare, 3),
        "database": db.split(":")[0],
    }
    out["ratio"] = round(out["prompts_per_s"] / (a.prompts / bare), 3)
    print(
        f"submission: `conduit submit` of {a.prompts} prompts: {wall:.2f} s = "
        f"{out['prompts_per_s']:,} prompts/s (start-up {startup:.2f} s of it; "
        f"{out['prompts_per_s_after_startup']:,}/s after), {queued} route tasks of {chunk}"
    )
    print(
        f"  bare Celery producer, same {queued} messages: {bare:.3f} s "
        f"({a.prompts / bare:,.0f} prompts/s); ratio {out['ratio']}"
    )
    print(f"  CLI output: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    if a.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
