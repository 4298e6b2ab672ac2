"""Start and stop Conduit's processes on this machine: a private Redis, the replay server,
workers. Used by ``conduit demo`` and by the end-to-end tests, so both run the system as a
user would."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import redis

from conduit_workers.errors import ConfigError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    try:
        return bool(
            redis.Redis.from_url(
                url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
            ).ping()
        )
    except (redis.RedisError, OSError, ValueError):
        return False


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM (a Celery worker's warm shutdown), then SIGKILL after ``timeout_s``."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if self._log is not None:
            self._log.close()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path | None) -> Proc:
    log = open(log_path, "wb") if log_path else None  # noqa: SIM115
    popen = subprocess.Popen(
        list(argv),
        env=dict(env),
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        start_new_session=True,
    )
    return Proc(name, popen, log_path, log)


def start_private_redis(workdir: Path) -> tuple[Proc, str]:
    """A throw-away redis-server on a free port (nothing on disk); its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise ConfigError(
            "no Redis answers at CONDUIT_REDIS__URL and redis-server is not installed: "
            "install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) "
            "or set CONDUIT_REDIS__URL to a running Redis"
        )
    port = free_port()
    proc = _spawn(
        "redis",
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        os.environ,
        workdir / "redis.log",
    )
    url = f"redis://127.0.0.1:{port}/0"
    _wait(lambda: redis_answers(url), 10, "private Redis", proc)
    return proc, url


def start_replay_server(
    data: Sequence[Path],
    log_path: Path,
    latency_ms: float = 0.0,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> tuple[Proc, str]:
    """The replay server on a free port; its base URL (``http://127.0.0.1:PORT/v1``)."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "conduit_workers.replay",
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
        *extra_args,
    ]
    for p in data:
        argv += ["--data", str(p)]
    proc = _spawn("replay-server", argv, env or os.environ, log_path)
    base = f"http://127.0.0.1:{port}/v1"

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    _wait(up, 30, "replay server", proc)
    return proc, base


def start_worker(
    queues: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    *,
    concurrency: int | None = 2,
    name: str = "conduit",
    pool: str = "prefork",
    extra_args: Sequence[str] = (),
) -> Proc:
    """``celery -A conduit_workers worker -Q …`` as a subprocess (``concurrency`` None: no
    ``-c``, the worker's default; an executor's is ``executor.pool_tasks``)."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "conduit_workers",
        "worker",
        "-Q",
        ",".join(queues),
        *(["-c", str(concurrency)] if concurrency else []),
        "-P",
        pool,
        "-n",
        f"{name}-{os.getpid()}-{free_port()}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
        *extra_args,
    ]
    return _spawn(f"worker[{','.join(queues)}]", argv, env, log_path)


def wait_worker_ready(proc: Proc, timeout_s: float = 60.0) -> None:
    """Wait until the worker's log says it is ready to consume."""
    ready = re.compile(r"\bready\.")
    _wait(
        lambda: bool(
            proc.log_path
            and proc.log_path.exists()
            and ready.search(proc.log_path.read_text(errors="replace"))
        ),
        timeout_s,
        proc.name,
        proc,
    )


def _wait(cond: object, timeout_s: float, what: str, proc: Proc) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        if not proc.alive():
            raise ConfigError(f"{what} exited with code {proc.popen.returncode}:\n{proc.tail()}")
        time.sleep(0.1)
    raise ConfigError(f"{what} not ready after {timeout_s:.0f} s:\n{proc.tail()}")
