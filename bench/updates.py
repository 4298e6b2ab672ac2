"""Posterior updates: concurrent feedback writers against raw pipelined HINCRBYFLOAT.

    python -m bench.updates --writers 4 --events 200000 [--json]

Each writer process applies its share of the feedback events the way the feedback worker does:
a chunk of events (``--chunk``, the feedback task's chunk) goes through ``engine.learn``, which
aggregates them per model and applies one Lua script per model and update id
(``RedisPosteriorStore.apply``). A share of the chunks (``--redeliver``) is applied a second time
under the same update id, as a redelivered task would be. The baseline is the same writers
sending one pipelined ``HINCRBYFLOAT`` per event to the same Redis. At the end, each model's
counters and regression statistics are checked against totals computed from the events:
``lost`` and ``doubled`` count events missing or counted twice (both must be 0).

Uses its own key prefix on ``--redis`` (db 12 by default) and deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis

from conduit_workers.domain.bandit import ArmStats
from conduit_workers.domain.learning import learn
from conduit_workers.domain.rewards import IMPLICIT, FeedbackEvent
from conduit_workers.learning.posterior_store import RedisPosteriorStore
from conduit_workers.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/12"


def _events(
    writer: int, n: int, models: int, dim: int, seed: int
) -> tuple[list[FeedbackEvent], dict[str, np.ndarray]]:
    """A writer's events. Rewards and contexts are multiples of 1/8, so every sum is exact."""
    rng = np.random.default_rng([seed, writer])
    model_ix = rng.integers(0, models, n)
    rewards = rng.integers(0, 9, n) / 8.0
    errors = rng.random(n) < 0.1
    ctx = rng.integers(-8, 9, (n, dim)) / 8.0
    ctx[:, 0] = 1.0
    events, contexts = [], {}
    for i in range(n):
        qid = f"w{writer}q{i}"
        contexts[qid] = ctx[i]
        events.append(
            FeedbackEvent(
                f"implicit:{qid}",
                qid,
                f"model-{model_ix[i]}",
                IMPLICIT,
                float(rewards[i]),
                1.0,
                is_call=True,
                error=bool(errors[i]),
                latency_ms=float(i % 7) * 25.0,
                in_tokens=int(i % 50),
                out_tokens=int(i % 13),
                cost_usd=float(i % 5) / 1024.0,
            )
        )
    return events, contexts


def _writer(args: dict[str, Any], writer: int, start: Any, out: Any) -> None:
    events, contexts = _events(
        writer, args["per_writer"], args["models"], args["dim"], args["seed"]
    )
    chunk = args["chunk"]
    chunks = [events[i : i + chunk] for i in range(0, len(events), chunk)]
    redo = np.random.default_rng([args["seed"], writer, 1]).random(len(chunks)) < args["redeliver"]
    client = redis.Redis.from_url(args["redis"])
    if args["mode"] == "raw":
        pipe_chunks = [[f"{args['prefix']}:raw:{e.model}" for e in c] for c in chunks]
        start.wait()
        t0 = time.perf_counter()
        for keys in pipe_chunks:
            pipe = client.pipeline(transaction=False)
            for k in keys:
                pipe.hincrbyfloat(k, "n", 1.0)
            pipe.execute()
        out.put((writer, time.perf_counter() - t0, len(chunks), 0))
        return
    store = RedisPosteriorStore(client, args["prefix"])
    applied = 0
    start.wait()
    t0 = time.perf_counter()
    for k, c in enumerate(chunks):
        update_id = f"w{writer}c{k}"
        applied += learn(store, c, contexts, args["dim"], update_id)
        if redo[k]:
            applied += learn(store, c, contexts, args["dim"], update_id)
    out.put((writer, time.perf_counter() - t0, len(chunks) + int(redo.sum()), applied))


def _run(mode: str, args: dict[str, Any]) -> tuple[float, int, int]:
    """Wall time from the start signal to the last writer done; calls; updates applied."""
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_writer, args=({**args, "mode": mode}, w, start, out))
        for w in range(args["writers"])
    ]
    for p in procs:
        p.start()
    time.sleep(0.5 + 0.0002 * args["per_writer"])  # let every writer build its events
    t0 = time.perf_counter()
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return wall, sum(r[2] for r in results), sum(r[3] for r in results)


