"""Errors for people: every `conduit` command that meets an error it can expect (broker or
Redis down, a bad catalog) prints one line saying what happened and what to do, never a
traceback, and exits non-zero; -h and --version work everywhere; `submit --wait` reports
dead-lettered prompts as they happen, stops when nothing else can come, and writes what it has
to --out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from conduit_workers.domain.records import ResultRow
from conduit_workers.history.history import SqlHistory
from conduit_workers.infra.dead_letters import DeadLetter, RedisDeadLetters
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DOWN = "redis://127.0.0.1:1/0"  # nothing listens there


def _env(redis_url: str, db_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONDUIT_")}
    return dict(
        env,
        PYTHONPATH=str(ROOT),
        CONDUIT_REDIS__URL=redis_url,
        CONDUIT_REDIS__KEY_PREFIX=TEST_PREFIX,
        CONDUIT_REDIS__SOCKET_TIMEOUT_S="1",
        CONDUIT_DATABASE__URL=db_url,
        **extra,
    )


def _conduit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "producers.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, out.stderr
    for w in words:
        assert w in errors[0], (w, errors[0])


def test_help_and_version_everywhere(redis_url: str, tmp_path: Path) -> None:
    env = _env(redis_url, f"sqlite:///{tmp_path / 'h.db'}")
    version = _conduit(env, "--version")
    assert version.returncode == 0 and "conduit" in version.stdout.lower()
    for cmd in ([], ["submit"], ["status"], ["dlq"], ["dlq", "redrive"], ["db", "upgrade"]):
        out = _conduit(env, *cmd, "-h")
        assert out.returncode == 0 and "Usage:" in out.stdout, (cmd, out.stderr)


def test_broker_and_redis_down_and_bad_catalogs(redis_url: str, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'h.db'}"
    src = tmp_path / "f.jsonl"
    src.write_text('{"prompt": "hello"}\n')
    down = _env(DOWN, db)
    _one_line_error(_conduit(down, "submit", str(src)), "broker", "CONDUIT_")
    _one_line_error(_conduit(down, "status"), "Redis")
    _one_line_error(_conduit(down, "dlq", "list"), "Redis")
    _one_line_error(_conduit(down, "posteriors"), "Redis")
    missing = _env(redis_url, db, CONDUIT_CATALOG__PATH=str(tmp_path / "none.toml"))
    _one_line_error(_conduit(missing, "submit", str(src)), "catalog", "CONDUIT_CATALOG__PATH")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[models]\nname = ")
    broken = _env(redis_url, db, CONDUIT_CATALOG__PATH=str(bad))
    _one_line_error(_conduit(broken, "status"), "not valid TOML")
    _one_line_error(_conduit(broken, "posteriors"), "not valid TOML")


def test_submit_wait_reports_dead_letters_and_writes_what_it_has(
    redis_url: str, pg_url: str, tmp_path: Path
) -> None:
    src = tmp_path / "f.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"p{i}", "prompt": f"q {i}"}) + "\n" for i in range(5))
    )
    out_file = tmp_path / "out.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "producers.cli", "submit", str(src), "--wait"]
        + ["--out", str(out_file), "--timeout", "90"],
        env=_env(redis_url, pg_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    history = SqlHistory(pg_url)
    history.create_schema()
    try:
        deadline = time.monotonic() + 60
        while True:  # no workers run: answer two prompts and dead-letter the rest by hand
            with history.engine.connect() as conn:
                batches = conn.exec_driver_sql("select id from batches").all()
            if batches:
                break
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        rows = history.batch_results(batches[0][0])
        ids = [r["id"] for r in rows]
        history.record_results([ResultRow(q, "m", "ok", "answer") for q in ids[:2]], [])
        letters = RedisDeadLetters(redis.Redis.from_url(redis_url), TEST_PREFIX)
        letters.put(
            DeadLetter(
                "t-dead",
                "conduit.router.route_batch",
                [ids[2:]],
                "route",
                "failed",
                "ConfigError: bad",
                1,
                0,
                time.time(),
            )
        )
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        history.dispose()
    assert proc.returncode != 0
    assert "Traceback" not in err
    assert "3 prompts" in err and "t-dead" in err and "conduit dlq redrive" in err
    written = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert sorted(w["id"] for w in written) == sorted(ids[:2])


def test_status_names_models_that_cannot_be_called(redis_url: str, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        'reference = "local"\n'
        '[[models]]\nname = "local"\nprovider = "openai-compatible"\n'
        'base_url = "http://127.0.0.1:1/v1"\n'
        "input_price_per_mtok_usd = 1\noutput_price_per_mtok_usd = 1\n"
        '[[models]]\nname = "keyed"\nprovider = "openai"\napi_key_env = "CONDUIT_TEST_NO_KEY"\n'
        "input_price_per_mtok_usd = 1\noutput_price_per_mtok_usd = 1\n"
    )
    env = _env(redis_url, f"sqlite:///{tmp_path / 'h.db'}", CONDUIT_CATALOG__PATH=str(catalog))
    out = _conduit(env, "status", "--timeout", "0.2")
    assert "model keyed cannot be called here (CONDUIT_TEST_NO_KEY is not set)" in out.stderr
    assert "model local" not in out.stderr and "Traceback" not in out.stderr
