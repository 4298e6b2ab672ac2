"""The history database lost between the calls and the storing of their answers: the answers
wait in Redis (``P:stash:<id>``) and the retried task stores them without calling the models
again; before the stash, every such retry paid for the chunk twice.

The outage is real: the executor's history reaches PostgreSQL through a TCP relay that the test
cuts while the calls are in flight (the database itself stays up for the other tests)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from conduit_workers.domain.catalog import Catalog, parse_catalog
from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import DecisionRow
from conduit_workers.errors import StoreUnavailable
from conduit_workers.execution.answer_stash import AnswerStash
from conduit_workers.execution.executor import handle_execute_batch
from conduit_workers.execution.llm import LLMClient
from conduit_workers.history.history import SqlHistory
from conduit_workers.replay import ModelProfile, ReplayConfig
from conduit_workers.settings import ExecutorSettings, FeedbackSettings
from tests.replay_harness import RunningServer, start_replay

pytestmark = pytest.mark.integration


class Relay:
    """A TCP relay to ``target``; ``cut()`` closes every connection and refuses new ones until
    ``mend()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for s in self.socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.socks.clear()

    def mend(self) -> None:
        self.open = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture
def relayed_url(pg_url: str) -> Iterator[tuple[str, Relay]]:
    parts = urlsplit(pg_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{relay.port}"
    netloc_new = f"{netloc[0]}@{host}" if len(netloc) == 2 else host
    yield urlunsplit(parts._replace(netloc=netloc_new)), relay
    relay.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    data = tmp_path / "data.jsonl"
    line = {"id": "p1", "prompt": "unused", "source": "test", "models": {}}
    data.write_text(json.dumps(line) + "\n", encoding="utf-8")
    # Slow enough that the relay is cut while every call is in flight.
    running = start_replay(
        ReplayConfig(
            data_paths=[data],
            profiles={"*": ModelProfile(latency_ms=1500)},
            extra_models=("cheap",),
        )
    )
    yield running
    running.stop()


def _catalog(server: RunningServer, names: tuple[str, ...] = ("cheap",)) -> Catalog:
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
    return parse_catalog({"reference": names[-1], "models": models}, {})


def _execute(
    history: SqlHistory, catalog: Catalog, ids: list[str], stash: AnswerStash
) -> list[str]:
    async def main() -> list[str]:
        llm = LLMClient(catalog, {}, timeout_s=10)
        try:
            results, _ = await handle_execute_batch(
                ids, history, llm, catalog, ExecutorSettings(), FeedbackSettings(), stash=stash
            )
            return sorted(r.query_id for r in results)
        finally:
            await llm.aclose()

    return asyncio.run(main())


def test_answers_called_during_a_database_outage_are_stored_not_called_again(
    relayed_url: tuple[str, Relay], redis_url: str, server: RunningServer
) -> None:
    url, relay = relayed_url
    history = SqlHistory(url, retry_for_s=0.5)
    history.create_schema()
    items = [
        parse_item({"id": f"q{k}", "prompt": f"question {k}"}, max_prompt_chars=1000)
        for k in range(3)
    ]
    history.submit("b1", items, tag=None, rejected=0, constraints={})
    ids = [i.key for i in items]
    history.insert_decisions(
        [DecisionRow(q, "cheap", ["cheap"], [0.0], {}, "general", 0.0, None, {}) for q in ids]
    )
    client = redis.Redis.from_url(redis_url)
    stash = AnswerStash(client, "T", ttl_s=600)
    catalog = _catalog(server)

    cutter = threading.Timer(0.5, relay.cut)  # the calls take 1.5 s
    cutter.start()
    with pytest.raises(StoreUnavailable):
        _execute(history, catalog, ids, stash)
    cutter.join()
    assert server.stats()["calls"] == 3
    assert len(client.keys("T:stash:*")) == 3  # kept for the retry

    relay.mend()
    assert _execute(history, catalog, ids, stash) == sorted(ids)  # stored by the retry
    assert server.stats()["calls"] == 3  # and not paid for twice
    assert client.keys("T:stash:*") == []
    rows = history.batch_results("b1")
    assert [(r["status"], r["model"]) for r in rows] == [("ok", "cheap")] * 3
    assert all(r["response"] for r in rows)
    # Each answer's implicit feedback event came through the stash too.
    assert len(history.unapplied_feedback_for(ids)) == 3
    # A later delivery finds every prompt answered: no call, nothing stored twice.
    assert _execute(history, catalog, ids, stash) == []
    assert server.stats()["calls"] == 3
    history.dispose()


def test_a_task_killed_mid_chunk_leaves_its_answers_to_its_redelivery(
    history: SqlHistory, redis_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"id": "p", "prompt": "x", "models": {}}) + "\n", encoding="utf-8")
    server = start_replay(
        ReplayConfig(
            data_paths=[data],
            profiles={"fast": ModelProfile(latency_ms=50), "slow": ModelProfile(latency_ms=3000)},
            extra_models=("fast", "slow"),
        )
    )
    try:
        catalog = _catalog(server, ("fast", "slow"))
        items = [
            parse_item({"id": f"k{k}", "prompt": f"question {k}"}, max_prompt_chars=1000)
            for k in range(8)
        ]
        history.submit("b2", items, tag=None, rejected=0, constraints={})
        ids = [i.key for i in items]
        decided = {q: ("fast" if k < 6 else "slow") for k, q in enumerate(ids)}
        history.insert_decisions(
            [
                DecisionRow(q, m, [m], [0.0], {}, "general", 0.0, None, {})
                for q, m in decided.items()
            ]
        )
        stash = AnswerStash(redis.Redis.from_url(redis_url), "T", ttl_s=600)

        async def killed() -> None:
            llm = LLMClient(catalog, {}, timeout_s=10)
            task = asyncio.create_task(
                handle_execute_batch(
                    ids, history, llm, catalog, ExecutorSettings(), FeedbackSettings(), stash=stash
                )
            )
            await asyncio.sleep(1.5)  # the fast answers are in, the slow calls in flight
            task.cancel()  # the worker dies: nothing after this line of the task runs
            with pytest.raises(asyncio.CancelledError):
                await task
            await llm.aclose()

        asyncio.run(killed())
        assert server.stats()["by_model"] == {"fast": 6, "slow": 2}
        assert history.batch_results("b2")[0]["status"] is None  # nothing stored

        # The redelivery stores the six answers it finds and calls only the two in flight.
        assert _execute(history, catalog, ids, stash) == sorted(ids)
        assert server.stats()["by_model"] == {"fast": 6, "slow": 4}
        assert [r["status"] for r in history.batch_results("b2")] == ["ok"] * 8
    finally:
        server.stop()
