"""Text is text, on PostgreSQL: a NUL or an unpaired surrogate in any string field rejects its
line alone, with its number and the reason; a UTF-8 BOM is skipped; ``-`` reads standard
input; ``--strict`` makes any rejected line an error; ``--rejects FILE`` writes them all."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from conduit_workers.history import history_schema as t
from conduit_workers.settings import DatabaseSettings, RedisSettings, Settings
from producers.api import ConduitClient
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration

HOSTILE = [
    '{"prompt": "a\\u0000b"}',
    '{"prompt": "\\ud800"}',
    '{"prompt": "fine", "user": "u\\u0000"}',
    '{"prompt": "fine too", "user": "\\udfff"}',
    '{"prompt": "ok", "id": "i\\u0000"}',
    '{"prompt": "meta", "metadata": {"k": ["x\\u0000"]}}',
    '{"prompt": "meta key", "metadata": {"\\ud83d": 1}}',
]


@pytest.fixture
def client(redis_url: str, pg_url: str):  # type: ignore[no-untyped-def]
    settings = Settings(
        redis=RedisSettings(url=redis_url, key_prefix=TEST_PREFIX),
        database=DatabaseSettings(url=pg_url, retry_for_s=1),
    )
    c = ConduitClient(settings)
    yield c
    c.close()


def _prompts(client: ConduitClient) -> list[str]:
    with client.history.engine.connect() as conn:
        return sorted(conn.scalars(sa.select(t.queries.c.prompt)))


def test_nul_and_lone_surrogates_reject_their_line_alone(client, tmp_path):  # type: ignore[no-untyped-def]
    src = tmp_path / "hostile.jsonl"
    good = ['{"prompt": "first"}', '{"prompt": "a pair \\ud83d\\ude00 is fine"}']
    src.write_text("\n".join([good[0], *HOSTILE, good[1]]) + "\n", encoding="utf-8")
    sub = client.submit_file(src)
    reasons = {e.line: str(e) for e in sub.errors}
    assert sorted(reasons) == list(range(2, 2 + len(HOSTILE)))
    assert "NUL" in reasons[2] and "'prompt'" in reasons[2]
    assert "surrogate" in reasons[3] and "'prompt'" in reasons[3]
    assert "'user'" in reasons[4] and "'user'" in reasons[5] and "'id'" in reasons[6]
    assert "'metadata'" in reasons[7] and "'metadata'" in reasons[8]
    assert sub.accepted == 2
    assert _prompts(client) == ["a pair \U0001f600 is fine", "first"]


def test_the_python_api_rejects_hostile_strings_per_item(client):  # type: ignore[no-untyped-def]
    items = [
        {"prompt": "ok"},
        {"prompt": "a\x00b"},
        {"prompt": "\ud800"},
        {"prompt": "x", "user": "\x00"},
        "bare \udc00",
        {"prompt": "also ok", "user": "u"},
    ]
    sub = client.submit(items)
    assert sorted(e.line for e in sub.errors if e.line) == [2, 3, 4, 5]
    assert sub.accepted == 2


def test_a_bom_is_skipped(client, tmp_path):  # type: ignore[no-untyped-def]
    src = tmp_path / "bom.jsonl"
    src.write_bytes(b'\xef\xbb\xbf{"prompt": "after a BOM"}\n{"prompt": "second"}\n')
    sub = client.submit_file(src)
    assert sub.errors == [] and sub.accepted == 2


def _cli(
    client: ConduitClient, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    env = {
        "CONDUIT_DATABASE__URL": client.settings.database.url,
        "CONDUIT_REDIS__URL": client.settings.redis.url,
        "CONDUIT_REDIS__KEY_PREFIX": TEST_PREFIX,
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    return subprocess.run(
        [sys.executable, "-m", "producers.cli", "submit", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_reads_stdin_and_writes_every_reject(client, tmp_path):  # type: ignore[no-untyped-def]
    lines = ['{"prompt": "good one"}'] + ['{"prompt": "bad\\u0000"}'] * 30
    rejects = tmp_path / "rejects.jsonl"
    out = _cli(client, "-", "--rejects", str(rejects), stdin="\n".join(lines) + "\n")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr and "1 prompts accepted" in out.stderr
    assert str(rejects) in out.stderr  # the short list on screen says where the rest is
    written = [json.loads(x) for x in rejects.read_text().splitlines()]
    assert [w["line"] for w in written] == list(range(2, 32))
    assert all("NUL" in w["reason"] for w in written)


def test_cli_strict_refuses_a_file_with_a_rejected_line(client, tmp_path):  # type: ignore[no-untyped-def]
    src = tmp_path / "f.jsonl"
    src.write_text('{"prompt":"ok"}\n{"prompt":"a\\u0000b"}\n', encoding="utf-8")
    out = _cli(client, str(src), "--strict")
    assert out.returncode != 0 and "line 2" in out.stderr and "NUL" in out.stderr
    assert "Traceback" not in out.stderr
    assert _prompts(client) == []  # nothing submitted
    out = _cli(client, str(src))  # without --strict the good line goes on
    assert out.returncode == 0 and _prompts(client) == ["ok"], out.stderr


def test_feedback_for_a_hostile_id_is_rejected_not_a_crash(client, tmp_path):  # type: ignore[no-untyped-def]
    ratings = tmp_path / "ratings.jsonl"
    ratings.write_text('{"id": "a\\u0000b", "rating": 1}\n{"id": "\\ud800", "rating": 0}\n')
    out = client.feedback_file(ratings)
    assert out.applied == 0 and [e.line for e in out.errors] == [1, 2]
    assert all("no answered prompt" in str(e) for e in out.errors)
