"""The replay server's data and profile files and its command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conduit_workers.replay import ModelProfile
from conduit_workers.replay.data import load_index
from conduit_workers.replay.profile import load_profiles
from tests.replay_harness import PROMPT_2, RunningServer

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_profile_file_validation(tmp_path: Path) -> None:
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({"*": {"latency_ms": 50}, "m": {"rate_429": 0.5}}))
    profiles = load_profiles(path)
    assert profiles["m"] == ModelProfile(latency_ms=50, rate_429=0.5)

    path.write_text(json.dumps({"*": {"latency": 50}}))
    with pytest.raises(ValueError, match=r"profiles\.json.*unknown key 'latency'"):
        load_profiles(path)
    path.write_text(json.dumps({"m": {"rate_500": 1.5}}))
    with pytest.raises(ValueError, match="rate_500"):
        load_profiles(path)
    path.write_text(json.dumps({"m": {"rate_500": 0.7, "rate_429": 0.7}}))
    with pytest.raises(ValueError, match="sum to 1.4"):
        load_profiles(path)


def test_loading_fourteen_thousand_lines_is_fast(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("w") as fh:
        for i in range(14_000):
            record = {
                "id": f"q{i}",
                "prompt": f"Question {i}: which option is right?\nA. x\nB. y\nC. z\nD. w\nAnswer:",
                "source": "test/big",
                "models": {
                    m: {"quality": 1.0, "input_tokens": 20, "output_tokens": 1, "cost_usd": 1e-5}
                    for m in ("gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1")
                },
                "meta": {"contaminated": False},
            }
            fh.write(json.dumps(record) + "\n")
    started = time.perf_counter()
    index = load_index([path])
    assert time.perf_counter() - started < 1.5
    assert index.n_prompts == 14_000
    assert len(index.models) == 2


def test_bad_data_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "x", "models": {}}\n{"prompt": 3, "models": {}}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        load_index([path])


def _ignore_errors(func: Callable[..., Any]) -> Callable[..., None]:
    def call(*args: Any) -> None:
        try:
            func(*args)
        except OSError:
            pass

    return call


def test_cli_serves_until_sigterm(data_file: Path, tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"*": {"rate_500": 1.0}, "strong": {"rate_500": 0}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "conduit_workers.replay", "--data", str(data_file),
         "--port", "0", "--model", "cli-extra", "--profile", str(profile), "--latency-ms", "1"],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line.startswith("replay server on http://127.0.0.1:"), line
        assert "3 prompts" in line and "cli-extra" in line
        port = int(line.split("127.0.0.1:")[1].split("/")[0])
        server = RunningServer(base_url=f"http://127.0.0.1:{port}", stop=lambda: None)
        assert server.request("GET", "/healthz").body == "ok"
        assert server.chat("strong", PROMPT_2).status == 200
        assert server.chat("cheap", PROMPT_2).status == 500
        # A call hanging for 30 s must not hold up a clean exit on SIGTERM.
        server.request("PUT", "/_replay/profiles", {"*": {"rate_hang": 1.0, "hang_s": 30}})
        hung = threading.Thread(target=_ignore_errors(server.chat), args=("strong", PROMPT_2))
        hung.start()
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - started < 5
        hung.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
