"""``conduit demo``: a real batch through the whole system, then what it cost and saved.

Starts what it needs (a private Redis if none answers, the replay server, one worker on all
three queues), submits the shipped MMLU sample in waves, rates each answer with the measured
correctness of the model that gave it (as a user's explicit feedback), and prints per model:
prompts, tokens, cost and mean quality, beside "always the strongest model".
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import click

from conduit_workers.domain.catalog import Catalog, load_catalog
from conduit_workers.errors import ConfigError
from conduit_workers.learning.posterior_store import RedisPosteriorStore
from conduit_workers.settings import DatabaseSettings, RedisSettings, Settings, get_settings
from producers.api import ConduitClient
from producers.local import (
    Proc,
    redis_answers,
    start_private_redis,
    start_replay_server,
    start_worker,
    wait_worker_ready,
)

SAMPLE = Path(__file__).resolve().parent.parent / "conduit_workers" / "data" / "mmlu_sample.jsonl"
DEMO_PREFIX = "conduit-demo"


def _say(msg: str) -> None:
    click.echo(msg, err=True)


def run_demo(
    prompts: int = 400,
    waves: int = 4,
    latency_ms: float = 30.0,
    keep_db: bool = False,
    workdir: Path = Path("var/demo"),
) -> dict[str, Any]:
    """Run the demo; return the summary figures (also printed)."""
    base = get_settings()
    workdir.mkdir(parents=True, exist_ok=True)
    sample = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()][
        :prompts
    ]
    if not sample:
        raise ConfigError(f"the demo sample {SAMPLE} is empty or missing")
    procs: list[Proc] = []
    try:
        redis_url = base.redis.url
        if not redis_answers(redis_url):
            proc, redis_url = start_private_redis(workdir)
            procs.append(proc)
            _say(f"no Redis answered at {base.redis.url}; started a private one at {redis_url}")
        db_url = os.environ.get("CONDUIT_DATABASE__URL") or f"sqlite:///{workdir / 'history.db'}"
        if db_url.startswith("sqlite:///") and not keep_db:
            for suffix in ("", "-wal", "-shm"):
                Path(db_url.removeprefix("sqlite:///") + suffix).unlink(missing_ok=True)
        replay, replay_url = start_replay_server([SAMPLE], workdir / "replay.log", latency_ms)
        procs.append(replay)
        os.environ["CONDUIT_REPLAY_URL"] = replay_url  # the catalog's ${CONDUIT_REPLAY_URL}
        env = dict(
            os.environ,
            CONDUIT_REDIS__URL=redis_url,
            CONDUIT_DATABASE__URL=db_url,
            CONDUIT_REDIS__KEY_PREFIX=DEMO_PREFIX,
            CONDUIT_REPLAY_URL=replay_url,
        )
        settings = Settings(
            redis=RedisSettings(url=redis_url, key_prefix=DEMO_PREFIX),
            database=DatabaseSettings(url=db_url),
            broker=base.broker,
            catalog=base.catalog,
            router=base.router,
            executor=base.executor,
            feedback=base.feedback,
            limits=base.limits,
        )
        catalog = load_catalog(settings.catalog.path, os.environ)
        store = RedisPosteriorStore.from_url(redis_url, DEMO_PREFIX)
        store.reset(list(catalog.names))
        _say(
            f"replay server at {replay_url}; history in {db_url}; starting a worker "
            f"(logs in {workdir}/worker.log) …"
        )
        worker = start_worker(
            ["route", "execute", "feedback"],
            env,
            workdir / "worker.log",
            concurrency=2,
            name="demo",
        )
        procs.append(worker)
        wait_worker_ready(worker, timeout_s=120)
        summary = _run_waves(ConduitClient(settings), sample, waves)
        _print_summary(summary, catalog.reference)
        _write_report(settings, catalog, workdir / "reports")
        return summary
    finally:
        for p in reversed(procs):
            p.stop()
        _say("stopped everything the demo started")


def _write_report(settings: Settings, catalog: Catalog, out_dir: Path) -> None:
    """Today's cost report of the demo's history, as the nightly task writes it."""
    from datetime import UTC, datetime

    from conduit_workers.history.history import SqlHistory
    from conduit_workers.reports.reporting import build_daily_report

    history = SqlHistory(settings.database.url)
    try:
        out = build_daily_report(datetime.now(UTC).date(), history, catalog, out_dir, owner="demo")
        if out is not None:
            _say(f"today's cost report: {out.folder}/report.html (and report.md, report.csv)")
    finally:
        history.dispose()


def _run_waves(client: ConduitClient, sample: list[dict[str, Any]], waves: int) -> dict[str, Any]:
    from tqdm import tqdm

    labels = {r["id"]: r["models"] for r in sample}
    size = max(1, -(-len(sample) // max(1, waves)))
    rows: list[dict[str, Any]] = []
    per_wave: list[dict[str, int]] = []
    bar = tqdm(
        total=len(sample), desc="answered", unit="prompt", file=sys.stderr, dynamic_ncols=True
    )
    started = time.monotonic()
    try:
        for w in range(0, len(sample), size):
            part = sample[w : w + size]
            sub = client.submit([{"id": r["id"], "prompt": r["prompt"]} for r in part], tag="demo")
            done_before = bar.n

            def show(done: int, total: int, base: int = done_before) -> None:
                bar.update(base + done - bar.n)

            got = client.wait(sub.batch_id, timeout_s=600, poll_s=0.3, on_progress=show)
            rows.extend(got)
            ratings = [
                (r["external_id"], labels[r["external_id"]][r["model"]]["quality"])
                for r in got
                if r["status"] == "ok" and r["model"] in labels[r["external_id"]]
            ]
            client.feedback(ratings)
            counts: dict[str, int] = defaultdict(int)
            for r in got:
                counts[r["model"] or r["status"]] += 1
            per_wave.append(dict(counts))
    finally:
        bar.close()
        client.close()
    return _summarise(rows, labels, per_wave, time.monotonic() - started, client)


def _summarise(
    rows: list[dict[str, Any]],
    labels: dict[str, Any],
    per_wave: list[dict[str, int]],
    elapsed_s: float,
    client: ConduitClient,
) -> dict[str, Any]:
    catalog = client.catalog
    ref = catalog.get(catalog.reference)
    models: dict[str, dict[str, float]] = {}
    for r in rows:
        name = r["model"] if r["status"] == "ok" else f"({r['status']})"
        m = models.setdefault(name, {"prompts": 0, "in": 0, "out": 0, "cost": 0.0, "quality": 0.0})
        m["prompts"] += 1
        m["in"] += r["input_tokens"] or 0
        m["out"] += r["output_tokens"] or 0
        m["cost"] += r["cost_usd"] or 0.0
        if r["status"] == "ok":
            m["quality"] += labels[r["external_id"]][r["model"]]["quality"]
    strongest = {"prompts": 0, "in": 0, "out": 0, "cost": 0.0, "quality": 0.0}
    for r in rows:
        rec = labels[r["external_id"]][ref.name]
        strongest["prompts"] += 1
        strongest["in"] += rec["input_tokens"]
        strongest["out"] += rec["output_tokens"]
        strongest["cost"] += ref.cost_usd(rec["input_tokens"], rec["output_tokens"])
        strongest["quality"] += rec["quality"]
    total_cost = sum(m["cost"] for m in models.values())
    total_q = sum(m["quality"] for m in models.values())
    n = max(1, len(rows))
    return {
        "prompts": len(rows),
        "elapsed_s": round(elapsed_s, 1),
        "models": models,
        "strongest": strongest,
        "per_wave": per_wave,
        "mean_quality": total_q / n,
        "strongest_mean_quality": strongest["quality"] / n,
        "cost_usd": total_cost,
        "strongest_cost_usd": strongest["cost"],
        "cost_saved": 1 - total_cost / strongest["cost"] if strongest["cost"] else 0.0,
        "quality_retained": (total_q / strongest["quality"]) if strongest["quality"] else 0.0,
    }


def _print_summary(s: dict[str, Any], reference: str) -> None:
    out = click.echo
    out("")
    out(f"{s['prompts']} prompts answered in {s['elapsed_s']} s")
    out(f"{'model':42} {'prompts':>7} {'in tok':>8} {'out tok':>8} {'cost USD':>10} {'quality':>8}")
    for name, m in sorted(s["models"].items()):
        q = m["quality"] / m["prompts"] if m["prompts"] else 0.0
        out(
            f"{name:42} {m['prompts']:>7.0f} {m['in']:>8.0f} {m['out']:>8.0f} "
            f"{m['cost']:>10.5f} {q:>8.3f}"
        )
    out(
        f"{'Conduit, all models':42} {s['prompts']:>7} {'':>8} {'':>8} {s['cost_usd']:>10.5f} "
        f"{s['mean_quality']:>8.3f}"
    )
    st = s["strongest"]
    out(
        f"{'always ' + reference:42} {st['prompts']:>7.0f} {st['in']:>8.0f} {st['out']:>8.0f} "
        f"{st['cost']:>10.5f} {s['strongest_mean_quality']:>8.3f}"
    )
    out(
        f"cost saved {100 * s['cost_saved']:.1f}% at {100 * s['quality_retained']:.1f}% of the "
        f"strongest model's quality"
    )
    out(
        "routing per wave: "
        + " | ".join(
            ", ".join(f"{k.split('/')[-1]} {v}" for k, v in sorted(w.items()))
            for w in s["per_wave"]
        )
    )
