"""Streamed calls without the SDK (``OpenAIHttpModel.chat_stream``) against a provider
stood in for by a small aiohttp server: OpenAI's event stream as servers send it (CRLF or LF
line ends, comments, a usage chunk, a long answer in one chunk), and its errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic_ai import exceptions as pai_exc

from conduit_workers.execution.openai_http import OpenAIHttpModel, SharedSession


def _chunk(delta: dict[str, Any] | None = None, usage: dict[str, int] | None = None) -> bytes:
    body: dict[str, Any] = {"object": "chat.completion.chunk", "choices": []}
    if delta is not None:
        body["choices"] = [{"index": 0, "delta": delta, "finish_reason": None}]
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode()


def _run(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> tuple[list[str | tuple[int, int]], dict[str, Any]]:
    seen: dict[str, Any] = {}

    async def wrapped(request: web.Request) -> web.StreamResponse:
        seen["body"] = await request.json()
        return await handler(request)

    async def main() -> list[str | tuple[int, int]]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", wrapped)
        async with TestServer(app) as server:
            session = SharedSession()
            model = OpenAIHttpModel(
                "m", session=session, base_url=str(server.make_url("/v1")), api_key="k"
            )
            try:
                return [
                    item
                    async for item in model.chat_stream(
                        [{"role": "user", "content": "hi"}],
                        {"timeout": 5.0, "max_tokens": 7},
                    )
                ]
            finally:
                await session.close()

    return asyncio.run(main()), seen


def test_the_pieces_then_the_tokens_whatever_the_line_ends() -> None:
    long_piece = "x" * 300_000  # one chunk over aiohttp's 128 KiB line limit

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b": keep-alive\r\n\r\n")
        await resp.write(_chunk({"role": "assistant", "content": ""}) + b"\r\n\r\n")
        await resp.write(_chunk({"content": "Hello"}) + b"\n\n")
        half = _chunk({"content": " world"})
        await resp.write(half[:10])  # a line split across writes
        await resp.write(half[10:] + b"\n\n")
        await resp.write(_chunk({"content": long_piece}) + b"\n\n")
        await resp.write(_chunk(usage={"prompt_tokens": 3, "completion_tokens": 9}) + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        return resp

    items, seen = _run(handler)
    assert items == ["Hello", " world", long_piece, (3, 9)]
    body = seen["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 7 and body["messages"] == [{"role": "user", "content": "hi"}]


def test_an_error_status_is_pydantic_ais_http_error() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response({"error": {"message": "overloaded"}}, status=503)

    with pytest.raises(pai_exc.ModelHTTPError) as err:
        _run(handler)
    assert err.value.status_code == 503


def test_an_error_event_mid_stream_ends_the_call() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(_chunk({"content": "Hel"}) + b"\n\n")
        await resp.write(b'data: {"error": {"message": "the model crashed"}}\n\n')
        return resp

    with pytest.raises(pai_exc.UnexpectedModelBehavior, match="ended with an error"):
        _run(handler)
