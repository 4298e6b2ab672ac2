"""Closed by default: Flower and the metrics exporter listen on 127.0.0.1 unless told
otherwise; Flower without a login refuses to start (one line saying what to set) unless it is
opened on purpose, and with a login every page, not only /api, asks for it."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from producers.local import free_port
from tests.conftest import TEST_PREFIX

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
AUTH = "ops:s3cret-closed"
PAGES = ("/", "/tasks", "/tasks/datatable", "/broker", "/workers", "/worker/w1", "/api/tasks")


def _env(redis_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWER_", "CONDUIT_"))}
    return dict(
        env,
        CONDUIT_REDIS__URL=redis_url,
        CONDUIT_REDIS__KEY_PREFIX=TEST_PREFIX,
        CONDUIT_DATABASE__URL=f"sqlite:///{tmp_path / 'h.db'}",
        **extra,
    )


def _status(url: str, auth: str | None = None) -> int:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except urllib.error.URLError:
        return 0


def _listening(port: int) -> list[str]:
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    return [f.split()[3] for f in out.splitlines() if f.split()[3].endswith(f":{port}")]


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            argv, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def _serve(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while _status(url) == 0:
        assert proc.poll() is None, log.read_text()[-2000:]
        assert time.monotonic() < deadline, "not listening in 60 s"
        time.sleep(0.3)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


FLOWER = [sys.executable, "-m", "celery", "-A", "conduit_workers", "flower"]


def test_flower_without_a_login_refuses_to_start(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    out = subprocess.run(
        FLOWER,
        env=_env(redis_url, tmp_path, CONDUIT_FLOWER__PORT=str(port)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "CONDUIT_FLOWER__BASIC_AUTH" in out.stderr and "Traceback" not in out.stderr
    assert _listening(port) == []


def test_flower_with_a_login_guards_every_page_on_localhost(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = _env(redis_url, tmp_path, CONDUIT_FLOWER__PORT=str(port), CONDUIT_FLOWER__BASIC_AUTH=AUTH)
    log = tmp_path / "flower.log"
    proc = _start(FLOWER, env, log)
    try:
        base = f"http://127.0.0.1:{port}"
        _serve(proc, base + "/healthcheck", log)
        assert _listening(port) == [f"127.0.0.1:{port}"]
        for page in PAGES:
            assert _status(base + page) == 401, page
        assert _status(base + "/", AUTH) == 200
    finally:
        _stop(proc)


def test_flower_opened_on_purpose(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = _env(redis_url, tmp_path, CONDUIT_FLOWER__PORT=str(port), CONDUIT_FLOWER__OPEN="true")
    log = tmp_path / "flower.log"
    proc = _start(FLOWER, env, log)
    try:
        _serve(proc, f"http://127.0.0.1:{port}/healthcheck", log)
        assert _status(f"http://127.0.0.1:{port}/") == 200
        assert "without a login" in log.read_text()  # said on purpose, in its log
    finally:
        _stop(proc)


def test_the_exporter_listens_on_localhost(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "metrics.log"
    argv = [sys.executable, "-m", "producers.cli", "metrics", "--port", str(port)]
    proc = _start(argv, _env(redis_url, tmp_path), log)
    try:
        _serve(proc, f"http://127.0.0.1:{port}/metrics", log)
        assert _listening(port) == [f"127.0.0.1:{port}"]
    finally:
        _stop(proc)
