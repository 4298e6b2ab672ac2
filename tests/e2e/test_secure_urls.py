"""Redis over TLS with a password (``rediss://``), as broker and posterior store, and a
PostgreSQL URL with a password: the system runs, and no secret reaches a log."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest
import redis

from conduit_workers.learning.posterior_store import RedisPosteriorStore
from producers.local import free_port
from tests.conftest import TEST_PREFIX
from tests.e2e.conftest import answer_sample, small_system

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
    # The local server trusts 127.0.0.1, so the password is not checked; what is checked is
    # that a URL carrying one works end to end and never shows in a log.
    with small_system(
        pg_engine,
        tmp_path,
        tls_redis,
        db_url_for=lambda url: url.replace("postgres@", f"postgres:{PASSWORD}@"),
        name="tls",
    ) as (client, worker, settings):
        rows = answer_sample(client)
        assert len(rows) == 20 and all(r["status"] == "ok" for r in rows)
        store = RedisPosteriorStore.from_url(tls_redis, TEST_PREFIX)
        names = list(client.catalog.names)
        deadline = time.monotonic() + 60
        while (
            sum(s.counters["calls"] for _, s in store.read(names, settings.context_dim).values())
            < 20
        ):
            assert time.monotonic() < deadline, "feedback not applied over TLS"
            time.sleep(0.3)
        log = worker.log_path.read_text()
        assert "rediss://:**@127.0.0.1" in log
        assert PASSWORD not in log
