"""`conduit learn FILE.jsonl`: labelled records (any subset of the models per prompt) become
evidence in the Redis posteriors once, however often the file is loaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conduit_workers.domain.floor import OFFLINE_STREAM, OFFLINE_WEIGHT
from conduit_workers.learning.posterior_store import RedisPosteriorStore
from conduit_workers.routing.floor_store import RedisFloorStore
from conduit_workers.settings import Settings
from tests.conftest import ROOT, TEST_PREFIX

pytestmark = pytest.mark.integration
DIM = Settings().context_dim
STRONG, CHEAP = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"


def _learn(redis_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        CONDUIT_DATABASE__URL=f"sqlite:///{tmp_path / 'history.db'}",
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


def test_a_sparse_file_loads_once(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    with open(path, "w") as fh:
        for i in range(30):
            models = {
                STRONG: {"quality": 1.0, "input_tokens": 9, "output_tokens": 4, "cost_usd": 0.0002}
            }
            if i % 2:  # half the prompts have the cheap model's answer too
                models[CHEAP] = {
                    "quality": 0.0,
                    "input_tokens": 9,
                    "output_tokens": 6,
                    "cost_usd": 0.00001,
                }
            if i == 0:
                models["not-in-the-catalog"] = {"quality": 0.5}
            fh.write(
                json.dumps({"id": f"p{i}", "prompt": f"What is {i} + 1?", "models": models}) + "\n"
            )
    first = _learn(redis_url, tmp_path, str(path), "--json")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["ratings"] == {STRONG: 30, CHEAP: 15}
    assert summary["unknown_models"] == {"not-in-the-catalog": 1}
    assert summary["updates_applied"] == 2
    again = json.loads(_learn(redis_url, tmp_path, str(path), "--json").stdout)
    assert again["updates_applied"] == 0 and again["updates_already_applied"] == 2
    store = RedisPosteriorStore.from_url(redis_url, TEST_PREFIX)
    read = store.read([STRONG, CHEAP], DIM)
    assert read[STRONG][1].counters["n"] == pytest.approx(30.0, rel=0.05)  # decay aside
    assert read[CHEAP][1].counters["calls"] == 15
    assert read[CHEAP][1].counters["r"] == 0.0
    # The quality floor is told each model's offline weight in the same Redis, once.
    floors = RedisFloorStore(store.client, TEST_PREFIX)
    assert floors.read(OFFLINE_STREAM) == {
        OFFLINE_WEIGHT + STRONG: pytest.approx(30.0),
        OFFLINE_WEIGHT + CHEAP: pytest.approx(15.0),
    }


def test_a_bad_line_is_refused_with_its_number(redis_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "models": {"m": {"quality": 1}}}\n{"prompt": "x"}\n')
    out = _learn(redis_url, tmp_path, str(path))
    assert out.returncode != 0
    assert "bad.jsonl:2" in out.stderr and "'models'" in out.stderr
