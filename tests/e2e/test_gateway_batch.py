"""The Batch API end to end with the openai SDK: an OpenAI batch input file uploaded and run on
real Celery workers (route → execute → feedback) against the replay server; the output file
answers every valid custom_id exactly once with the line's own settings, the error file names
the refused lines, feedback by custom_id, and cancel stops what has not started."""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx2
import openai
import pytest
import redis
import sqlalchemy as sa

from conduit_workers.replay import ReplayConfig
from conduit_workers.replay.profile import ModelProfile
from conduit_workers.settings import (
    CatalogSettings,
    DatabaseSettings,
    GatewaySettings,
    RedisSettings,
    RouterSettings,
    Settings,
)
from producers.local import Proc, start_worker, wait_worker_ready
from tests.conftest import PG_URL, REDIS_URL, TEST_PREFIX
from tests.gateway_harness import start_gateway, write_catalog
from tests.replay_harness import RunningServer, start_replay, write_replay_data

pytestmark = pytest.mark.e2e


@dataclass
class Deployment:
    client: openai.OpenAI
    replay: RunningServer


@pytest.fixture(scope="module")
def deployment(
    redis_client: redis.Redis, pg_engine: sa.Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("gwbatch")
    schema = f"gwe_{uuid.uuid4().hex[:10]}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    db_url = f"{PG_URL}?options={quote(f'-csearch_path={schema}')}"
    redis_client.flushdb()
    replay = start_replay(
        ReplayConfig(
            data_paths=[write_replay_data(tmp / "data.jsonl")],
            # 'cheap' is slow: the cancel test stops its batch while most of it waits.
            profiles={"*": ModelProfile(latency_ms=5), "cheap": ModelProfile(latency_ms=1500)},
        )
    )
    catalog = write_catalog(tmp / "catalog.toml", replay.v1)
    env = dict(
        os.environ,
        CONDUIT_REDIS__URL=REDIS_URL,
        CONDUIT_REDIS__KEY_PREFIX=TEST_PREFIX,
        CONDUIT_DATABASE__URL=db_url,
        CONDUIT_CATALOG__PATH=str(catalog),
        CONDUIT_ROUTER__EMBEDDER="hashing",
        CONDUIT_EXECUTOR__CONCURRENCY="2",
        CONDUIT_EXECUTOR__CHUNK_SIZE="4",
        CONDUIT_ROUTER__CHUNK_SIZE="4",
    )
    settings = Settings(
        redis=RedisSettings(url=REDIS_URL, key_prefix=TEST_PREFIX),
        database=DatabaseSettings(url=db_url),
        catalog=CatalogSettings(path=catalog),
        router=RouterSettings(embedder="hashing", chunk_size=4),
        gateway=GatewaySettings(key_cache_s=0.0),
    )
    procs: list[Proc] = []
    gateway = None
    try:
        gateway = start_gateway(settings)
        from conduit_workers.history.history_gateway import GatewayHistory

        history = GatewayHistory(db_url, retry_for_s=5)
        _, key = history.create_key("batcher")
        history.dispose()
        worker = start_worker(
            ["route", "execute", "feedback"], env, tmp / "worker.log", concurrency=2, name="gwb"
        )
        procs.append(worker)
        wait_worker_ready(worker, timeout_s=120)
        yield Deployment(openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0), replay)
    finally:
        for p in procs:
            p.stop()
        if gateway is not None:
            gateway.stop()
        replay.stop()
        redis_client.flushdb()
        with pg_engine.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))


def _line(cid: str, body: dict[str, Any]) -> str:
    return json.dumps(
        {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def _wait(client: openai.OpenAI, batch_id: str, statuses: set[str], timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch.request_counts}"
        time.sleep(0.5)


def _jsonl(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_an_openai_batch_file_runs_unchanged(deployment: Deployment) -> None:
    client = deployment.client
    lines = []
    for i in range(12):
        body: dict[str, Any] = {
            "model": "conduit" if i % 3 else "strong",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": f"Question {i}: what is {i} + {i}?"},
            ],
            "temperature": 0.1,
            "max_tokens": 5 + i,
        }
        if i % 4 == 0:
            body["response_format"] = {"type": "json_object"}
        lines.append(_line(f"req-{i}", body))
    bad = {"model": "conduit", "temperature": 9, "messages": [{"role": "user", "content": "x"}]}
    lines.append(_line("bad-temperature", bad))
    lines.append(
        _line("bad-model", {"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    )
    lines.append("not json")
    upload = client.files.create(
        file=("in.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
    )
    assert upload.purpose == "batch" and upload.bytes > 0
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"job": "nightly"},
    )  # fmt: skip
    assert batch.status in ("in_progress", "completed") and batch.request_counts.total == 15
    assert client.batches.retrieve(batch.id).id in {b.id for b in client.batches.list()}
    done = _wait(client, batch.id, {"completed"})
    assert done.request_counts.completed == 12 and done.request_counts.failed == 3
    assert done.metadata == {"job": "nightly"}

    out = _jsonl(client.files.content(done.output_file_id).text)
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(12))
    for o in out:
        i = int(o["custom_id"].split("-")[1])
        body = o["response"]["body"]
        assert o["response"]["status_code"] == 200 and o["error"] is None
        assert body["usage"]["completion_tokens"] <= 5 + i
        if i % 3 == 0:
            assert body["model"] == "strong"
        if i % 4 == 0 and body["choices"][0]["finish_reason"] != "length":
            assert isinstance(json.loads(body["choices"][0]["message"]["content"]), dict)
    errors = _jsonl(client.files.content(done.error_file_id).text)
    assert {e["custom_id"] for e in errors} == {"bad-temperature", "bad-model", None}
    assert all(e["response"] is None and e["error"]["message"] for e in errors)

    rated = client.post(
        "/feedback", body={"custom_id": "req-1", "rating": 1.0}, cast_to=httpx2.Response
    ).json()
    assert rated["status"] == "accepted"
    again = {"custom_id": "req-1", "batch_id": batch.id, "rating": 0.5}
    assert client.post("/feedback", body=again, cast_to=httpx2.Response).json()["status"] == (
        "duplicate"  # one rating per answer, however it is named
    )
    with pytest.raises(openai.NotFoundError, match="no custom_id"):
        client.post(
            "/feedback",
            body={"custom_id": "req-99", "batch_id": batch.id, "rating": 1},
            cast_to=httpx2.Response,
        )


def test_cancel_stops_what_has_not_started(deployment: Deployment) -> None:
    client = deployment.client
    lines = [
        _line(
            f"slow-{i}", {"model": "cheap", "messages": [{"role": "user", "content": f"Slow {i}"}]}
        )
        for i in range(40)
    ]
    upload = client.files.create(
        file=("slow.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch"
    )
    before = deployment.replay.stats()["by_model"].get("cheap", 0)
    batch = client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    time.sleep(1.0)
    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status in ("cancelling", "cancelled")
    final = _wait(client, batch.id, {"cancelled"})
    counts = final.request_counts
    assert counts.total == 40 and counts.completed + counts.failed == 40
    assert counts.failed > 20  # most never started
    time.sleep(3.0)  # calls in flight at the cancel finish; nothing else starts
    calls = deployment.replay.stats()["by_model"].get("cheap", 0) - before
    assert calls < 20, calls
    errors = _jsonl(client.files.content(final.error_file_id).text)
    assert sum(e["error"]["code"] == "batch_cancelled" for e in errors) == counts.failed
