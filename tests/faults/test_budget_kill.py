"""kill -9 of the executor worker while it spends a batch's budget: every prompt still ends
once (answered or ``over_budget``), the batch stays within its budget, and the holds of the
calls that died with the worker do not stay held: they expire and are charged at their worst
case (the provider may have billed those calls)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conduit_workers.execution.batch_ledger import RedisBatchLedger
from tests.conftest import TEST_PREFIX
from tests.faults.harness import FaultSystem, check_exactly_once, start_system
from tests.faults.services import PrivateRedis

pytestmark = [pytest.mark.faults, pytest.mark.timeout(400)]
N = 500
CHUNK = 25
BUDGET_USD = 0.05


@pytest.fixture
def budget_system(workdir: Path, private_redis: PrivateRedis, db_url: str) -> Iterator[FaultSystem]:
    s = start_system(
        workdir,
        private_redis.url,
        db_url,
        extra_env={
            "CONDUIT_BUDGET__MAX_OUTPUT_TOKENS": "300",
            # Holds live the call timeout (2 s here) + 60 s; prompts kept out by the dead
            # calls' holds wait longer than that, then go on within what is left.
            "CONDUIT_BUDGET__RESERVATION_TTL_S": "1",
            "CONDUIT_BUDGET__HOLD_WAIT_S": "90",
        },
    )
    try:
        yield s
    finally:
        s.stop()


def test_kill_executor_while_it_spends_a_budget(budget_system: FaultSystem) -> None:
    system = budget_system
    items = [
        {"id": f"kb-{i}", "prompt": f"[kb] question {i}: what is {i} plus {i % 13}?"}
        for i in range(N)
    ]
    sub = system.client.submit(items, tag="kb", budget_usd=BUDGET_USD)
    ids = list(system.client.history.query_ids_by_external(sub.batch_id).values())
    system.wait_answered(sub.batch_id, 100)
    system.kill_worker("execute")  # calls in flight die with it, their holds left behind
    killed = time.monotonic()
    system.start_worker("execute")
    done = system.wait_settled(sub.batch_id, timeout_s=300)

    ledger = RedisBatchLedger(system.store.client, TEST_PREFIX, 3600)
    # The dead calls' holds expire after the call timeout + 60 s: wait for the ledger to say so.
    deadline = time.monotonic() + 120
    while (state := ledger.states([sub.batch_id])[sub.batch_id]).reserved_usd > 0:
        assert time.monotonic() < deadline, f"holds left after 120 s: {state}"
        time.sleep(1)
    checked = check_exactly_once(system, sub.batch_id, ids, max_duplicate_calls=2 * CHUNK)
    print(
        f"\nFAULT executor kill -9 under a ${BUDGET_USD} budget: recovery {done - killed:.1f} s, "
        f"results ${checked.cost_usd:.6f}, ledger spent ${state.spent_usd:.6f} "
        f"({state.expired} dead holds charged), {checked.llm_calls} LLM calls "
        f"({checked.duplicate_calls} duplicates), statuses {checked.statuses}"
    )
    assert set(checked.statuses) <= {"ok", "over_budget"}
    assert checked.cost_usd <= BUDGET_USD
    assert state.spent_usd <= BUDGET_USD
    assert state.expired >= 1  # the kill hit calls in flight
    # The ledger counts every recorded answer, plus the dead calls at their worst case.
    assert state.spent_usd >= checked.cost_usd
