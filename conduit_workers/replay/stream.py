"""Streamed answers (``stream: true``): server-sent events in OpenAI's chunk format.

The first chunk carries the role, then the content in pieces of a few words, then a chunk with
the ``finish_reason``; with ``stream_options.include_usage`` a last chunk carries ``usage`` and
no choices, as OpenAI sends it; then ``data: [DONE]``. Half of the answer's delay passes before
the first chunk, the rest between the pieces.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from aiohttp import web

_WORDS_PER_CHUNK = 4


def wants_usage(body: dict[str, Any]) -> bool:
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def pieces(content: str) -> list[str]:
    """The content in pieces of a few words (whitespace kept), joined back unchanged."""
    tokens = re.findall(r"\S+\s*|\s+", content)
    return [
        "".join(tokens[i : i + _WORDS_PER_CHUNK]) for i in range(0, len(tokens), _WORDS_PER_CHUNK)
    ]


async def stream_completion(
    request: web.Request,
    *,
    completion_id: str,
    model: str,
    content: str,
    finish: str,
    usage: dict[str, int],
    include_usage: bool,
    delay_s: float,
    headers: dict[str, str],
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
    )
    created = int(time.time())

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": "conduit-replay",
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def delta(d: dict[str, Any], finish_reason: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish_reason}]

    parts = pieces(content)
    if delay_s:
        await asyncio.sleep(delay_s / 2)
    await response.prepare(request)
    await response.write(chunk(delta({"role": "assistant", "content": ""})))
    gap = delay_s / 2 / max(1, len(parts))
    for part in parts:
        if gap:
            await asyncio.sleep(gap)
        await response.write(chunk(delta({"content": part})))
    await response.write(chunk(delta({}, finish)))
    if include_usage:
        await response.write(chunk([], usage=usage))
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response
