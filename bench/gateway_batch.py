"""An OpenAI batch file through `conduit serve`'s Batch API and the Celery pipeline.

    python -m bench.gateway_batch [--lines 10000] [--latency-ms 20] [--json]

The replay server, a router + feedback worker, an executor worker (threads pool, as
``ops/worker executor``) and `conduit serve` start as subprocesses over Redis (``--redis``, a
key prefix of its own) and a fresh SQLite history. An OpenAI batch input file of ``--lines``
chat-completion lines (system + user messages, ``max_tokens``, every fifth asking for JSON) is
uploaded with the openai SDK, the batch created and polled until it completes; then the output
file is read. Prints the time to complete, lines per second, and the check the issue asks
for: every ``custom_id`` answered exactly once in the output file (no line lost, none twice).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import redis

from bench.gateway import _start_gateway
from bench.pipeline_run import SAMPLE
from producers.local import start_replay_server, start_worker, wait_worker_ready

PREFIX = "conduit-bench-gwb"


def _lines(n: int) -> list[str]:
    texts = [json.loads(x)["prompt"] for x in SAMPLE.read_text().splitlines() if x.strip()]
    out = []
    for i in range(n):
        body: dict[str, Any] = {
            "model": "conduit",
            "messages": [
                {"role": "system", "content": "Answer with the letter only."},
                {"role": "user", "content": f"{texts[i % len(texts)]}\n(line {i})"},
            ],
            "max_tokens": 16,
        }
        if i % 5 == 0:
            body["response_format"] = {"type": "json_object"}
        out.append(
            json.dumps(
                {
                    "custom_id": f"line-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            )
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/11")
    ap.add_argument("--timeout-s", type=float, default=1800)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-gwbatch-"))
    db = f"sqlite:///{work / 'history.db'}"
    replay, replay_url = start_replay_server([SAMPLE], work / "replay.log", latency_ms=a.latency_ms)
    env = dict(
        os.environ,
        CONDUIT_REDIS__URL=a.redis,
        CONDUIT_REDIS__KEY_PREFIX=PREFIX,
        CONDUIT_DATABASE__URL=db,
        CONDUIT_REPLAY_URL=replay_url,
        CONDUIT_LOG_LEVEL="WARNING",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    os.environ["CONDUIT_DATABASE__URL"] = db
    from conduit_workers.history.history_gateway import GatewayHistory

    history = GatewayHistory(db)
    history.create_schema()
    _, key = history.create_key("bench")
    history.dispose()
    procs = [
        start_worker(["route", "feedback"], env, work / "rf.log", concurrency=1, name="rf"),
        start_worker(["execute"], env, work / "ex.log", concurrency=4, name="ex", pool="threads"),
    ]
    gateway = None
    out: dict[str, Any] = {"lines": a.lines, "latency_ms": a.latency_ms, "provisional": True}
    try:
        for p in procs:
            wait_worker_ready(p, timeout_s=300)
        gateway, url = _start_gateway(env, work)
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=2, timeout=600)
        data = "\n".join(_lines(a.lines)).encode()
        t0 = time.perf_counter()
        f = client.files.create(file=("batch.jsonl", io.BytesIO(data)), purpose="batch")
        batch = client.batches.create(
            input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
        out["submit_s"] = time.perf_counter() - t0
        while batch.status not in ("completed", "failed", "cancelled"):
            if time.perf_counter() - t0 > a.timeout_s:
                raise SystemExit(f"batch still {batch.status} after {a.timeout_s:.0f} s")
            time.sleep(1.0)
            batch = client.batches.retrieve(batch.id)
        out["complete_s"] = time.perf_counter() - t0
        out["status"] = batch.status
        out["completed"] = batch.request_counts.completed if batch.request_counts else None
        out["failed"] = batch.request_counts.failed if batch.request_counts else None
        answered: Counter[str] = Counter()
        if batch.output_file_id:
            for line in client.files.content(batch.output_file_id).text.splitlines():
                answered[json.loads(line)["custom_id"]] += 1
        expected = {f"line-{i}" for i in range(a.lines)}
        out["answered_once"] = sum(1 for c in expected if answered[c] == 1)
        out["missing"] = sum(1 for c in expected if answered[c] == 0)
        out["twice_or_more"] = sum(1 for c in expected if answered[c] > 1)
        out["unknown"] = sum(1 for c in answered if c not in expected)
        out["lines_per_s"] = a.lines / out["complete_s"]
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
        for p in procs:
            p.stop()
        replay.stop()
        client_r = redis.Redis.from_url(a.redis)
        stale = list(client_r.scan_iter(f"{PREFIX}:*", count=1000))
        if stale:
            client_r.delete(*stale)
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"OpenAI batch of {a.lines} lines through conduit serve and the Celery pipeline "
        f"({a.latency_ms:g} ms per call; provisional on a shared machine)"
    )
    print(
        f"  status {out['status']}: {out['completed']} completed, {out['failed']} failed, "
        f"in {out['complete_s']:.1f} s ({out['lines_per_s']:.0f} lines/s; upload and create "
        f"{out['submit_s']:.1f} s)"
    )
    print(
        f"  output file: {out['answered_once']} custom_ids answered exactly once, "
        f"{out['missing']} missing, {out['twice_or_more']} more than once, "
        f"{out['unknown']} unknown"
    )
    if a.json:
        print(json.dumps(out))
    if out["missing"] or out["twice_or_more"] or out["unknown"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
