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
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import openai
import redis
import sqlalchemy as sa
import uvicorn
from sqlalchemy import select

from conduit_workers.gateway.app import create_app
from conduit_workers.history.history_gateway import GatewayHistory
from conduit_workers.replay import ModelProfile, ReplayConfig
from conduit_workers.settings import (
    CatalogSettings,
    DatabaseSettings,
    GatewaySettings,
    RedisSettings,
    RouterSettings,
    Settings,
)
from producers.local import Proc, free_port
from tests.conftest import PG_URL, REDIS_URL, TEST_PREFIX
from tests.replay_harness import start_replay, write_replay_data

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


@dataclass
class Api:
    url: str  # the gateway's /v1
    history: GatewayHistory
    keys: dict[str, str]  # name -> key
    redis: redis.Redis
    catalog: Path

    def client(self, key: str | None = "main", **kw: Any) -> openai.OpenAI:
        secret = self.keys[key] if key in self.keys else (key or "none")
        kw.setdefault("max_retries", 0)
        return openai.OpenAI(base_url=self.url, api_key=secret, **kw)

    def rows(self, table: sa.Table, query_id: str, timeout_s: float = 10) -> list[Any]:
        """The rows of ``table`` for a call, once the writer behind the response wrote them."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self.history.engine.connect() as conn:
                key = table.c.query_id if "query_id" in table.c else table.c.id
                rows = list(conn.execute(select(table).where(key == query_id)))
            if rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


@contextmanager
def running_api(
    redis_client: redis.Redis,
    pg_engine: sa.Engine,
    tmp: Path,
    profiles: Mapping[str, ModelProfile] | None = None,
) -> Iterator[Api]:
    """The gateway in a thread over the replay server, a fresh PostgreSQL schema and the test
    Redis db; keys 'main', 'broke' (budget 0) and 'cheap-only' (allowed models: cheap).
    ``profiles``: the replay server's latency and faults per model (none by default)."""
    schema = f"gw_{uuid.uuid4().hex[:10]}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    db_url = f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    redis_client.flushdb()
    data = [write_replay_data(tmp / "data.jsonl")]
    replay = start_replay(
        ReplayConfig(data_paths=data, profiles=profiles) if profiles else ReplayConfig(data)
    )
    settings = Settings(
        redis=RedisSettings(url=REDIS_URL, key_prefix=TEST_PREFIX),
        database=DatabaseSettings(url=db_url),
        catalog=CatalogSettings(path=write_catalog(tmp / "catalog.toml", replay.v1)),
        router=RouterSettings(embedder="hashing", seed=3),
        gateway=GatewaySettings(key_cache_s=0.0),
    )
    history = GatewayHistory(db_url, retry_for_s=5)
    history.create_schema()
    keys = {
        "main": history.create_key("main")[1],
        "broke": history.create_key("broke", budget_usd_per_day=0.0)[1],
        "cheap-only": history.create_key("cheap-only", allowed_models=["cheap"])[1],
    }
    gateway = start_gateway(settings)
    try:
        yield Api(f"{gateway.base_url}/v1", history, keys, redis_client, settings.catalog.path)
    finally:
        gateway.stop()
        replay.stop()
        history.dispose()
        redis_client.flushdb()
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))
