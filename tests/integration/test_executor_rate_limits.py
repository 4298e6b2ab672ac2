"""The executor against the replay server answering 429 + Retry-After: a rate-limited prompt
waits at its model's gate (429s there use up no attempt) and falls back only after
``rate_limit_wait_s``; it never ends in error because a provider throttled it for a while."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conduit_workers.domain.catalog import Catalog, parse_catalog
from conduit_workers.domain.health import ModelHealth
from conduit_workers.domain.records import ExecutionRow
from conduit_workers.execution.executor import _execute_one, _Outcome
from conduit_workers.execution.llm import LLMClient
from conduit_workers.replay import ModelProfile, ReplayConfig
from conduit_workers.settings import ExecutorSettings, FeedbackSettings
from tests.replay_harness import RunningServer, start_replay

pytestmark = pytest.mark.integration

PROMPT = "Name the largest planet of the solar system."


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    data = tmp_path / "data.jsonl"
    line = {"id": "p1", "prompt": PROMPT, "source": "test", "models": {}}
    data.write_text(json.dumps(line) + "\n", encoding="utf-8")
    limited = ModelProfile(latency_ms=5, rate_429=1.0, retry_after_s=0.2)
    running = start_replay(
        ReplayConfig(
            data_paths=[data],
            profiles={"*": ModelProfile(latency_ms=5), "strong": limited},
            extra_models=("strong", "cheap"),
        )
    )
    yield running
    running.stop()


def _catalog(server: RunningServer) -> Catalog:
    models = [
        {
            "name": name,
            "provider": "openai-compatible",
            "base_url": server.v1,
            "input_price_per_mtok_usd": price,
            "output_price_per_mtok_usd": price,
        }
        for name, price in (("strong", 10.0), ("cheap", 0.5))
    ]
    return parse_catalog({"reference": "strong", "models": models}, {})


def _run(server: RunningServer, ex: ExecutorSettings, heal_after_s: float | None) -> _Outcome:
    catalog = _catalog(server)
    row = ExecutionRow("q1", PROMPT, "strong", ["strong", "cheap"], None)

    async def main() -> _Outcome:
        llm = LLMClient(catalog, {}, timeout_s=5)
        task = asyncio.create_task(
            _execute_one(row, llm, catalog, ex, FeedbackSettings(), ModelHealth())
        )
        try:
            if heal_after_s is not None:
                await asyncio.sleep(heal_after_s)
                healed = await asyncio.to_thread(server.request, "PUT", "/_replay/profiles", {})
                assert healed.status == 200
            return await task
        finally:
            await llm.aclose()

    return asyncio.run(main())


def test_rate_limited_prompt_waits_for_its_model_past_max_attempts(server: RunningServer) -> None:
    ex = ExecutorSettings(max_attempts=2, rate_limit_wait_s=10.0)
    out = _run(server, ex, heal_after_s=1.2)
    n429 = server.stats()["statuses"].get("429", 0)
    assert n429 > ex.max_attempts  # more 429s than attempts, and still answered by its model
    assert out.result.status == "ok" and out.result.model == "strong", out.result
    assert out.result.attempts == n429 + 1
    assert [(e.model, e.error) for e in out.events] == [("strong", False)]


def test_rate_limited_past_the_wait_falls_back_to_the_next_model(server: RunningServer) -> None:
    ex = ExecutorSettings(max_attempts=3, rate_limit_wait_s=0.5)
    out = _run(server, ex, heal_after_s=None)
    assert out.result.status == "ok" and out.result.model == "cheap", out.result
    assert [(e.model, e.error) for e in out.events] == [("strong", True), ("cheap", False)]
    assert out.result.fallbacks == 1
