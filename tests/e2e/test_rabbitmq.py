"""The broker is a URL: the same system runs on RabbitMQ with nothing else changed."""

from __future__ import annotations

import json
import os
import socket
import uuid
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from conduit_workers.settings import BrokerSettings, DatabaseSettings, RedisSettings, Settings
from producers.api import ConduitClient
from producers.local import start_replay_server, start_worker, wait_worker_ready
from tests.conftest import PG_URL, SAMPLE, TEST_PREFIX

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
AMQP_URL = os.environ.get("CONDUIT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _rabbit_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


def test_batch_runs_with_rabbitmq_as_broker(redis_url, pg_engine, tmp_path):
    if not _rabbit_up():
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672")
        pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672")
    schema = f"amqp_{uuid.uuid4().hex[:10]}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    db_url = f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    procs = []
    try:
        replay, replay_url = start_replay_server([SAMPLE], tmp_path / "replay.log")
        procs.append(replay)
        env = dict(
            os.environ,
            CONDUIT_REDIS__URL=redis_url,
            CONDUIT_DATABASE__URL=db_url,
            CONDUIT_BROKER__URL=AMQP_URL,
            CONDUIT_REDIS__KEY_PREFIX=TEST_PREFIX,
            CONDUIT_REPLAY_URL=replay_url,
            CONDUIT_ROUTER__EMBEDDER="hashing",
        )
        worker = start_worker(
            ["route", "execute", "feedback"], env, tmp_path / "worker.log", name="amqp"
        )
        procs.append(worker)
        wait_worker_ready(worker, timeout_s=120)
        settings = Settings(
            redis=RedisSettings(url=redis_url, key_prefix=TEST_PREFIX),
            database=DatabaseSettings(url=db_url),
            broker=BrokerSettings(url=AMQP_URL),
        )
        client = ConduitClient(settings)
        sample = [json.loads(x) for x in SAMPLE.read_text().splitlines()[:20]]
        sub = client.submit([{"id": r["id"], "prompt": r["prompt"]} for r in sample])
        rows = client.wait(sub.batch_id, timeout_s=120)
        assert len(rows) == 20 and all(r["status"] == "ok" for r in rows)
        assert "amqp://guest:**@127.0.0.1:5672//" in worker.log_path.read_text()
        client.close()
    finally:
        for p in reversed(procs):
            p.stop()
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))
