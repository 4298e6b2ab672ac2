"""A streamed answer's response under Starlette (ASGI spec 2.3, as uvicorn serves it): a client
gone before the response's body starts cancels it, and the call's budget hold is released
then, since no model was called; a body that started releases nothing here (its own cleanup
records and settles the call)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from conduit_workers.gateway.streaming import _Call, _Stream

SCOPE: Any = {"type": "http", "asgi": {"spec_version": "2.3"}}


async def _serve(receive_disconnect_at_once: bool) -> tuple[list[str], list[bool]]:
    released: list[str] = []
    started = [False]
    gone = asyncio.Event()
    call = _Call()

    async def body() -> AsyncIterator[bytes]:
        started[0] = True
        call.start = asyncio.get_running_loop().create_future()
        call.start.set_result(None)  # a call that began and started answering
        call.begun = True
        yield b": conduit\n\n"
        gone.set()  # the client leaves once the first bytes are out
        await asyncio.sleep(10)
        yield b"data: [DONE]\n\n"

    async def release() -> None:
        released.append("hold")

    async def receive() -> dict[str, str]:
        if not receive_disconnect_at_once:
            await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)

    response = _Stream(body(), call, release, media_type="text/event-stream")
    await asyncio.wait_for(response(SCOPE, receive, send), 5)
    return released, started


def test_a_client_gone_before_the_body_starts_releases_the_hold() -> None:
    released, started = asyncio.run(_serve(receive_disconnect_at_once=True))
    assert started == [False] and released == ["hold"]


def test_a_body_that_started_is_left_to_its_own_cleanup() -> None:
    released, started = asyncio.run(_serve(receive_disconnect_at_once=False))
    assert started == [True] and released == []
