"""A key's daily budget under a race: several `conduit serve` processes and hundreds of
concurrent requests for one key's last cents. Nothing may be spent past the budget, neither by
the ledger's count nor by the history's record of what the calls cost."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import openai
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import func, select

from conduit_workers.execution.batch_ledger import RedisBatchLedger
from conduit_workers.gateway.service import utc_day
from conduit_workers.history import history_schema as t
from conduit_workers.history.history_gateway import GatewayHistory
from conduit_workers.replay import ReplayConfig
from conduit_workers.replay.profile import ModelProfile
from tests.conftest import PG_URL, REDIS_URL, TEST_PREFIX
from tests.gateway_harness import start_gateway_processes, write_catalog
from tests.replay_harness import start_replay, write_replay_data

pytestmark = pytest.mark.integration

SERVERS = int(os.environ.get("CONDUIT_TEST_GATEWAY_SERVERS", "4"))
REQUESTS = 256
BUDGET_USD = 1.0
ALREADY_SPENT_USD = 0.98  # the key's earlier calls today: 2 cents are left to race for


def test_concurrent_requests_over_several_servers_never_overshoot_a_key_budget(
    redis_client: redis.Redis, pg_engine: sa.Engine, tmp_path: Path
) -> None:
    schema = f"gwb_{uuid.uuid4().hex[:10]}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    db_url = f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    redis_client.flushdb()
    replay = start_replay(
        ReplayConfig(
            data_paths=[write_replay_data(tmp_path / "data.jsonl")],
            profiles={"*": ModelProfile(latency_ms=20, jitter_ms=10)},
        )
    )
    history = GatewayHistory(db_url, retry_for_s=5)
    history.create_schema()
    _, key = history.create_key("racer", budget_usd_per_day=BUDGET_USD)
    env = dict(
        os.environ,
        CONDUIT_REDIS__URL=REDIS_URL,
        CONDUIT_REDIS__KEY_PREFIX=TEST_PREFIX,
        CONDUIT_DATABASE__URL=db_url,
        CONDUIT_CATALOG__PATH=str(write_catalog(tmp_path / "catalog.toml", replay.v1)),
        CONDUIT_ROUTER__EMBEDDER="hashing",
        CONDUIT_LOG_LEVEL="WARNING",
    )
    servers = []
    try:
        servers = start_gateway_processes(SERVERS, env, tmp_path)
        urls = [url for _, url in servers]
        statuses = asyncio.run(_race(urls, key))
        assert statuses[200] > 0 and statuses[429] > 0, statuses
        assert statuses[200] + statuses[429] == REQUESTS, statuses
        # A server settles its holds and writes its rows before it exits.
        for proc, _ in servers:
            proc.stop()
        ledger = RedisBatchLedger(redis.Redis.from_url(REDIS_URL), TEST_PREFIX, 3600)
        state = ledger.states([_scope()])[_scope()]
        spent = state.spent_usd
        assert state.reserved_usd == 0.0  # every hold settled
        assert spent <= BUDGET_USD
        # The truth: what the history says the answered calls cost.
        with history.engine.connect() as conn:
            rows = conn.execute(
                select(func.count(), func.coalesce(func.sum(t.results.c.cost_usd), 0.0))
                .select_from(
                    t.results.join(t.batch_items, t.batch_items.c.query_id == t.results.c.query_id)
                )
                .where(t.batch_items.c.batch_id == f"api-racer-{utc_day()}")
            ).one()
        assert rows[0] == statuses[200]
        assert ALREADY_SPENT_USD + rows[1] <= BUDGET_USD
        assert spent == pytest.approx(ALREADY_SPENT_USD + rows[1], abs=1e-6)
    finally:
        for proc, _ in servers:
            proc.stop()
        replay.stop()
        history.dispose()
        redis_client.flushdb()
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))


def _scope() -> str:
    """The key's ledger scope of today."""
    return f"apikey:racer:{utc_day()}"


async def _race(urls: list[str], key: str) -> Counter[int]:
    ledger = RedisBatchLedger(redis.Redis.from_url(REDIS_URL), TEST_PREFIX, 3600)
    scope = _scope()
    assert ledger.reserve(scope, BUDGET_USD, "earlier", ALREADY_SPENT_USD, 60).held
    assert ledger.settle(scope, "earlier", ALREADY_SPENT_USD)
    clients = [openai.AsyncOpenAI(base_url=u, api_key=key, max_retries=0) for u in urls]
    statuses: Counter[int] = Counter()
    start = asyncio.Event()

    async def one(i: int) -> None:
        await start.wait()
        try:
            await clients[i % len(clients)].chat.completions.create(
                model="strong",
                messages=[{"role": "user", "content": f"Request {i}: name one prime number."}],
                max_tokens=16,
            )
            statuses[200] += 1
        except openai.RateLimitError:
            statuses[429] += 1

    tasks = [asyncio.create_task(one(i)) for i in range(REQUESTS)]
    await asyncio.sleep(0.1)
    start.set()
    await asyncio.gather(*tasks)
    for c in clients:
        await c.close()
    return statuses
