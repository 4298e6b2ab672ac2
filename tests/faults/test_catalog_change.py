"""The catalog changes while prompts wait: the executor restarts with a catalog that lacks the
model most prompts were decided for. Every prompt is answered (re-routed to the next model of
its ranking), nothing is dead-lettered, and no paid call is ever made twice, not even when the
file is submitted again."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from conduit_workers.history import history_schema as t
from conduit_workers.infra.dead_letters import RedisDeadLetters
from tests.faults.harness import FaultSystem, check_exactly_once, start_system
from tests.faults.services import PrivateRedis

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]
N = 400
MODELS = {"gpt-4-1106-preview": (10.0, 30.0), "mistralai/Mixtral-8x7B-Instruct-v0.1": (0.6, 0.6)}


def _catalog_without(path: Path, gone: str) -> Path:
    (keep,) = (m for m in MODELS if m != gone)
    path.write_text(
        f'reference = "{keep}"\n[[models]]\nname = "{keep}"\nprovider = "openai-compatible"\n'
        'base_url = "${CONDUIT_REPLAY_URL}"\n'
        f"input_price_per_mtok_usd = {MODELS[keep][0]}\n"
        f"output_price_per_mtok_usd = {MODELS[keep][1]}\n"
    )
    return path


def _decided(system: FaultSystem) -> Counter[str]:
    with system.client.history.engine.connect() as conn:
        return Counter(conn.scalars(sa.select(t.decisions.c.model)))


@pytest.fixture
def waiting_system(workdir: Path, private_redis: PrivateRedis, db_url: str):  # type: ignore[no-untyped-def]
    s = start_system(workdir, private_redis.url, db_url, start=False)
    try:
        s.start_worker("route")
        s.start_worker("feedback")
        yield s
    finally:
        s.stop()


def test_catalog_without_the_decided_model_answers_every_prompt_once(
    waiting_system: FaultSystem, workdir: Path
) -> None:
    system = waiting_system
    batch, ids = system.submit("catalog", N)  # no executor yet: the prompts wait, decided
    deadline = time.monotonic() + 120
    while sum(_decided(system).values()) < N:
        assert time.monotonic() < deadline, "prompts not routed in time"
        time.sleep(0.2)
    decided = _decided(system)
    gone = decided.most_common(1)[0][0]
    catalog = _catalog_without(workdir / "catalog-without.toml", gone)
    full_env = system.env
    system.env = {**full_env, "CONDUIT_CATALOG__PATH": str(catalog)}
    started = time.monotonic()
    system.start_worker("execute")
    system.env = full_env
    done = system.wait_settled(batch, timeout_s=120)

    checked = check_exactly_once(system, batch, ids, max_duplicate_calls=0)
    assert checked.statuses == {"ok": N}
    assert system.replay_stats()["by_model"].get(gone, 0) == 0
    letters = RedisDeadLetters(system.store.client, system.settings.redis.key_prefix)
    assert letters.list() == []

    # The same file again, with the full catalog back: every prompt is known and answered,
    # so nothing is routed or called again.
    calls = system.replay_stats()["calls"]
    system.kill_worker("execute")
    system.start_worker("execute")
    items = [
        {"id": f"catalog-{i}", "prompt": f"[catalog] question {i}: what is {i} plus {i % 13}?"}
        for i in range(N)
    ]
    again = system.client.submit(items, tag="catalog")
    assert (again.accepted, again.new, again.enqueued) == (N, 0, 0)
    assert system.replay_stats()["calls"] == calls
    print(
        f"\nFAULT catalog change while {N} prompts waited ({decided[gone]} decided for {gone}, "
        f"gone from the executor's catalog): {checked.statuses} in {done - started:.1f} s "
        f"after the executor started, {checked.llm_calls} LLM calls, "
        f"{checked.duplicate_calls} duplicate calls, 0 dead letters; resubmitted: 0 new calls"
    )
