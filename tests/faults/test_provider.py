"""Provider faults from the replay server: 429 + Retry-After, bursts of 500s and hangs, 400
and 401. Every prompt still ends with exactly one result, billed once and learned from once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from conduit_workers.history import history_schema as t
from tests.faults.harness import FaultSystem, check_exactly_once, start_system
from tests.faults.services import PrivateRedis

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]
N = 500
STRONG = "gpt-4-1106-preview"
CHEAP = "mistralai/Mixtral-8x7B-Instruct-v0.1"
# Hangs last up to timeout_s per attempt: the tasks get more time than in the kill tests.
SLOW_ENV = {"CONDUIT_BROKER__TASK_TIME_LIMIT_S": "40", "CONDUIT_BROKER__VISIBILITY_TIMEOUT_S": "50"}


@pytest.fixture
def slow_system(workdir: Path, private_redis: PrivateRedis, db_url: str):  # type: ignore[no-untyped-def]
    s = start_system(workdir, private_redis.url, db_url, latency_ms=150, extra_env=SLOW_ENV)
    try:
        yield s
    finally:
        s.stop()


def _wait_calls(system: FaultSystem, model: str, timeout_s: float = 60) -> None:
    """Until the replay server has seen a call (to ``model``, or any for "*")."""
    deadline = time.monotonic() + timeout_s
    while True:
        stats = system.replay_stats()
        if (stats["calls"] if model == "*" else stats["by_model"].get(model, 0)) > 0:
            return
        assert time.monotonic() < deadline, "no LLM call yet"
        time.sleep(0.05)


def _rows(system: FaultSystem) -> list[sa.Row]:  # type: ignore[type-arg]
    with system.client.history.engine.connect() as conn:
        return conn.execute(
            sa.select(t.results, t.decisions.c.model.label("decided"), t.queries.c.prompt)
            .select_from(
                t.results.join(t.decisions, t.decisions.c.query_id == t.results.c.query_id).join(
                    t.queries, t.queries.c.id == t.results.c.query_id
                )
            )
            .order_by(t.results.c.created_at)
        ).all()


def test_429_with_retry_after_backs_off_without_a_retry_storm(slow_system: FaultSystem) -> None:
    system = slow_system
    system.set_profiles({"*": {"latency_ms": 150, "rate_429": 1.0, "retry_after_s": 1}})
    batch, ids = system.submit("r429", N)
    _wait_calls(system, "*")
    time.sleep(4.0)  # four Retry-After periods of a provider that answers only 429
    limited = system.replay_stats()
    system.set_profiles({"*": {"latency_ms": 150}})
    healed = time.monotonic()
    done = system.wait_settled(batch)
    checked = check_exactly_once(system, batch, ids, max_duplicate_calls=0)
    n429 = limited["statuses"].get("429", 0)
    # One probe per Retry-After per model and process, after the calls already in flight
    # (concurrency 8 per process): 2 processes x 2 models x (8 + 4 + 1) = 52. Without the
    # shared gate every waiting prompt would retry on its own: thousands of 429s.
    assert 0 < n429 <= 52, limited
    assert checked.statuses == {"ok": N}
    print(
        f"\nFAULT 429 Retry-After=1s for 4 s: {n429} calls answered 429 during the window "
        f"({limited['calls']} calls in all), settled {done - healed:.1f} s after the provider "
        f"healed, {checked.llm_calls} LLM calls, {checked.duplicate_calls} duplicates"
    )


def test_500_bursts_and_hangs_cool_the_model_down_then_it_returns(slow_system: FaultSystem) -> None:
    system = slow_system
    system.set_profiles(
        {
            "*": {"latency_ms": 150},
            STRONG: {"latency_ms": 150, "rate_500": 0.7, "rate_hang": 0.3, "hang_s": 30},
        }
    )
    batch, ids = system.submit("r500", N)
    _wait_calls(system, STRONG)
    time.sleep(3.0)
    faulty = system.replay_stats()
    system.set_profiles({"*": {"latency_ms": 150}})
    healed = time.monotonic()
    healed_wall = time.time()
    done = system.wait_settled(batch)
    checked = check_exactly_once(system, batch, ids, max_duplicate_calls=0)
    rows = _rows(system)
    decided_strong = [r for r in rows if r.decided == STRONG]
    assert len(decided_strong) >= 50, "the router sent too few prompts to the faulty model"
    fell_back = [r for r in decided_strong if r.model == CHEAP and r.status == "ok"]
    returned = [
        r
        for r in decided_strong
        if r.model == STRONG and r.status == "ok" and r.created_at.timestamp() > healed_wall
    ]
    assert fell_back, "no prompt fell back to the next-best model while the model failed"
    assert returned, "the model got no traffic back after it recovered"
    failing_calls = faulty["by_model"].get(STRONG, 0)
    # Cooled down after a handful of failures per process (8 in the window, each prompt up
    # to 3 attempts, 8 in flight): far fewer calls than prompts routed to it.
    assert failing_calls <= 100, faulty
    assert checked.statuses.get("ok", 0) >= N - 10, checked.statuses
    print(
        f"\nFAULT 500/hang burst on {STRONG} for 3 s: {failing_calls} calls to it in the "
        f"window, {len(fell_back)} prompts fell back, {len(returned)} answered by it after it "
        f"healed; settled {done - healed:.1f} s after healing; statuses {checked.statuses}, "
        f"{checked.llm_calls} LLM calls, {checked.duplicate_calls} duplicates"
    )


def test_400_is_not_retried_and_says_why(slow_system: FaultSystem) -> None:
    system = slow_system
    system.set_profiles({"*": {"latency_ms": 20}, STRONG: {"latency_ms": 20, "rate_400": 1.0}})
    batch, ids = system.submit("r400", N)
    system.wait_settled(batch)
    checked = check_exactly_once(system, batch, ids, max_duplicate_calls=0)
    rows = _rows(system)
    bad = [r for r in rows if r.decided == STRONG]
    assert bad and all(
        r.status == "error" and r.error_class == "http_400" and r.attempts == 1 for r in bad
    )
    assert all(
        "rejected the request" in r.error_message and r.prompt not in r.error_message for r in bad
    )
    assert system.replay_stats()["statuses"]["400"] == len(bad)  # one call each: no retry
    assert all(r.status == "ok" for r in rows if r.decided != STRONG)
    print(
        f"\nFAULT 400 on {STRONG}: {len(bad)} prompts ended with http_400 after 1 call each; "
        f"{checked.llm_calls} LLM calls, {checked.duplicate_calls} duplicates"
    )


def test_401_is_not_retried_and_says_why(
    workdir: Path, private_redis: PrivateRedis, db_url: str
) -> None:
    system = start_system(workdir, private_redis.url, db_url, latency_ms=5, start=False)
    system.replay.stop()  # again, requiring an API key that the catalog does not send
    from producers.local import start_replay_server
    from tests.conftest import SAMPLE

    system.replay, url = start_replay_server(
        [SAMPLE], workdir / "replay401.log", latency_ms=5, extra_args=["--api-key", "right-key"]
    )
    system.replay_url = url
    system.env["CONDUIT_REPLAY_URL"] = url
    import os

    os.environ["CONDUIT_REPLAY_URL"] = url
    system.start_all()
    try:
        batch, ids = system.submit("r401", N)
        system.wait_settled(batch)
        checked = check_exactly_once(system, batch, ids, max_duplicate_calls=0)
        rows = _rows(system)
        assert all(
            r.status == "error" and r.error_class == "http_401" and r.attempts == 1 for r in rows
        )
        assert all("check the API key" in r.error_message for r in rows)
        assert "right-key" not in system.worker_logs()
        assert system.replay_stats()["statuses"] == {"401": N}
        print(
            f"\nFAULT 401 (wrong key): {N} prompts ended with http_401 after 1 call each "
            f"({system.replay_stats()['statuses']}), {checked.duplicate_calls} duplicates"
        )
    finally:
        system.stop()
