"""An OpenAI batch file through `conduit serve`'s Batch API and the Celery pipeline, against a
bare client in the same run.

    python -m bench.gateway_batch [--lines 10000] [--latency-ms 200] [--concurrency 64] [--json]

The replay server, the workers as bench.throughput starts them (a router of two prefork
processes, an executor with the threads pool and no ``-c``, as ``ops/worker executor``, a
feedback worker) and `conduit serve` start as subprocesses over Redis (``--redis``, a key prefix
of its own) and a fresh SQLite history. A batch of 128 lines warms them up (the embedder, the
HTTP clients; not timed). Then an OpenAI batch input file of ``--lines`` chat-completion lines
(system + user messages, ``max_tokens``, every fifth asking for JSON) is uploaded with the openai
SDK, the batch created and polled until it completes, and the output file read. The bare client
of bench.throughput (aiohttp, ``--concurrency`` request loops) makes as many calls to the same
replay server before and after; the faster of its two runs is the baseline.

Prints the time to complete (upload included), lines per second, the ratio to the bare client
(bench.throughput's ratio, for the batch path: the same settings there give the figure to
compare with), and the check the issue asks for: every ``custom_id`` answered exactly once in
the output file (no line lost, none twice).
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

from bench.bare_client import baseline
from bench.gateway import _start_gateway
from bench.pipeline_run import SAMPLE, prompts
from producers.local import start_replay_server, start_worker, wait_worker_ready

PREFIX = "conduit-bench-gwb"


POLL_S = 0.25  # how often the batch is polled while it runs


def _lines(n: int, tag: str = "line") -> list[str]:
    texts = [json.loads(x)["prompt"] for x in SAMPLE.read_text().splitlines() if x.strip()]
    out = []
    for i in range(n):
        body: dict[str, Any] = {
            "model": "conduit",
            "messages": [
                {"role": "system", "content": "Answer with the letter only."},
                {"role": "user", "content": f"{texts[i % len(texts)]}\n({tag} {i})"},
            ],
            "max_tokens": 16,
        }
        if i % 5 == 0:
            body["response_format"] = {"type": "json_object"}
        out.append(
            json.dumps(
                {
                    "custom_id": f"{tag}-{i}",
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": body,
                }
            )
        )
    return out


def _run_batch(
    client: openai.OpenAI, lines: list[str], timeout_s: float
) -> tuple[Any, float, float]:
    """Upload ``lines``, create the batch, poll it to its end: the batch, the seconds to upload
    and create, the seconds to complete (upload included)."""
    t0 = time.perf_counter()
    f = client.files.create(
        file=("batch.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
    )
    batch = client.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    submit_s = time.perf_counter() - t0
    while batch.status not in ("completed", "failed", "cancelled"):
        if time.perf_counter() - t0 > timeout_s:
            raise SystemExit(f"batch still {batch.status} after {timeout_s:.0f} s")
        time.sleep(POLL_S)
        batch = client.batches.retrieve(batch.id)
    return batch, submit_s, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=10_000)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="calls in flight: the executor's and the bare client's",
    )
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
        CONDUIT_ROUTER__EMBEDDER="static",
        CONDUIT_ROUTER__SEED="1",
        CONDUIT_EXECUTOR__CONCURRENCY=str(a.concurrency),
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
    # The roles as bench.throughput starts them (its defaults: ops/worker and compose).
    procs = [
        start_worker(["route"], env, work / "router.log", concurrency=2, name="router"),
        start_worker(
            ["execute"], env, work / "ex.log", concurrency=None, name="ex", pool="threads"
        ),
        start_worker(["feedback"], env, work / "fb.log", concurrency=1, name="fb"),
    ]
    gateway = None
    out: dict[str, Any] = {
        "lines": a.lines,
        "latency_ms": a.latency_ms,
        "concurrency": a.concurrency,
    }
    model = "mistralai/Mixtral-8x7B-Instruct-v0.1"  # one of the sample's models
    calls = prompts(a.lines, "bare")
    try:
        b1 = baseline(replay_url, model, calls, a.concurrency)
        for p in procs:
            wait_worker_ready(p, timeout_s=300)
        gateway, url = _start_gateway(env, work)
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=2, timeout=600)
        warm, _, out["warmup_s"] = _run_batch(client, _lines(128, "warm"), a.timeout_s)
        if warm.status != "completed":
            raise SystemExit(f"the warm-up batch ended {warm.status}")
        batch, out["submit_s"], out["complete_s"] = _run_batch(client, _lines(a.lines), a.timeout_s)
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
        b2 = baseline(replay_url, model, calls, a.concurrency)
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
    bare = max(b1["per_s"], b2["per_s"])
    out["bare_per_s"] = bare
    out["bare_runs_per_s"] = [b1["per_s"], b2["per_s"]]
    out["ratio"] = out["lines_per_s"] / bare
    out["load_avg_1m"] = os.getloadavg()[0]
    print(
        f"OpenAI batch of {a.lines} lines through conduit serve and the Celery pipeline "
        f"({a.latency_ms:g} ms per call, {a.concurrency} calls in flight; load "
        f"{out['load_avg_1m']:.1f})"
    )
    print(
        f"  status {out['status']}: {out['completed']} completed, {out['failed']} failed, "
        f"in {out['complete_s']:.1f} s ({out['lines_per_s']:.1f} lines/s; upload and create "
        f"{out['submit_s']:.1f} s)"
    )
    print(
        f"  bare asyncio client: {bare:.1f} calls/s (runs {b1['per_s']:.1f}, {b2['per_s']:.1f}); "
        f"ratio {out['ratio']:.3f} (compare: python -m bench.throughput --prompts {a.lines} "
        f"--latency-ms {a.latency_ms:g} --concurrency {a.concurrency})"
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
