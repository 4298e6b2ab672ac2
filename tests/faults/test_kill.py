"""kill -9 of an executor pool child, the whole executor, a router worker and the feedback
worker, mid-batch: every prompt is answered, billed and learned from once."""

from __future__ import annotations

import time

import pytest

from tests.faults.harness import FaultSystem, check_exactly_once

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]
N = 500
CHUNK = 25  # executor chunk: the calls of one killed task may be made again


def _report(name: str, recovery_s: float, checked) -> None:  # type: ignore[no-untyped-def]
    print(
        f"\nFAULT {name}: recovery {recovery_s:.1f} s, {checked.llm_calls} LLM calls, "
        f"{checked.duplicate_calls} duplicates, statuses {checked.statuses}"
    )


def test_kill_executor_pool_child(system: FaultSystem) -> None:
    # Pool children are prefork's (`ops/worker executor -P prefork`); the default threads
    # pool has none, its whole-worker kill is the next test.
    system.kill_worker("execute")
    system.start_worker("execute", pool="prefork")
    batch, ids = system.submit("kchild", N)
    system.wait_answered(batch, 100)
    # A child between two tasks dies without losing one: kill again until one was mid-task.
    for _ in range(5):
        system.kill_child("execute")
        killed = time.monotonic()
        time.sleep(1.0)
        if "WorkerLostError" in system.worker_logs():
            break
    done = system.wait_settled(batch)
    assert "WorkerLostError" in system.worker_logs(), "no kill hit a running task"
    checked = check_exactly_once(system, batch, ids, max_duplicate_calls=CHUNK)
    assert checked.statuses == {"ok": N}
    _report("executor pool child kill -9", done - killed, checked)


def test_kill_whole_executor_worker(system: FaultSystem) -> None:
    batch, ids = system.submit("kexec", N)
    system.wait_answered(batch, 100)
    system.kill_worker("execute")
    killed = time.monotonic()
    system.start_worker("execute")  # what a supervisor (systemd, compose restart:) does
    done = system.wait_settled(batch)
    # Both pool threads were mid-task: up to two chunks' calls are made again.
    checked = check_exactly_once(system, batch, ids, max_duplicate_calls=2 * CHUNK)
    assert checked.statuses == {"ok": N}
    _report("whole executor worker kill -9", done - killed, checked)


def test_kill_router_worker(system: FaultSystem) -> None:
    batch, ids = system.submit("krouter", N)
    time.sleep(0.3)  # route tasks are running or reserved (unacknowledged) by the router now
    system.kill_worker("route")
    killed = time.monotonic()
    system.start_worker("route")
    done = system.wait_settled(batch)
    checked = check_exactly_once(system, batch, ids, max_duplicate_calls=0)
    assert checked.statuses == {"ok": N}
    _report("router worker kill -9", done - killed, checked)


def test_kill_feedback_worker(system: FaultSystem) -> None:
    batch, ids = system.submit("kfeedback", N)
    system.wait_answered(batch, 150)
    system.kill_worker("feedback")
    killed = time.monotonic()
    system.start_worker("feedback")
    done = system.wait_settled(batch)
    checked = check_exactly_once(system, batch, ids, max_duplicate_calls=0)
    assert checked.statuses == {"ok": N}
    _report("feedback worker kill -9", done - killed, checked)
