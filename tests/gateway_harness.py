"""``conduit serve`` for tests: the application under a real uvicorn server on a free port of
127.0.0.1 (in a thread, or as `conduit serve` subprocesses), over the replay server, with a
catalog of the replay data's two models ('strong' 10/30 USD and 'cheap' 0.6/0.6 USD per
million tokens)."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from conduit_workers.gateway.app import create_app
from conduit_workers.settings import Settings
from producers.local import Proc, free_port

STRONG_PRICES = (10.0, 30.0)
CHEAP_PRICES = (0.6, 0.6)


def write_catalog(path: Path, replay_v1: str) -> Path:
    path.write_text(
        f"""version = "test"
reference = "strong"

[[models]]
name = "strong"
provider = "openai-compatible"
base_url = "{replay_v1}"
input_price_per_mtok_usd = {STRONG_PRICES[0]}
output_price_per_mtok_usd = {STRONG_PRICES[1]}

[[models]]
name = "cheap"
provider = "openai-compatible"
base_url = "{replay_v1}"
input_price_per_mtok_usd = {CHEAP_PRICES[0]}
output_price_per_mtok_usd = {CHEAP_PRICES[1]}
""",
        encoding="utf-8",
    )
    return path


@dataclass
class RunningGateway:
    base_url: str  # http://127.0.0.1:PORT
    stop: Callable[[], None]

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"


def start_gateway(settings: Settings) -> RunningGateway:
    """The app under uvicorn in a thread of its own (own event loop), until ``stop()``."""
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(server.serve())
        except BaseException as exc:  # surfaced below instead of dying silently
            errors.append(exc)

    thread = threading.Thread(target=run, name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError(f"gateway did not start: {errors[:1]}")
        if time.monotonic() > deadline:
            raise RuntimeError("gateway did not start within 60 s")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]

    def stop() -> None:
        server.should_exit = True
        thread.join(30)

    return RunningGateway(f"http://127.0.0.1:{port}", stop)


def queued_tasks(redis_client: Any, queue: str) -> list[tuple[str, Any]]:
    """(task name, first argument) of the messages waiting in a Celery queue on the Redis broker."""
    out = []
    for raw in redis_client.lrange(queue, 0, -1):
        msg = json.loads(raw)
        body = json.loads(base64.b64decode(msg["body"]))
        out.append((msg["headers"]["task"], body[0][0]))  # the first positional argument
    return out


def start_gateway_processes(n: int, env: dict[str, str], workdir: Path) -> list[tuple[Proc, str]]:
    """``n`` `conduit serve` processes, each on a free port; (process, its /v1 URL) once every
    one answers /healthz (they start at once: the machine's cores share the imports)."""
    procs: list[tuple[Proc, str]] = []
    for i in range(n):
        port = free_port()
        log_path = workdir / f"serve-{i}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed by Proc.stop
        popen = subprocess.Popen(
            [sys.executable, "-m", "producers.cli", "serve", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        procs.append((Proc(f"serve-{i}", popen, log_path, log), f"http://127.0.0.1:{port}/v1"))
    deadline = time.monotonic() + 180
    for proc, url in procs:
        while True:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
            try:
                with urllib.request.urlopen(url.removesuffix("/v1") + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not answer within 180 s:\n{proc.tail()}")
            time.sleep(0.2)
    return procs
