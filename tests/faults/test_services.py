"""Dead services: Redis restarted mid-batch, Redis lost entirely (posteriors rebuilt from the
history database), PostgreSQL stopped for 10 s, the posterior Redis unreachable while routing."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conduit_workers.domain.catalog import load_catalog
from conduit_workers.domain.constraints import Constraints
from tests.faults.harness import FaultSystem, check_exactly_once, start_system
from tests.faults.services import PrivatePostgres, PrivateRedis

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]
N = 500
CHUNK = 25


def _snapshot(system: FaultSystem) -> dict[str, tuple[int, np.ndarray]]:
    """Each model's version and statistics, as Redis stores them (read uncached)."""
    settings = system.settings
    names = list(
        load_catalog(settings.catalog.path, {"CONDUIT_REPLAY_URL": system.replay_url}).names
    )
    store = system.store
    out = {}
    for m in names:
        raw, version = store.client.hmget(store.posterior_key(m), "stats", "version")
        values = np.frombuffer(raw, dtype="<f8") if raw else np.zeros(0)
        out[m] = (int(version or 0), values)
    return out


def test_redis_restarted_mid_batch(system: FaultSystem, private_redis: PrivateRedis) -> None:
    batch, ids = system.submit("redisrestart", N)
    system.wait_answered(batch, 100)
    private_redis.kill()
    down = time.monotonic()
    time.sleep(3.0)
    private_redis.start()  # same port, same append-only file: queues and posteriors intact
    done = system.wait_settled(batch, timeout_s=180)
    checked = check_exactly_once(system, batch, ids, max_duplicate_calls=2 * CHUNK)
    assert checked.statuses == {"ok": N}
    print(
        f"\nFAULT Redis (broker + posteriors) killed for 3 s mid-batch: settled "
        f"{done - down:.1f} s after the kill, {checked.llm_calls} LLM calls, "
        f"{checked.duplicate_calls} duplicates, workers restarted after a crash: "
        f"{system.crashed or 'none'}"
    )


def test_redis_lost_posteriors_rebuilt_from_history(
    system: FaultSystem, private_redis: PrivateRedis
) -> None:
    # Routed by λ_cost, so that both models gather evidence to rebuild (under the default
    # floor a first batch without ratings goes to the reference alone).
    batch, ids = system.submit("redislost", N, Constraints(lambda_cost=0.1))
    system.wait_settled(batch)
    rated = system.client.feedback([(f"redislost-{i}", (i % 5) / 4) for i in range(0, N, 2)])
    assert rated.applied == N // 2
    system.wait_settled(batch)
    before = _snapshot(system)
    check_exactly_once(system, batch, ids, max_duplicate_calls=0)

    system.workers["feedback"].stop()  # the rebuild runs with the feedback workers stopped
    private_redis.kill()
    private_redis.wipe()
    private_redis.start()
    assert all(v == 0 for v, _ in _snapshot(system).values()), "Redis still had data"
    assert system.store.client.dbsize() == 0

    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "producers.cli", "posteriors", "--rebuild"],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    assert out.returncode == 0, out.stderr
    assert "rebuilt from" in out.stderr
    after = _snapshot(system)
    assert set(after) == set(before)
    for model, (version, values) in before.items():
        v2, values2 = after[model]
        assert v2 == version and len(values) > 0, model
        # Equal up to the rounding of summing the same numbers in another grouping.
        np.testing.assert_allclose(values2, values, rtol=1e-12, atol=1e-12)
    system.start_worker("feedback")
    check_exactly_once(system, batch, ids, max_duplicate_calls=0)
    print(
        f"\nFAULT Redis lost (no persistence): posteriors of {len(before)} models rebuilt "
        f"from the history database in {took:.1f} s (command included), equal to the lost ones"
    )


