"""A running Conduit: the replay server and real Celery workers as subprocesses, on the test
Redis db and a fresh PostgreSQL schema."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
import sqlalchemy as sa

from conduit_workers.learning.posterior_store import RedisPosteriorStore
from conduit_workers.settings import (
    BrokerSettings,
    DatabaseSettings,
    RedisSettings,
    RouterSettings,
    Settings,
)
from producers.api import ConduitClient
from producers.local import Proc, start_replay_server, start_worker, wait_worker_ready
from tests.conftest import PG_URL, REDIS_URL, SAMPLE, TEST_PREFIX


@dataclass
class System:
    settings: Settings
    env: dict[str, str]
    client: ConduitClient
    store: RedisPosteriorStore
    replay_url: str
    workdir: Path
    procs: list[Proc]


@pytest.fixture(scope="module")
def system(redis_client: redis.Redis, pg_engine: sa.Engine, tmp_path_factory) -> Iterator[System]:
    workdir = tmp_path_factory.mktemp("e2e")
    schema = f"e2e_{uuid.uuid4().hex[:10]}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    db_url = f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    redis_client.flushdb()
    procs: list[Proc] = []
    try:
        replay, replay_url = start_replay_server([SAMPLE], workdir / "replay.log", latency_ms=5)
        procs.append(replay)
        env = dict(
            os.environ,
            CONDUIT_REDIS__URL=REDIS_URL,
            CONDUIT_DATABASE__URL=db_url,
            CONDUIT_REDIS__KEY_PREFIX=TEST_PREFIX,
            CONDUIT_REPLAY_URL=replay_url,
            CONDUIT_ROUTER__SEED="7",
            # No forgetting here, so the posteriors must equal the feedback sums exactly;
            # decay itself is tested on the Lua script (test_posterior_store.py).
            CONDUIT_ROUTER__DECAY="1.0",
        )
        os.environ["CONDUIT_REPLAY_URL"] = replay_url
        worker = start_worker(
            ["route", "execute", "feedback"], env, workdir / "worker.log", concurrency=2, name="e2e"
        )
        procs.append(worker)
        wait_worker_ready(worker, timeout_s=120)
        settings = Settings(
            redis=RedisSettings(url=REDIS_URL, key_prefix=TEST_PREFIX),
            database=DatabaseSettings(url=db_url),
            router=RouterSettings(seed=7, decay=1.0),
        )
        client = ConduitClient(settings)
        store = RedisPosteriorStore.from_url(REDIS_URL, TEST_PREFIX)
        yield System(settings, env, client, store, replay_url, workdir, procs)
        client.close()
    finally:
        for p in reversed(procs):
            p.stop()
        if any(p.name.startswith("worker") for p in procs):
            print("--- worker log tail ---\n" + procs[-1].tail(40))
        redis_client.flushdb()
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))


@contextmanager
def small_system(
    pg_engine: sa.Engine,
    tmp_path: Path,
    redis_url: str,
    *,
    broker_url: str | None = None,
    db_url_for: Callable[[str], str] = lambda url: url,
    name: str = "small",
) -> Iterator[tuple[ConduitClient, Proc, Settings]]:
    """A replay server and one worker on all queues (hashing embedder), with a fresh schema:
    for checks that the system runs on another broker or over other URLs."""
    schema = f"{name}_{uuid.uuid4().hex[:10]}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    db_url = f"{db_url_for(PG_URL)}?options={quote(f'-csearch_path={schema}')}"
    procs: list[Proc] = []
    try:
        replay, replay_url = start_replay_server([SAMPLE], tmp_path / "replay.log")
        procs.append(replay)
        env = dict(
            os.environ,
            CONDUIT_REDIS__URL=redis_url,
            CONDUIT_DATABASE__URL=db_url,
            CONDUIT_REDIS__KEY_PREFIX=TEST_PREFIX,
            CONDUIT_REPLAY_URL=replay_url,
            CONDUIT_ROUTER__EMBEDDER="hashing",
        )
        env.pop("CONDUIT_BROKER__URL", None)
        if broker_url:
            env["CONDUIT_BROKER__URL"] = broker_url
        worker = start_worker(
            ["route", "execute", "feedback"], env, tmp_path / "worker.log", name=name
        )
        procs.append(worker)
        wait_worker_ready(worker, timeout_s=120)
        settings = Settings(
            redis=RedisSettings(url=redis_url, key_prefix=TEST_PREFIX),
            database=DatabaseSettings(url=db_url),
            broker=BrokerSettings(url=broker_url),
        )
        client = ConduitClient(settings)
        yield client, worker, settings
        client.close()
    finally:
        for p in reversed(procs):
            p.stop()
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))


def answer_sample(client: ConduitClient, n: int = 20) -> list[dict]:
    """Submit the first ``n`` prompts of the shipped sample and wait for their results."""
    import json

    sample = [json.loads(x) for x in SAMPLE.read_text().splitlines()[:n]]
    sub = client.submit([{"id": r["id"], "prompt": r["prompt"]} for r in sample])
    return client.wait(sub.batch_id, timeout_s=120)
