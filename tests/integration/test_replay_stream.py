"""The replay server's streamed answers: OpenAI's chunk format, the same text and usage as the
whole answer, the output cap and JSON mode applied alike."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.replay_harness import PROMPT_2, RESPONSE_2, RunningServer

pytestmark = pytest.mark.integration


def _events(reply_body: Any) -> list[Any]:
    text = reply_body if isinstance(reply_body, str) else json.dumps(reply_body)
    out = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_stream_carries_the_recorded_answer_in_chunks(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server()
    reply = server.chat("strong", PROMPT_2, stream=True, stream_options={"include_usage": True})
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/event-stream")
    events = _events(reply.body)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == RESPONSE_2
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 14
    plain = server.chat("strong", PROMPT_2, stream=True)
    assert all(c == "[DONE]" or c["choices"] for c in _events(plain.body))  # no usage chunk


def test_stream_applies_the_cap_and_json_mode(start_server: Callable[..., RunningServer]) -> None:
    server = start_server()
    capped = _events(server.chat("cheap", "Tell a story.", stream=True, max_tokens=2).body)
    assert [c["choices"][0]["finish_reason"] for c in capped[:-1]][-1] == "length"
    shaped = _events(
        server.chat(
            "cheap", "JSON please", stream=True, response_format={"type": "json_object"}
        ).body
    )
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in shaped[:-1])
    assert isinstance(json.loads(text), dict)
    bad = server.chat("cheap", "x", stream="yes")
    assert bad.status == 400 and bad.body["error"]["param"] == "stream"
