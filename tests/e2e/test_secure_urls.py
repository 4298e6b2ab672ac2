"""Redis over TLS with a password (``rediss://``), as broker and posterior store, and a
PostgreSQL URL with a password: the system runs, and no secret reaches a log."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from urllib.parse import quote

import pytest
import redis
import sqlalchemy as sa

from conduit_workers.adapters.posterior_store import RedisPosteriorStore
from conduit_workers.settings import BrokerSettings, DatabaseSettings, RedisSettings, Settings
from producers.api import ConduitClient
from producers.local import free_port, start_replay_server, start_worker, wait_worker_ready
from tests.conftest import PG_URL, SAMPLE, TEST_PREFIX

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]
PASSWORD = "s3cret-" + uuid.uuid4().hex[:8]


@pytest.fixture
def tls_redis(tmp_path):
    exe, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if not exe or not openssl:
        pytest.skip("needs redis-server and openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(cert),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_cert_reqs=none"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
            break
        except (redis.RedisError, OSError):
            assert time.monotonic() < deadline, "TLS redis-server did not start"
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def test_batch_runs_over_tls_redis_and_password_urls(tls_redis, pg_engine, tmp_path):
    plain = redis.Redis.from_url(
        tls_redis.replace("rediss://", "redis://").split("?")[0], socket_timeout=1
    )
    with pytest.raises((redis.RedisError, OSError)):
        plain.ping()  # the port speaks TLS only
    schema = f"tls_{uuid.uuid4().hex[:10]}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    # The local server trusts 127.0.0.1, so the password is not checked; what is checked is
    # that a URL carrying one works end to end and never shows in a log.
    db_url = PG_URL.replace("postgres@", f"postgres:{PASSWORD}@")
    db_url = f"{db_url}?options={quote(f'-csearch_path={schema}')}"
    procs = []
    try:
        replay, replay_url = start_replay_server([SAMPLE], tmp_path / "replay.log")
        procs.append(replay)
        env = dict(
            os.environ,
            CONDUIT_REDIS__URL=tls_redis,
            CONDUIT_DATABASE__URL=db_url,
            CONDUIT_REDIS__KEY_PREFIX=TEST_PREFIX,
            CONDUIT_REPLAY_URL=replay_url,
            CONDUIT_ROUTER__EMBEDDER="hashing",
        )
        env.pop("CONDUIT_BROKER__URL", None)
        worker = start_worker(
            ["route", "execute", "feedback"], env, tmp_path / "worker.log", name="tls"
        )
        procs.append(worker)
        wait_worker_ready(worker, timeout_s=120)
        settings = Settings(
            redis=RedisSettings(url=tls_redis, key_prefix=TEST_PREFIX),
            database=DatabaseSettings(url=db_url),
            broker=BrokerSettings(url=None),
        )
        client = ConduitClient(settings)
        sample = [json.loads(x) for x in SAMPLE.read_text().splitlines()[:20]]
        sub = client.submit([{"id": r["id"], "prompt": r["prompt"]} for r in sample])
        rows = client.wait(sub.batch_id, timeout_s=120)
        assert len(rows) == 20 and all(r["status"] == "ok" for r in rows)
        store = RedisPosteriorStore.from_url(tls_redis, TEST_PREFIX)
        deadline = time.monotonic() + 60
        while (
            sum(
                s.counters["calls"]
                for _, s in store.read(list(client.catalog.names), settings.context_dim).values()
            )
            < 20
        ):
            assert time.monotonic() < deadline, "feedback not applied over TLS"
            time.sleep(0.3)
        client.close()
        log = worker.log_path.read_text()
        assert "rediss://:**@127.0.0.1" in log
        assert PASSWORD not in log
    finally:
        for p in reversed(procs):
            p.stop()
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))
