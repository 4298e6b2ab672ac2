"""The replay server in a background thread (its own event loop) and a tiny HTTP client, for
tests that need real sockets between a client and the server."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conduit_workers.replay import ReplayConfig
from conduit_workers.replay.server import serve


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


@dataclass
class RunningServer:
    base_url: str  # http://127.0.0.1:PORT
    stop: Callable[[], None]

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10,
    ) -> Reply:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, hdrs, payload = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            status, hdrs, payload = exc.code, dict(exc.headers), exc.read()
        try:
            parsed: Any = json.loads(payload)
        except ValueError:
            parsed = payload.decode()
        return Reply(status, {k.lower(): v for k, v in hdrs.items()}, parsed)

    def chat(self, model: str, prompt: Any, **extra: Any) -> Reply:
        headers = extra.pop("headers", None)
        timeout = extra.pop("timeout", 10)
        body = {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}
        return self.request("POST", "/v1/chat/completions", body, headers=headers, timeout=timeout)

    def stats(self) -> dict[str, Any]:
        reply = self.request("GET", "/_replay/stats")
        assert reply.status == 200
        result: dict[str, Any] = reply.body
        return result


def start_replay(config: ReplayConfig) -> RunningServer:
    ready = threading.Event()
    port: list[int] = []
    control: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
    errors: list[BaseException] = []

    async def main() -> None:
        stop = asyncio.Event()
        control.append((asyncio.get_running_loop(), stop))

        def on_ready(host: str, bound_port: int, models: list[str]) -> None:
            port.append(bound_port)
            ready.set()

        await serve(config, "127.0.0.1", 0, on_ready=on_ready, stop=stop.wait())

    def thread_main() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by the fixture instead of dying silently
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=thread_main, name="replay-server", daemon=True)
    thread.start()
    assert ready.wait(10), "replay server did not start within 10 s"
    if errors:
        raise errors[0]

    def stop() -> None:
        loop, event = control[0]
        loop.call_soon_threadsafe(event.set)
        thread.join(10)
        assert not thread.is_alive(), "replay server did not stop within 10 s"

    return RunningServer(base_url=f"http://127.0.0.1:{port[0]}", stop=stop)


PROMPT_1 = "What is the capital of France?\nA. Paris\nB. Rome\nC. Madrid\nD. Berlin\nAnswer:"
PROMPT_2 = "Write a function that adds two numbers."
PROMPT_3 = "Summarise the plot of Hamlet in one paragraph.\n"  # recorded with a trailing newline
RESPONSE_1 = "A. Paris"
RESPONSE_2 = "def add(a, b):\n    return a + b"


def write_replay_data(path: Path) -> Path:
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
