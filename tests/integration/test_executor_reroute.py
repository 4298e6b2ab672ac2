"""Per-prompt outcomes: a prompt whose decided model this executor cannot call (not in its
catalog, no API key) is re-routed to the next callable model of its ranking, or ends alone
with status ``unavailable``; the chunk's other prompts are answered and stored, and the calls
already made are never made again."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conduit_workers.domain.catalog import Catalog, parse_catalog
from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import DecisionRow
from conduit_workers.execution.executor import handle_execute_batch
from conduit_workers.execution.llm import LLMClient
from conduit_workers.execution.model_check import routable_catalog, uncallable_models
from conduit_workers.history.history import SqlHistory
from conduit_workers.replay import ModelProfile, ReplayConfig
from conduit_workers.settings import ExecutorSettings, FeedbackSettings
from tests.replay_harness import RunningServer, start_replay

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    data = tmp_path / "data.jsonl"
    line = {"id": "p1", "prompt": "unused", "source": "test", "models": {}}
    data.write_text(json.dumps(line) + "\n", encoding="utf-8")
    running = start_replay(
        ReplayConfig(
            data_paths=[data],
            profiles={"*": ModelProfile(latency_ms=5)},
            extra_models=("strong", "cheap", "keyed"),
        )
    )
    yield running
    running.stop()


def _catalog(server: RunningServer, names: tuple[str, ...]) -> Catalog:
    models = [
        {
            "name": name,
            "provider": "openai-compatible",
            "base_url": server.v1,
            "input_price_per_mtok_usd": 1.0,
            "output_price_per_mtok_usd": 1.0,
        }
        for name in names
    ]
    return parse_catalog({"reference": names[0], "models": models}, {})


def _decide(history: SqlHistory, decided: dict[str, tuple[str, list[str]]]) -> list[str]:
    items = [
        parse_item({"id": k, "prompt": f"question {k}"}, max_prompt_chars=1000) for k in decided
    ]
    history.submit("b1", items, tag=None, rejected=0, constraints={})
    ids = [i.key for i in items]
    history.insert_decisions(
        [
            DecisionRow(qid, model, ranked, [0.0], {}, "general", 0.0, None, {})
            for qid, (model, ranked) in zip(ids, decided.values(), strict=True)
        ]
    )
    return ids


def _execute(history: SqlHistory, catalog: Catalog, ids: list[str], callable_: set[str] | None):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        llm = LLMClient(catalog, {}, timeout_s=5)
        try:
            return await handle_execute_batch(
                ids,
                history,
                llm,
                catalog,
                ExecutorSettings(),
                FeedbackSettings(),
                callable_models=callable_,
            )
        finally:
            await llm.aclose()

    return asyncio.run(main())


def test_a_model_gone_from_the_catalog_reroutes_its_prompts(
    history: SqlHistory, server: RunningServer
) -> None:
    catalog = _catalog(server, ("cheap",))  # "strong" left the catalog after routing
    ids = _decide(
        history,
        {
            "a": ("strong", ["strong", "cheap"]),
            "b": ("cheap", ["cheap", "strong"]),
            "c": ("strong", ["strong"]),  # nothing callable left in its ranking
        },
    )
    results, _ = _execute(history, catalog, ids, None)
    by_id = {r.query_id: r for r in results}
    assert by_id[ids[0]].status == "ok" and by_id[ids[0]].model == "cheap"
    assert by_id[ids[1]].status == "ok" and by_id[ids[1]].model == "cheap"
    assert by_id[ids[2]].status == "unavailable"
    assert "strong" in (by_id[ids[2]].error_message or "")
    stats = server.stats()
    assert stats["by_model"] == {"cheap": 2}
    # Executed again (a redelivery, a redrive): no call is made a second time.
    again, _ = _execute(history, catalog, ids, None)
    assert again == [] and server.stats()["calls"] == 2


def test_a_model_without_its_key_is_skipped_and_left_out_of_routing(
    history: SqlHistory, server: RunningServer
) -> None:
    models = [
        {"name": "cheap", "provider": "openai-compatible", "base_url": server.v1},
        {"name": "keyed", "provider": "openai", "api_key_env": "CONDUIT_TEST_ABSENT_KEY"},
    ]
    for m in models:
        m.update(input_price_per_mtok_usd=1.0, output_price_per_mtok_usd=1.0)
    catalog = parse_catalog({"reference": "keyed", "models": models}, {})
    uncallable = uncallable_models(catalog, {})
    assert uncallable == {"keyed": "CONDUIT_TEST_ABSENT_KEY is not set"}
    routable = routable_catalog(catalog, uncallable)
    assert routable.names == ("cheap",) and routable.reference == "cheap"

    ids = _decide(history, {"a": ("keyed", ["keyed", "cheap"]), "b": ("cheap", ["cheap"])})
    # Even without the start-up check, the missing key is found at call time, per prompt.
    for callable_ in (None, {"cheap"}):
        results, _ = _execute(history, catalog, ids, callable_)
        if callable_ is None:
            assert {(r.status, r.model) for r in results} == {("ok", "cheap")}
            assert len(results) == 2
    assert server.stats()["calls"] == 2


def test_reroute_forgets_only_unanswered_decisions_for_models_gone(
    history: SqlHistory, server: RunningServer
) -> None:
    ids = _decide(
        history,
        {"a": ("strong", ["strong"]), "b": ("strong", ["strong"]), "c": ("cheap", ["cheap"])},
    )
    _execute(history, _catalog(server, ("strong", "cheap")), ids[:1], None)  # "a" answered
    stale = history.forget_stale_decisions(ids, ["cheap"])
    assert stale == [ids[1]]  # not the answered one, not the one decided for a model kept
    assert [r.query_id for r in history.load_for_execution(ids)] == [ids[2]]
    assert [q.id for q in history.load_queries(ids)] == [ids[1]]  # the router decides it anew