def _expected(args: dict[str, Any]) -> dict[str, ArmStats]:
    total: dict[str, ArmStats] = {}
    for w in range(args["writers"]):
        events, contexts = _events(w, args["per_writer"], args["models"], args["dim"], args["seed"])
        from conduit_workers.domain.learning import aggregate

        for model, delta in aggregate(events, contexts, args["dim"]).items():
            total.setdefault(model, ArmStats.zeros(args["dim"])).merge(delta)
    return total


def _check(args: dict[str, Any], store: RedisPosteriorStore) -> dict[str, Any]:
    expected = _expected(args)
    names = sorted(expected)
    got = store.read(names, args["dim"])
    lost = doubled = 0
    max_rel = 0.0
    for m in names:
        e, (_, g) = expected[m], got[m]
        diff = int(round(g.counters["calls"] - e.counters["calls"]))
        lost += max(0, -diff)
        doubled += max(0, diff)
        for k in ("n", "r", "rr", "errors", "latency_ms", "in_tokens", "out_tokens", "cost_usd"):
            if g.counters[k] != e.counters[k]:
                err = abs(g.counters[k] - e.counters[k]) / max(1.0, abs(e.counters[k]))
                max_rel = max(max_rel, err)
        scale = max(1.0, float(np.abs(e.xx).max()))
        max_rel = max(
            max_rel,
            float(np.abs(g.xx - e.xx).max()) / scale,
            float(np.abs(g.xr - e.xr).max()) / scale,
        )
    # Aggregated counters cannot say which events a wrong total came from; any mismatch of the
    # exact sums beyond float noise counts as at least one lost or doubled event.
    if max_rel > 1e-9 and lost == doubled == 0:
        doubled = 1
    return {"lost": lost, "doubled": doubled, "max_rel_error": max_rel}


def _cleanup(client: redis.Redis, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
    for i in range(0, len(keys), 5000):
        client.delete(*keys[i : i + 5000])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.updates", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--writers", type=int, default=4, help="concurrent feedback processes (4)")
    ap.add_argument("--events", type=int, default=200_000, help="feedback events in all (200000)")
    ap.add_argument(
        "--chunk",
        type=int,
        default=None,
        help="events per feedback task (default: feedback.chunk_size)",
    )
    ap.add_argument("--models", type=int, default=10, help="models the events spread over (10)")
    ap.add_argument(
        "--redeliver",
        type=float,
        default=0.05,
        help="share of chunks applied twice under the same update id (0.05)",
    )
    ap.add_argument("--redis", default=REDIS_URL, help=f"Redis URL ({REDIS_URL})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    a = ap.parse_args(argv)
    settings = Settings()
    prefix = f"bench-updates-{uuid.uuid4().hex[:8]}"
    args = {
        "writers": a.writers,
        "per_writer": a.events // a.writers,
        "models": a.models,
        "dim": settings.context_dim,
        "chunk": a.chunk or settings.feedback.chunk_size,
        "redeliver": a.redeliver,
        "redis": a.redis,
        "seed": a.seed,
        "prefix": prefix,
    }
    events = args["per_writer"] * a.writers
    client = redis.Redis.from_url(a.redis)
    try:
        raw_s, _, _ = _run("raw", args)
        lua_s, calls, applied = _run("learn", args)
        check = _check(args, RedisPosteriorStore(client, prefix))
    finally:
        _cleanup(client, prefix)
    out = {
        "benchmark": "updates",
        "writers": a.writers,
        "events": events,
        "chunk": args["chunk"],
        "models": a.models,
        "context_dim": args["dim"],
        "learn_calls": calls,
        "updates_applied": applied,
        "events_per_s": round(events / lua_s),
        "raw_hincrbyfloat_per_s": round(events / raw_s),
        "ratio": round(raw_s / lua_s, 3),
        "updates_per_s": round(applied / lua_s),
        **check,
    }
    print(
        f"posterior updates: {a.writers} writers, {events} events, chunk {args['chunk']}, "
        f"{a.models} models, context dim {args['dim']}, {a.redeliver:.0%} of chunks redelivered"
    )
    print(
        f"  conduit learn (aggregate + 1 Lua/model/update): {out['events_per_s']:>9,} events/s "
        f"({out['updates_per_s']:,} atomic updates/s)"
    )
    print(
        f"  raw pipelined HINCRBYFLOAT (1 per event):        "
        f"{out['raw_hincrbyfloat_per_s']:>9,} events/s"
    )
    print(
        f"  ratio {out['ratio']:.2f}   lost {check['lost']}   doubled {check['doubled']}   "
        f"max relative error {check['max_rel_error']:.1e}"
    )
    if a.json:
        print(json.dumps(out))
    return 0 if check["lost"] == check["doubled"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
