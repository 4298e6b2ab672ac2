"""The replay server over real HTTP: recorded answers, generated text, faults, stats, pydantic-ai.

Each test starts the server on a free port in a background thread (its own event loop), so the
requests go through real sockets exactly as an executor's would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from conduit_workers.replay import ModelProfile
from tests.replay_harness import PROMPT_1, PROMPT_2, PROMPT_3, RESPONSE_2, Reply, RunningServer

pytestmark = pytest.mark.integration


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
