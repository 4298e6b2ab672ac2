"""One batch budget, many processes racing for it: router and executor workers as real Celery
subprocesses (three router and six executor processes), the replay server as the LLM. The
batch never spends more than its budget, every prompt ends answered or ``over_budget``, and
every call the LLM server saw is counted."""

from __future__ import annotations

import json
import os
import re
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import sqlalchemy as sa

from conduit_workers.domain.budget import to_nano, worst_case_cost_usd, worst_input_tokens
from conduit_workers.domain.catalog import load_catalog
from conduit_workers.domain.constraints import Constraints
from conduit_workers.execution.batch_ledger import RedisBatchLedger
from conduit_workers.history import history_schema as t
from conduit_workers.settings import DEFAULT_CATALOG, DatabaseSettings, RedisSettings, Settings
from producers.api import ConduitClient
from producers.local import Proc, start_replay_server, start_worker, wait_worker_ready
from tests.conftest import PG_URL, SAMPLE, TEST_PREFIX

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
BUDGET_USD = 0.02  # below even always-Mixtral's cost of the 400 prompts (~$0.028)
EXECUTORS = 3


@pytest.fixture
def racing(
    redis_url: str, pg_engine: sa.Engine, tmp_path: Path
) -> Iterator[tuple[ConduitClient, str, list[Proc]]]:
    schema = f"race_{uuid.uuid4().hex[:10]}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    db_url = f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    procs: list[Proc] = []
    try:
        replay, replay_url = start_replay_server([SAMPLE], tmp_path / "replay.log", latency_ms=20)
        procs.append(replay)
        env = dict(
            os.environ,
            CONDUIT_REDIS__URL=redis_url,
            CONDUIT_DATABASE__URL=db_url,
            CONDUIT_REDIS__KEY_PREFIX=TEST_PREFIX,
            CONDUIT_REPLAY_URL=replay_url,
            CONDUIT_ROUTER__EMBEDDER="hashing",
            CONDUIT_ROUTER__CHUNK_SIZE="16",
            CONDUIT_EXECUTOR__CHUNK_SIZE="8",
            CONDUIT_EXECUTOR__CONCURRENCY="8",
            # MMLU answers are one letter: a small output cap keeps the worst case close to
            # the real cost, so that many calls are in flight near the end of the budget.
            CONDUIT_BUDGET__MAX_OUTPUT_TOKENS="16",
        )
        env.pop("CONDUIT_BROKER__URL", None)
        workers = [
            start_worker(["route", "feedback"], env, tmp_path / "router-0.log", name="r0"),
            start_worker(["route"], env, tmp_path / "router-1.log", concurrency=1, name="r1"),
        ] + [
            # Prefork: two processes per worker, each with its own event loop, Redis and
            # database connections: six executor processes race for the budget.
            start_worker(["execute"], env, tmp_path / f"executor-{i}.log", name=f"x{i}")
            for i in range(EXECUTORS)
        ]
        procs += workers
        for w in workers:
            wait_worker_ready(w, timeout_s=180)
        settings = Settings(
            redis=RedisSettings(url=redis_url, key_prefix=TEST_PREFIX),
            database=DatabaseSettings(url=db_url),
        )
        client = ConduitClient(settings)
        yield client, replay_url, procs
        client.close()
    finally:
        for p in reversed(procs):
            p.stop()
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))


def test_many_processes_racing_for_one_budget_never_overshoot(racing, redis_url) -> None:  # type: ignore[no-untyped-def]
    client, replay_url, procs = racing
    items = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    # λ_cost 0: the router routes on quality alone, so the dear model spends the budget fast.
    sub = client.submit(items, constraints=Constraints(lambda_cost=0.0), budget_usd=BUDGET_USD)
    assert sub.accepted == len(items) == 400
    rows = client.wait(sub.batch_id, timeout_s=600)

    status = Counter((r["status"], r["model"]) for r in rows)
    spend = sum(r["cost_usd"] or 0.0 for r in rows)
    ledger = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)
    state = ledger.states([sub.batch_id])[sub.batch_id]
    with urllib.request.urlopen(replay_url.removesuffix("/v1") + "/_replay/stats") as resp:
        calls = json.loads(resp.read())["calls"]
    print(
        f"budget ${BUDGET_USD}: results spend ${spend:.6f}, ledger spent ${state.spent_usd:.6f} "
        f"in {state.calls} calls, held ${state.reserved_usd:.6f}, {calls} LLM calls; {status}"
    )

    assert {s for s, _ in status} <= {"ok", "over_budget"}
    assert sum(status.values()) == 400
    assert status["over_budget", None] >= 1  # the budget ran out
    assert spend <= BUDGET_USD  # 0 overshoot
    assert state.spent_usd <= BUDGET_USD
    assert state.reserved_usd == 0 and state.expired == 0
    assert to_nano(state.spent_usd) >= to_nano(spend) - len(rows)  # the ledger rounds up
    # And used: what is left pays for no call of an over_budget prompt, even on the cheapest
    # model (a prompt kept out only by calls in flight waited for them to settle).
    cheap = load_catalog(DEFAULT_CATALOG, os.environ).get("mistralai/Mixtral-8x7B-Instruct-v0.1")
    prompts = {i["id"]: i["prompt"] for i in items}
    smallest_refused = min(
        worst_case_cost_usd(cheap, worst_input_tokens(prompts[r["external_id"]], 32), 16)
        for r in rows
        if r["status"] == "over_budget"
    )
    assert BUDGET_USD - state.spent_usd < smallest_refused
    # Every call the LLM server answered is a counted, settled call: none outside the ledger.
    ok = sum(n for (s, _), n in status.items() if s == "ok")
    assert calls == ok == state.calls
    # It was a race: several executor processes (worker log, pool process) made calls for it.
    answered_by = {
        (p.log_path.name, m.group(1))
        for p in procs
        if p.name.startswith("worker[execute") and p.log_path is not None
        for m in re.finditer(
            r"INFO/(ForkPoolWorker-\d+)\] execute_batch \S+: \d+ prompts, [1-9]",
            p.log_path.read_text(errors="replace"),
        )
    }
    print(f"executor processes that answered prompts: {len(answered_by)}")
    assert len(answered_by) >= 3
    with client.history.engine.connect() as conn:
        over = conn.scalar(
            sa.select(sa.func.count())
            .select_from(t.results)
            .where(t.results.c.status == "over_budget", t.results.c.attempts == 0)
        )
    assert over == status["over_budget", None]
