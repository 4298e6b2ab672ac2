"""``stream: true``: the answer as server-sent events in OpenAI's chunk format.

The response starts at once, before the model has answered anything: an SDK retries a request
whose response has not started within its timeout (and one answered 5xx), and the call it
gave up on would still run and be billed, so a slow first piece cost a second paid call. While
the model has not answered its first piece, an SSE comment every
``CONDUIT_GATEWAY__STREAM_KEEPALIVE_S`` keeps the connection and the client's read timeout
alive (SSE readers, the OpenAI SDK's included, skip comments).

The chosen model is tried first, then its fallbacks, until one starts answering (a model that
fails before its first piece is recorded as a failed call, as the executor records it); once a
piece has gone out, the stream belongs to that model. If every model fails before its first
piece, or one fails after it, the stream ends with an ``error`` event (the OpenAI SDK raises
it as ``APIError``). The budget is settled and the call recorded when the stream ends, however
it ends: a client that goes away mid-stream, or while the model has not answered yet, leaves
its call counted at its worst case (it may still be billed) and recorded as an error
``client_gone``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi.responses import StreamingResponse

from conduit_workers.domain.records import Completion, ResultRow
from conduit_workers.domain.rewards import FeedbackEvent, call_event
from conduit_workers.errors import ProviderError
from conduit_workers.execution.llm_stream import stream_chat
from conduit_workers.gateway.errors import ApiError
from conduit_workers.gateway.service import Gateway, Prepared

_Pieces = AsyncIterator[str | Completion]


_Started = tuple[str, _Pieces, str | Completion, list[FeedbackEvent]]
_cleanups: set[asyncio.Task[None]] = set()  # releases of holds whose call never began


class _Call:
    """What a streamed response did about its model call: the task starting it (None while
    the body has not started) and whether that task began (one cancelled before it ran never
    did: no model was called)."""

    __slots__ = ("start", "begun")

    def __init__(self) -> None:
        self.start: asyncio.Future[_Started] | None = None
        self.begun = False


async def _start(gw: Gateway, p: Prepared, call: _Call) -> _Started:
    call.begun = True
    weights = gw.settings.feedback.call_weights
    events: list[FeedbackEvent] = []
    last: ProviderError | None = None
    for model in p.models:
        started = time.perf_counter()
        pieces = stream_chat(gw.llm, model, p.request)
        try:
            first = await anext(pieces)
        except ProviderError as err:
            last = err
            ms = (time.perf_counter() - started) * 1000
            events.append(call_event(p.query_id, model, weights, error=True, latency_ms=ms))
            continue
        except asyncio.CancelledError:  # the client went away before the first piece
            with contextlib.suppress(Exception):
                await pieces.aclose()  # type: ignore[attr-defined]
            events.append(call_event(p.query_id, model, weights, error=True, latency_ms=0.0))
            gone = ResultRow(
                p.query_id,
                model,
                "error",
                attempts=len(events),
                fallbacks=len(events) - 1,
                error_class="client_gone",
                error_message="the client closed the stream",
            )
            gw.record(p, gone, events)
            await asyncio.shield(gw.settle(p, None))
            raise
        return model, pieces, first, events
    assert last is not None
    await gw.settle(p, 0.0)
    result = ResultRow(
        p.query_id,
        last.model_name,
        "error",
        attempts=len(events),
        fallbacks=max(0, len(events) - 1),
        error_class=last.error_class,
        error_message=str(last),
    )
    gw.record(p, result, events)
    raise ApiError(
        502,
        f"the model call failed: {last} (query {p.query_id})",
        code=last.error_class,
        type_="api_error",
        headers={"x-conduit-query-id": p.query_id},
    )


class _Stream(StreamingResponse):
    """A streamed answer, and what becomes of its call when the response ends, however it
    ends (the client gone cancels the response, Starlette's ASGI < 2.4, which uvicorn speaks):
    a call still waiting for its first piece is cancelled (``_start`` records it and settles
    its hold at the worst case: the model may bill it), and a call that never began (the body
    never started, or its task was cancelled before it ran) has its hold released by
    ``release``: no model was called, and the hold would otherwise be charged at its worst
    case when it expired."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        call: _Call,
        release: Callable[[], Coroutine[Any, Any, None]],
        **kw: Any,
    ) -> None:
        super().__init__(body, **kw)
        self.call = call
        self.release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            start = self.call.start
            if start is None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.release())
            elif not start.done():
                start.cancel()
                start.add_done_callback(self._release_if_never_begun)

    def _release_if_never_begun(self, _: object) -> None:
        if not self.call.begun:
            task = asyncio.get_running_loop().create_task(self.release())
            _cleanups.add(task)
            task.add_done_callback(_cleanups.discard)


