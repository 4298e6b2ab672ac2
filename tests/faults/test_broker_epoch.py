"""A Redis broker lost mid-batch (no persistence), with no beat running: the workers notice
that the broker's epoch is gone and re-send what the history says is unfinished, at once, not
after the sweep's age limit; every prompt is answered, billed and learned from once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.harness import ROLES, check_exactly_once, start_system
from tests.faults.services import PrivateRedis

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]
N = 500
CHUNK = 25


def test_broker_lost_without_beat_recovers_within_a_minute(
    workdir: Path, private_redis: PrivateRedis, db_url: str
) -> None:
    (workdir / "broker").mkdir()
    broker = PrivateRedis(workdir / "broker", persist=False)
    system = start_system(
        workdir,
        private_redis.url,
        db_url,
        # No beat, and a sweep age limit far above the test's patience: only the epoch helps.
        extra_env={
            "CONDUIT_BROKER__URL": broker.url,
            "CONDUIT_BROKER__EPOCH_CHECK_S": "2",
            "CONDUIT_FEEDBACK__SWEEP_AFTER_S": "7200",
        },
        start=False,
    )
    try:
        for role in ROLES:
            system.start_worker(role)
        batch, ids = system.submit("epoch", N)
        system.wait_answered(batch, 100)
        broker.kill()  # every queued and unacknowledged task is gone, and the epoch with them
        lost = time.monotonic()
        broker.start()
        done = system.wait_settled(batch, timeout_s=60)
        checked = check_exactly_once(system, batch, ids, max_duplicate_calls=4 * CHUNK)
        assert checked.statuses == {"ok": N}
        assert "the broker restarted empty" in system.worker_logs()
        print(
            f"\nFAULT broker Redis lost mid-batch, no beat: the workers noticed the new epoch "
            f"and re-sent the unfinished work; settled {done - lost:.1f} s after the loss, "
            f"{checked.llm_calls} LLM calls, {checked.duplicate_calls} duplicates, workers "
            f"restarted after a crash: {system.crashed or 'none'}"
        )
    finally:
        system.stop()
        broker.stop()
