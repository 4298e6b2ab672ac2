"""`conduit learn --from-history [--since DATE]`: the rated answers of the history database
become warm-start evidence in the Redis posteriors, through the same idempotent path as a file."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import ResultRow
from conduit_workers.domain.rewards import EXPLICIT, FeedbackEvent, explicit_event_id
from conduit_workers.history.history import SqlHistory
from conduit_workers.learning.posterior_store import RedisPosteriorStore
from conduit_workers.settings import Settings
from tests.conftest import ROOT, TEST_PREFIX

pytestmark = pytest.mark.integration
DIM = Settings().context_dim
STRONG, CHEAP = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


def _rated_history(history: SqlHistory) -> None:
    items = [
        parse_item({"id": f"q{i}", "prompt": f"What is {i} + {i}?"}, line=i, max_prompt_chars=99)
        for i in range(6)
    ]
    history.submit("b", items, tag=None, rejected=0, constraints={})
    models = [STRONG, CHEAP, STRONG, CHEAP, STRONG, CHEAP]
    history.record_results(
        [
            ResultRow(it.key, m, "ok", "x", 20, 3, 0.0003)
            for it, m in zip(items, models, strict=True)
        ],
        [],
    )
    history.add_feedback(
        [
            FeedbackEvent(
                explicit_event_id(it.key), it.key, m, EXPLICIT, 1.0 if m == STRONG else 0.0, 1.0
            )
            for it, m in zip(items[:5], models[:5], strict=True)  # the last one is not rated
        ]
    )


def _learn(pg_url: str, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        CONDUIT_DATABASE__URL=pg_url,
        CONDUIT_REDIS__URL=redis_url,
        CONDUIT_REDIS__KEY_PREFIX=TEST_PREFIX,
        CONDUIT_ROUTER__EMBEDDER="hashing",
        PYTHONPATH=os.environ.get("PYTHONPATH", str(ROOT)),
    )
    return subprocess.run(
        [sys.executable, "-m", "producers.cli", "learn", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_learn_from_history_loads_rated_answers_once(
    history: SqlHistory, pg_url: str, redis_url: str
) -> None:
    _rated_history(history)
    out = _learn(pg_url, redis_url, "--from-history", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["records"] == 5
    assert summary["ratings"] == {STRONG: 3, CHEAP: 2}
    assert summary["updates_applied"] == 2
    store = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX)
    read = store.read([STRONG, CHEAP], DIM)
    n = {m: read[m][1].counters["n"] for m in (STRONG, CHEAP)}
    r = {m: read[m][1].counters["r"] for m in (STRONG, CHEAP)}
    assert n == {STRONG: pytest.approx(3.0), CHEAP: pytest.approx(2.0)}
    assert r == {STRONG: pytest.approx(3.0), CHEAP: pytest.approx(0.0)}

    again = json.loads(_learn(pg_url, redis_url, "--from-history", "--json").stdout)
    assert (again["updates_applied"], again["updates_already_applied"]) == (0, 2)
    assert store.read([STRONG], DIM)[STRONG][1].counters["n"] == pytest.approx(3.0)


def test_since_and_wrong_use_say_what_to_do(
    history: SqlHistory, pg_url: str, redis_url: str
) -> None:
    _rated_history(history)
    later = _learn(pg_url, redis_url, "--from-history", "--since", "2999-01-01")
    assert later.returncode != 0
    assert "no rated answers in the history database since 2999-01-01" in later.stderr
    assert "Traceback" not in later.stderr
    both = _learn(pg_url, redis_url)
    assert both.returncode != 0 and "give either FILE or --from-history" in both.stderr
    loose = _learn(pg_url, redis_url, str(ROOT / "README.md"), "--since", "2020-01-01")
    assert loose.returncode != 0 and "--since goes with --from-history" in loose.stderr