async def stream_response(gw: Gateway, p: Prepared) -> StreamingResponse:
    call = _Call()
    return _Stream(
        _stream(gw, p, call),
        call,
        lambda: gw.settle(p, 0.0),
        media_type="text/event-stream",
        headers={"x-conduit-query-id": p.query_id, "Cache-Control": "no-cache"},
    )


async def _stream(gw: Gateway, p: Prepared, call: _Call) -> AsyncIterator[bytes]:
    """The response's body: a comment at once (the response has started), a comment every
    ``stream_keepalive_s`` until the model's first piece, then the answer's chunks."""
    start = call.start = asyncio.ensure_future(_start(gw, p, call))
    yield b": conduit\n\n"
    while not (await asyncio.wait({start}, timeout=gw.settings.gateway.stream_keepalive_s))[0]:
        yield b": waiting for the model\n\n"
    try:
        model, pieces, first, events = start.result()
    except ApiError as err:  # every model failed before its first piece (recorded, settled)
        yield _error_event(err.message, err.code)
        return
    async for event in _events(gw, p, model, pieces, first, events):
        yield event


def _error_event(message: str, code: str | None) -> bytes:
    error = {"message": message, "type": "api_error", "param": None, "code": code}
    return b"data: " + json.dumps({"error": error}).encode() + b"\n\n"


async def _events(
    gw: Gateway,
    p: Prepared,
    model: str,
    pieces: _Pieces,
    first: str | Completion,
    events: list[FeedbackEvent],
) -> AsyncIterator[bytes]:
    created = int(time.time())
    cid = f"chatcmpl-{p.query_id}"
    opts = p.body.stream_options
    include_usage = bool(opts and opts.include_usage)

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
            **extra,
        }
        return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"

    def delta(d: dict[str, Any], finish: str | None = None) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}]

    weights = gw.settings.feedback.call_weights
    tried = len(events)
    result = ResultRow(
        p.query_id,
        model,
        "error",
        attempts=tried + 1,
        fallbacks=tried,
        error_class="client_gone",
        error_message="the client closed the stream",
    )
    cost: float | None = None
    try:
        yield chunk(delta({"role": "assistant", "content": ""}))
        item = first
        while not isinstance(item, Completion):
            yield chunk(delta({"content": item}))
            item = await anext(pieces)
        done = item
        cost = gw.catalog.get(model).cost_usd(done.input_tokens, done.output_tokens)
        result = ResultRow(
            p.query_id,
            model,
            "ok",
            done.text,
            done.input_tokens,
            done.output_tokens,
            cost,
            done.latency_ms,
            tried + 1,
            tried,
        )
        events.append(
            call_event(
                p.query_id,
                model,
                weights,
                error=False,
                latency_ms=done.latency_ms,
                in_tokens=done.input_tokens,
                out_tokens=done.output_tokens,
                cost_usd=cost,
            )
        )
        yield chunk(delta({}, gw.finish_reason(p, result)))
        if include_usage:
            usage = {
                "prompt_tokens": done.input_tokens,
                "completion_tokens": done.output_tokens,
                "total_tokens": done.input_tokens + done.output_tokens,
            }
            yield chunk([], usage=usage)
        yield b"data: [DONE]\n\n"
    except ProviderError as err:
        result = ResultRow(
            p.query_id,
            model,
            "error",
            attempts=tried + 1,
            fallbacks=tried,
            error_class=err.error_class,
            error_message=str(err),
        )
        events.append(call_event(p.query_id, model, weights, error=True, latency_ms=0.0))
        yield _error_event(f"the model call failed mid-stream: {err}", err.error_class)
    finally:
        with contextlib.suppress(Exception):
            await pieces.aclose()  # type: ignore[attr-defined]
        if result.status != "ok" and not any(e.model == model for e in events):
            events.append(call_event(p.query_id, model, weights, error=True, latency_ms=0.0))
        gw.record(p, result, events)
        await asyncio.shield(gw.settle(p, cost))
