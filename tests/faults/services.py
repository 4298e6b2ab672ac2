"""Private Redis and PostgreSQL instances that a fault test may kill and restart at will
(never the shared services on their usual ports)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from producers.local import free_port, redis_answers

PG_BIN = Path(os.environ.get("CONDUIT_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


class PrivateRedis:
    """redis-server on a free port; ``persist`` keeps an append-only file across restarts."""

    def __init__(self, workdir: Path, persist: bool = True) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not installed")
        self.exe = exe
        self.workdir = workdir
        self.persist = persist
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        aof = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self.persist
            else ["--appendonly", "no"]
        )
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(self.workdir),
                *aof,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not redis_answers(self.url, 0.3):
            assert time.monotonic() < deadline, "private Redis did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no shutdown save (the append-only file, if any, has every write)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def wipe(self) -> None:
        """Lose every byte Redis had (the "Redis lost entirely" fault)."""
        for p in self.workdir.glob("appendonly*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        for p in self.workdir.glob("*.rdb"):
            p.unlink()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class PrivatePostgres:
    """A throw-away PostgreSQL cluster on a free port, run as the ``postgres`` OS user."""

    def __init__(self, workdir: Path) -> None:
        if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None or os.geteuid() != 0:
            pytest.skip(f"needs root, runuser and PostgreSQL binaries in {PG_BIN}")
        # Not under pytest's tmp dir: that one is private to root, and postgres must reach it.
        self.dir = Path(tempfile.mkdtemp(prefix="conduit-fault-pg-"))
        self.dir.chmod(0o755)
        shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self.port = free_port()
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        conf = self.data / "postgresql.conf"
        with open(conf, "a") as fh:
            fh.write(
                f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.dir}'\nfsync = off\n"
            )
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        self.start()

    def _pg(self, exe: str, *args: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / exe), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "pg.log"), "-w", "start")

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as when the server goes down."""
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
