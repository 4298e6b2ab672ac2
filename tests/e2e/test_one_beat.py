"""One beat: a second beat started beside the first waits on the Redis lock and sends nothing;
when the first is killed, the second takes over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.conftest import TEST_PREFIX

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]
SENT = "Sending due task"


def _beat(workdir: Path, name: str, redis_url: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = dict(
        os.environ,
        CONDUIT_REDIS__URL=redis_url,
        CONDUIT_REDIS__KEY_PREFIX=TEST_PREFIX,
        CONDUIT_DATABASE__URL=f"sqlite:///{workdir / 'h.db'}",
        CONDUIT_FEEDBACK__SWEEP_INTERVAL_S="1",
        CONDUIT_REPORTS__SCHEDULE="false",
        CONDUIT_BEAT__LOCK_TTL_S="3",
    )
    log = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "celery", "-A", "conduit_workers", "beat", "--loglevel", "INFO"]
    argv += ["-s", str(workdir / f"{name}-schedule")]
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            argv, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc, log


def _until(what: str, check: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what} not seen in {timeout_s} s"
        time.sleep(0.2)


def test_a_second_beat_waits_and_takes_over(redis_url: str, tmp_path: Path) -> None:
    first, first_log = _beat(tmp_path, "first", redis_url)
    second = None
    try:
        _until("the first beat sending", lambda: SENT in first_log.read_text())
        second, second_log = _beat(tmp_path, "second", redis_url)
        _until("the second beat waiting", lambda: "another beat holds" in second_log.read_text())
        sent_before = first_log.read_text().count(SENT)
        _until("three more sweeps", lambda: first_log.read_text().count(SENT) >= sent_before + 3)
        assert SENT not in second_log.read_text()  # it waited through them
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        _until("the second beat taking over", lambda: SENT in second_log.read_text())
        holder = redis.Redis.from_url(redis_url).get(f"{TEST_PREFIX}:beat:lock")
        assert holder is not None and str(second.pid).encode() in holder
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
