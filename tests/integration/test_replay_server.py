"""The replay server over real HTTP: recorded answers, generated text, faults, stats, pydantic-ai.

Each test starts the server on a free port in a background thread (its own event loop), so the
requests go through real sockets exactly as an executor's would.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conduit_workers.replay import ModelProfile, ReplayConfig
from conduit_workers.replay.data import load_index
from conduit_workers.replay.profile import load_profiles
from tests.replay_harness import Reply, RunningServer, start_replay

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]

PROMPT_1 = "What is the capital of France?\nA. Paris\nB. Rome\nC. Madrid\nD. Berlin\nAnswer:"
PROMPT_2 = "Write a function that adds two numbers."
PROMPT_3 = "Summarise the plot of Hamlet in one paragraph.\n"  # recorded with a trailing newline
RESPONSE_1 = "A. Paris"
RESPONSE_2 = "def add(a, b):\n    return a + b"


def _write_data(path: Path) -> Path:
    """Two models: 'strong' records responses, 'cheap' only token counts (as in MMLU)."""
    lines = [
        {
            "id": "p1",
            "prompt": PROMPT_1,
            "source": "test/mc",
            "models": {
                "strong": {"quality": 1.0, "input_tokens": 31, "output_tokens": 4,
                           "cost_usd": 0.001, "response": RESPONSE_1},
                "cheap": {"quality": 0.0, "input_tokens": 31, "output_tokens": 1,
                          "cost_usd": 0.0001},
            },
            "meta": {"contaminated": False},
        },
        {
            "id": "p2",
            "prompt": PROMPT_2,
            "source": "test/code",
            "models": {
                "strong": {"quality": 1.0, "input_tokens": 9, "output_tokens": 14,
                           "cost_usd": 0.002, "response": RESPONSE_2},
                "cheap": {"quality": 1.0, "input_tokens": 9, "output_tokens": 40,
                          "cost_usd": 0.0002},
            },
        },
        {
            "id": "p3",
            "prompt": PROMPT_3,
            "source": "test/summary",
            "models": {
                "strong": {"quality": 1.0, "input_tokens": 12, "output_tokens": 3,
                           "cost_usd": 0.001, "response": "Hamlet avenges his father."},
            },
        },
    ]  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    return _write_data(tmp_path / "data.jsonl")


@pytest.fixture
def start_server(data_file: Path) -> Iterator[Callable[..., RunningServer]]:
    """Start servers over the test data; keyword arguments go to ReplayConfig."""
    servers: list[RunningServer] = []

    def start(**kwargs: Any) -> RunningServer:
        kwargs.setdefault("data_paths", [data_file])
        server = start_replay(ReplayConfig(**kwargs))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _content(reply: Reply) -> str:
    content: str = reply.body["choices"][0]["message"]["content"]
    return content


# --- Answers -------------------------------------------------------------------------------------


def test_recorded_response_and_usage(start_server: Callable[..., RunningServer]) -> None:
    server = start_server()
    reply = server.chat("strong", PROMPT_2)
    assert reply.status == 200
    body = reply.body
    assert body["object"] == "chat.completion"
    assert body["id"] and isinstance(body["created"], int)
    assert body["model"] == "strong"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": RESPONSE_2, "refusal": None}
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 14, "total_tokens": 23}
    assert reply.headers["x-replay-match"] == "recorded"


def test_recorded_without_response_gives_letter_or_text_of_recorded_length(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server()
    letter = server.chat("cheap", PROMPT_1)
    assert letter.status == 200
    assert _content(letter) in {"A", "B", "C", "D"}
    assert letter.body["usage"]["prompt_tokens"] == 31
    assert letter.body["usage"]["completion_tokens"] == 1
    assert _content(server.chat("cheap", PROMPT_1)) == _content(letter)

    prose = server.chat("cheap", PROMPT_2)
    assert prose.body["usage"]["completion_tokens"] == 40
    assert 20 <= len(_content(prose).split()) <= 40  # ~1.3 tokens a word


def test_prompt_from_content_parts_and_whitespace_matches_record(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server()
    parts = [{"type": "text", "text": PROMPT_2}]
    assert _content(server.chat("strong", parts)) == RESPONSE_2
    # Producers strip lines; the recorded prompt ends in a newline. And the other way round.
    assert _content(server.chat("strong", PROMPT_3.strip())) == "Hamlet avenges his father."
    assert _content(server.chat("strong", PROMPT_2 + "\n")) == RESPONSE_2
    # The prompt is the last user message, whatever the system message says.
    body = {
        "model": "strong",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "an earlier turn"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": PROMPT_2},
        ],
    }
    assert _content(server.request("POST", "/v1/chat/completions", body)) == RESPONSE_2


def test_unknown_prompt_gives_deterministic_text(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server()
    prompt = "Tell me something about routing prompts to language models."
    first = server.chat("strong", prompt)
    assert first.status == 200
    assert first.headers["x-replay-match"] == "generated"
    text = _content(first)
    assert 20 <= len(text.split()) <= 200
    assert text[0].isupper() and text.endswith(".")
    usage = first.body["usage"]
    assert usage["prompt_tokens"] == round(len(prompt) / 4)
    assert abs(usage["completion_tokens"] - len(text) / 4) <= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    assert _content(server.chat("strong", prompt)) == text
    assert _content(server.chat("cheap", prompt)) != text  # seeded by model and prompt
    # Determinism across processes and restarts: a second server answers the same.
    assert _content(start_server().chat("strong", prompt)) == text


def test_max_tokens_caps_the_answer(start_server: Callable[..., RunningServer]) -> None:
    server = start_server()
    reply = server.chat("strong", PROMPT_2, max_tokens=5)
    assert reply.body["usage"]["completion_tokens"] == 5
    assert reply.body["choices"][0]["finish_reason"] == "length"
    assert RESPONSE_2.startswith(_content(reply)) and len(_content(reply)) < len(RESPONSE_2)
    uncapped = server.chat("strong", PROMPT_2, max_completion_tokens=100)
    assert _content(uncapped) == RESPONSE_2
    assert server.chat("strong", PROMPT_2, max_tokens=0).status == 400


# --- Models, auth, bad requests ------------------------------------------------------------------


def test_models_list(start_server: Callable[..., RunningServer]) -> None:
    server = start_server(
        profiles={"*": ModelProfile(), "profiled": ModelProfile(latency_ms=1)},
        extra_models=("extra-1",),
    )
    reply = server.request("GET", "/v1/models")
    assert reply.status == 200
    assert reply.body["object"] == "list"
    assert {m["id"] for m in reply.body["data"]} == {"strong", "cheap", "profiled", "extra-1"}
    assert all(
        m["object"] == "model" and m["owned_by"] == "conduit-replay" for m in reply.body["data"]
    )
    assert server.chat("extra-1", "hello").status == 200
    assert server.request("GET", "/v1/models/strong").body["id"] == "strong"
    assert server.request("GET", "/healthz").body == "ok"


def test_unknown_model_is_404(start_server: Callable[..., RunningServer]) -> None:
    reply = start_server().chat("no-such-model", PROMPT_1)
    assert reply.status == 404
    error = reply.body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "model_not_found"
    assert "no-such-model" in error["message"]


def test_api_key_is_required_when_set(start_server: Callable[..., RunningServer]) -> None:
    server = start_server(api_key="sekrit")
    missing = server.chat("strong", PROMPT_2)
    wrong = server.chat("strong", PROMPT_2, headers={"Authorization": "Bearer nope"})
    for reply in (missing, wrong):
        assert reply.status == 401
        assert reply.body["error"]["code"] == "invalid_api_key"
    assert server.request("GET", "/v1/models").status == 401
    ok = server.chat("strong", PROMPT_2, headers={"Authorization": "Bearer sekrit"})
    assert ok.status == 200 and _content(ok) == RESPONSE_2
    assert server.stats()["calls"] == 1  # rejected requests are not LLM calls


def test_bad_requests_are_400(start_server: Callable[..., RunningServer]) -> None:
    server = start_server()
    not_json = server.request("POST", "/v1/chat/completions", raw=b"{not json")
    assert not_json.status == 400
    assert not_json.body["error"]["type"] == "invalid_request_error"
    no_user = server.request(
        "POST",
        "/v1/chat/completions",
        {"model": "strong", "messages": [{"role": "system", "content": "x"}]},
    )
    assert no_user.status == 400 and "user" in no_user.body["error"]["message"]
    assert server.request("POST", "/v1/chat/completions", {"messages": []}).status == 400


# --- Latency and faults --------------------------------------------------------------------------


def test_latency_is_applied(start_server: Callable[..., RunningServer]) -> None:
    server = start_server(
        profiles={"*": ModelProfile(latency_ms=150, jitter_ms=20, per_output_token_ms=10)}
    )
    started = time.monotonic()
    assert server.chat("strong", PROMPT_2).status == 200  # 14 output tokens: 150 ± 20 + 140 ms
    assert time.monotonic() - started >= 0.27


@pytest.mark.parametrize(
    ("profile", "status", "fault"),
    [
        (ModelProfile(rate_429=1.0, retry_after_s=7), 429, "429"),
        (ModelProfile(rate_500=1.0), 500, "500"),
        (ModelProfile(rate_400=1.0), 400, "400"),
        (ModelProfile(rate_empty=1.0), 200, "empty"),
    ],
)
def test_fault_injection_at_rate_one(
    start_server: Callable[..., RunningServer], profile: ModelProfile, status: int, fault: str
) -> None:
    server = start_server(profiles={"strong": profile})
    for _ in range(3):
        reply = server.chat("strong", PROMPT_2)
        assert reply.status == status
        if status == 200:
            assert _content(reply) == ""
            assert reply.body["usage"]["completion_tokens"] == 0
            assert reply.body["usage"]["prompt_tokens"] == 9
        else:
            assert set(reply.body["error"]) >= {"message", "type", "code"}
    if fault == "429":
        assert reply.headers["retry-after"] == "7"
        assert reply.body["error"]["code"] == "rate_limit_exceeded"
    if fault == "500":
        assert reply.body["error"]["type"] == "server_error"
    assert server.chat("cheap", PROMPT_2).status == 200  # other models keep the default profile
    stats = server.stats()
    assert stats["faults"][fault] == 3
    assert stats["statuses"][str(status)] >= 3


def test_fault_rates_follow_the_seed(start_server: Callable[..., RunningServer]) -> None:
    profiles = {"*": ModelProfile(rate_429=0.3, rate_500=0.2)}
    runs = []
    for _ in range(2):
        server = start_server(profiles=profiles, seed=42)
        runs.append([server.chat("strong", PROMPT_2).status for _ in range(60)])
    assert runs[0] == runs[1]
    assert {200, 429, 500} <= set(runs[0])


def test_hang_then_answer_or_client_timeout(start_server: Callable[..., RunningServer]) -> None:
    server = start_server(profiles={"strong": ModelProfile(rate_hang=1.0, hang_s=0.3)})
    started = time.monotonic()
    reply = server.chat("strong", PROMPT_2)
    assert reply.status == 200 and _content(reply) == RESPONSE_2
    assert time.monotonic() - started >= 0.3

    server = start_server(profiles={"strong": ModelProfile(rate_hang=1.0, hang_s=20)})
    with pytest.raises(TimeoutError):
        server.chat("strong", PROMPT_2, timeout=0.3)
    deadline = time.monotonic() + 5
    while server.stats()["abandoned"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = server.stats()
    assert stats["abandoned"] == 1 and stats["faults"]["hang"] == 1


def test_put_profiles_changes_behaviour_at_run_time(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server()
    assert server.chat("strong", PROMPT_2).status == 200

    put = server.request("PUT", "/_replay/profiles", {"strong": {"rate_500": 1.0}})
    assert put.status == 200
    assert put.body["strong"]["rate_500"] == 1.0
    assert server.chat("strong", PROMPT_2).status == 500
    assert server.chat("cheap", PROMPT_2).status == 200
    assert server.request("GET", "/_replay/profiles").body == put.body

    # Models inherit "*" fields they do not name.
    put = server.request(
        "PUT", "/_replay/profiles", {"*": {"rate_429": 1.0}, "cheap": {"retry_after_s": 3}}
    )
    assert put.body["cheap"]["rate_429"] == 1.0
    reply = server.chat("cheap", PROMPT_2)
    assert reply.status == 429 and reply.headers["retry-after"] == "3"

    bad = server.request("PUT", "/_replay/profiles", {"*": {"rate_428": 1.0}})
    assert bad.status == 400 and "rate_428" in bad.body["error"]["message"]
    assert server.request("PUT", "/_replay/profiles", {"*": {"rate_500": 2}}).status == 400

    assert server.request("PUT", "/_replay/profiles", {}).status == 200
    assert server.chat("strong", PROMPT_2).status == 200


def test_stats_count_calls_and_duplicates(start_server: Callable[..., RunningServer]) -> None:
    server = start_server()
    server.chat("strong", PROMPT_1)
    server.chat("strong", PROMPT_2)
    server.chat("cheap", PROMPT_2)  # same prompt, other model: not a duplicate
    server.chat("strong", PROMPT_2)  # duplicate
    server.chat("strong", PROMPT_2)  # duplicate
    stats = server.stats()
    assert stats["calls"] == 5
    assert stats["by_model"] == {"strong": 4, "cheap": 1}
    assert stats["duplicates"] == 2
    assert stats["answered_unique"] == 3

    # A failed call does not make the next one a duplicate; a call after a success does.
    server.request("PUT", "/_replay/profiles", {"*": {"rate_500": 1.0}})
    server.chat("strong", "a fresh prompt")
    server.request("PUT", "/_replay/profiles", {})
    server.chat("strong", "a fresh prompt")
    assert server.stats()["duplicates"] == 2

    reset = server.request("POST", "/_replay/stats/reset")
    assert reset.status == 200
    stats = server.stats()
    assert stats["calls"] == 0 and stats["duplicates"] == 0 and stats["by_model"] == {}
    server.chat("strong", PROMPT_2)
    assert server.stats()["duplicates"] == 0  # answered-before is forgotten too


def test_concurrent_calls_for_one_prompt_count_as_duplicates(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(profiles={"*": ModelProfile(latency_ms=200)})
    threads = [threading.Thread(target=server.chat, args=("strong", PROMPT_2)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert server.stats()["duplicates"] == 2


# --- Through pydantic-ai, as the executor calls it -----------------------------------------------


def _pydantic_ai_request(base_url: str, model_name: str, prompt: str) -> Any:
    from openai import AsyncOpenAI
    from pydantic_ai.direct import model_request
    from pydantic_ai.messages import ModelRequest
    from pydantic_ai.models import override_allow_model_requests
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    async def call() -> Any:
        async with AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
            model = OpenAIChatModel(model_name, provider=OpenAIProvider(openai_client=client))
            return await model_request(model, [ModelRequest.user_text_prompt(prompt)])

    # A root conftest may forbid model requests; this one goes to the local replay server.
    with override_allow_model_requests(True):
        return asyncio.run(call())


def test_pydantic_ai_gets_recorded_text_and_usage(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server(api_key="x")
    response = _pydantic_ai_request(server.v1, "strong", PROMPT_2)
    assert response.text == RESPONSE_2
    assert response.usage.input_tokens == 9
    assert response.usage.output_tokens == 14
    assert response.model_name == "strong"

    generated = _pydantic_ai_request(server.v1, "cheap", "an unknown prompt for the replay")
    assert generated.text and generated.usage.output_tokens > 0


def test_pydantic_ai_sees_429_as_model_http_error(
    start_server: Callable[..., RunningServer],
) -> None:
    from pydantic_ai.exceptions import ModelHTTPError

    server = start_server(profiles={"*": ModelProfile(rate_429=1.0, retry_after_s=2)})
    with pytest.raises(ModelHTTPError) as caught:
        _pydantic_ai_request(server.v1, "strong", PROMPT_2)
    assert caught.value.status_code == 429
    assert caught.value.model_name == "strong"
    assert (caught.value.headers or {}).get("retry-after") == "2"


# --- Data, profiles and the command line ---------------------------------------------------------


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
