"""The broker is a URL: the same system runs on RabbitMQ with nothing else changed."""

from __future__ import annotations

import os
import socket

import pytest

from tests.e2e.conftest import answer_sample, small_system

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
    with small_system(pg_engine, tmp_path, redis_url, broker_url=AMQP_URL, name="amqp") as (
        client,
        worker,
        _,
    ):
        rows = answer_sample(client)
        assert len(rows) == 20 and all(r["status"] == "ok" for r in rows)
        assert "amqp://guest:**@127.0.0.1:5672//" in worker.log_path.read_text()
