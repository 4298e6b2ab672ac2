"""Bad input to ``conduit submit`` and the Python API, end to end through the producer: each bad
line gets a clear error naming the line and the reason, the rest of the batch is recorded and
sent, a duplicate submission answers nothing twice, and a failed submission leaves nothing
half-written. (Line-level parsing is covered in tests/unit/test_items.py.)"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from conduit_workers.errors import InputError, StoreUnavailable
from conduit_workers.history import history_schema as t
from conduit_workers.settings import DatabaseSettings, RedisSettings, Settings
from producers.api import ConduitClient
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration
GOOD = [{"id": f"g{i}", "prompt": f"good prompt number {i}"} for i in range(6)]


@pytest.fixture
def client(redis_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    settings = Settings(
        redis=RedisSettings(url=redis_url, key_prefix=TEST_PREFIX),
        database=DatabaseSettings(url=f"sqlite:///{tmp_path / 'h.db'}", retry_for_s=1),
    )
    c = ConduitClient(settings)
    yield c
    c.close()


def _count(client: ConduitClient, table: sa.Table) -> int:
    with client.history.engine.connect() as conn:
        return int(conn.scalar(sa.select(sa.func.count()).select_from(table)) or 0)


def _queued(redis_url: str) -> int:
    return int(redis.Redis.from_url(redis_url).llen("route"))


def test_a_file_with_every_kind_of_bad_line_keeps_the_good_ones(client, redis_url, tmp_path):
    lines = [
        json.dumps(GOOD[0]),
        "{not json",
        json.dumps({"id": "x", "prompt": ""}),
        json.dumps({"id": "y"}),
        json.dumps({"prompt": 42}),
        '{"prompt": "a", "constraints": {"max_cost_usd": NaN}}',
        json.dumps({"prompt": "b" * 40_000}),
        json.dumps({"prompt": "c", "constraints": {"allowed_models": ["gpt-9"]}}),
        json.dumps(GOOD[1]),
    ]
    src = tmp_path / "batch.jsonl"
    src.write_bytes(
        "\n".join(lines).encode() + b"\n\xff\xfe not utf-8\n" + json.dumps(GOOD[2]).encode() + b"\n"
    )
    sub = client.submit_file(src, tag="bad")
    reasons = {e.line: str(e) for e in sub.errors}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 10]
    assert "invalid JSON" in reasons[2] and "'prompt' is empty" in reasons[3]
    assert "missing field 'prompt'" in reasons[4] and "must be a string" in reasons[5]
    assert "invalid JSON" in reasons[6] and "over the limit" in reasons[7]
    assert "unknown model" in reasons[8] and "not UTF-8" in reasons[10]
    assert all(r.startswith(f"line {n}: ") for n, r in reasons.items())
    assert (sub.accepted, sub.new, sub.enqueued) == (3, 3, 3)  # line 11 after the bad bytes too
    assert _count(client, t.queries) == 3 and _queued(redis_url) == 1
    for text in ("b" * 40_000, "not utf-8"):
        assert all(text not in r for r in reasons.values())


def test_the_python_api_reports_bad_items_by_position(client):
    items = [
        GOOD[0],
        None,
        5,
        {"prompt": "n", "constraints": {"max_cost_usd": math.nan}},
        {"prompt": "m", "metadata": {"v": math.inf}},
        "a bare prompt",
        GOOD[1],
    ]
    sub = client.submit(items, tag="api")  # type: ignore[arg-type]
    lines = sorted(e.line for e in sub.errors if e.line is not None)
    assert lines == [2, 3, 4, 5], [str(e) for e in sub.errors]
    assert (sub.accepted, sub.new) == (3, 3)


def test_an_unreadable_file_is_one_clear_error(client, tmp_path):
    with pytest.raises(InputError, match="cannot read .*missing.jsonl: No such file"):
        client.submit_file(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="cannot read .*: Is a directory"):
        client.submit_file(tmp_path)
    assert _count(client, t.batches) == 0


def test_cli_says_why_it_cannot_read_the_file(client, tmp_path):
    env = {
        "CONDUIT_DATABASE__URL": client.settings.database.url,
        "CONDUIT_REDIS__URL": client.settings.redis.url,
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-m", "producers.cli", "submit", str(tmp_path / "nope.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and "cannot read" in out.stderr and "No such file" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_duplicate_submission_answers_nothing_twice(client, redis_url):
    first = client.submit(GOOD + [GOOD[0]], tag="dup")  # the same id twice in one batch
    assert (first.accepted, first.new, first.existing) == (6, 6, 0)
    again = client.submit(GOOD, tag="dup")
    # Nothing answered yet: the earlier prompts are sent again (routing skips what is done).
    assert (again.accepted, again.new, again.existing, again.enqueued) == (6, 0, 6, 6)
    assert _count(client, t.queries) == 6 and _count(client, t.batches) == 2


def test_a_failed_submission_leaves_nothing_half_written(client, monkeypatch):
    client.history.create_schema()
    real = client.history._insert_ignore

    def failing(table):  # type: ignore[no-untyped-def]
        if table is t.batch_items:
            raise sa.exc.OperationalError("insert", {}, Exception("server closed the connection"))
        return real(table)

    monkeypatch.setattr(client.history, "_insert_ignore", failing)
    with pytest.raises(StoreUnavailable):
        client.submit(GOOD, tag="half")
    monkeypatch.undo()
    assert _count(client, t.batches) == 0 and _count(client, t.queries) == 0