def test_postgres_down_10_s_mid_batch(workdir: Path, private_redis: PrivateRedis) -> None:
    pg = PrivatePostgres(workdir)
    system = start_system(workdir, private_redis.url, pg.url)
    try:
        batch, ids = system.submit("pgdown", N)
        system.wait_answered(batch, 100)
        pg.stop()
        down = time.monotonic()
        time.sleep(10.0)
        pg.start()
        done = system.wait_settled(batch, timeout_s=180)
        # Answers called while the database was down wait in Redis for the retry: none is
        # called twice (execution/answer_stash.py; before it, up to two chunks were).
        checked = check_exactly_once(system, batch, ids, max_duplicate_calls=0)
        assert checked.statuses == {"ok": N}
        assert "history database unavailable" in system.worker_logs()
        print(
            f"\nFAULT PostgreSQL stopped for 10 s mid-batch: settled {done - down:.1f} s "
            f"after the stop, {checked.llm_calls} LLM calls, "
            f"{checked.duplicate_calls} duplicates"
        )
    finally:
        system.stop()
        pg.destroy()


def test_posterior_redis_unreachable_router_degrades_feedback_waits(
    workdir: Path, private_redis: PrivateRedis, db_url: str
) -> None:
    (workdir / "posteriors").mkdir()
    posteriors = PrivateRedis(workdir / "posteriors", persist=True)
    system = start_system(
        workdir,
        posteriors.url,
        db_url,
        start=False,
        extra_env={"CONDUIT_BROKER__URL": private_redis.url},
    )
    # One router process: it has routed (and cached the posteriors) before Redis goes away.
    system.start_all(concurrency={"route": 1})
    try:
        first, first_ids = system.submit("degraded-a", N)
        system.wait_settled(first)
        posteriors.kill()
        down = time.monotonic()
        batch, ids = system.submit("degraded-b", N)
        system.wait_answered(batch, N, timeout_s=120)
        answered = time.monotonic()
        assert system.unapplied(), "feedback was applied without Redis?"
        assert "routing from the last known posteriors" in system.worker_logs()
        posteriors.start()
        back = time.monotonic()
        done = system.wait_settled(batch, timeout_s=120)
        check_exactly_once(system, first, first_ids, max_duplicate_calls=0)
        checked = check_exactly_once(system, batch, ids, max_duplicate_calls=0)
        assert checked.statuses == {"ok": 2 * N}
        print(
            f"\nFAULT posterior Redis down while routing: {N} prompts routed (degraded) and "
            f"answered in {answered - down:.1f} s without it; feedback applied "
            f"{done - back:.1f} s after it returned; {checked.llm_calls} LLM calls, "
            f"{checked.duplicate_calls} duplicates"
        )
    finally:
        system.stop()
        posteriors.stop()


def test_broker_redis_lost_mid_batch_the_sweep_resends_lost_work(
    workdir: Path, private_redis: PrivateRedis, db_url: str
) -> None:
    (workdir / "broker").mkdir()
    broker = PrivateRedis(workdir / "broker", persist=False)
    # The sweep re-sends work older than 10 s: sooner than the suite's default, so that the
    # lost work comes back quickly (some live work may be sent twice: duplicate calls). The
    # workers' epoch check is off: this test is the sweep's (test_broker_epoch.py is the
    # epoch's); both at once with so short an age limit re-send the same work twice.
    system = start_system(
        workdir,
        private_redis.url,
        db_url,
        extra_env={
            "CONDUIT_BROKER__URL": broker.url,
            "CONDUIT_FEEDBACK__SWEEP_AFTER_S": "10",
            "CONDUIT_BROKER__EPOCH_CHECK_S": "0",
        },
    )
    try:
        batch, ids = system.submit("brokerlost", N)
        system.wait_answered(batch, 100)
        broker.kill()  # no persistence: every queued and unacknowledged task is gone
        lost = time.monotonic()
        broker.start()
        done = system.wait_settled(batch, timeout_s=180)
        checked = check_exactly_once(system, batch, ids, max_duplicate_calls=4 * CHUNK)
        assert checked.statuses == {"ok": N}
        assert "re-sent" in system.worker_logs()
        print(
            f"\nFAULT broker Redis lost mid-batch (no persistence): the sweep re-sent the lost "
            f"work; settled {done - lost:.1f} s after the loss, {checked.llm_calls} LLM calls, "
            f"{checked.duplicate_calls} duplicates, workers restarted after a crash: "
            f"{system.crashed or 'none'}"
        )
    finally:
        system.stop()
        broker.stop()
