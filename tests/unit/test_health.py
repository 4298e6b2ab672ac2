"""The per-model rate-limit gate and circuit breaker (pure, on a fake clock)."""

from __future__ import annotations

import pytest

from conduit_workers import names
from conduit_workers.domain.health import PROBE_POLL_S, Admit, ModelHealth
from conduit_workers.errors import InputError
from conduit_workers.infra.delivery import check_ids


def test_429_closes_the_gate_until_retry_after_then_one_probe_goes_first():
    h = ModelHealth()
    assert h.acquire("m", 0.0) == (Admit.GO, 0.0)
    h.record("m", 0.1, ok=False, rate_limited=True, retry_after_s=2.0)
    admit, wait = h.acquire("m", 0.5)
    assert admit is Admit.WAIT and wait == pytest.approx(1.6)
    assert h.acquire("m", 2.2) == (Admit.GO, 0.0)  # the probe
    assert h.acquire("m", 2.3) == (Admit.WAIT, PROBE_POLL_S)  # everyone else waits for it
    h.record("m", 2.4, ok=False, rate_limited=True, retry_after_s=1.0)  # still limited
    assert h.acquire("m", 2.5)[0] is Admit.WAIT
    assert h.acquire("m", 3.5) == (Admit.GO, 0.0)
    h.record("m", 3.6, ok=True)
    assert h.acquire("m", 3.7) == (Admit.GO, 0.0) and h.acquire("m", 3.7) == (Admit.GO, 0.0)
    assert h.cooldowns("m") == 0  # a rate limit is not a failure


def test_failures_open_the_breaker_then_a_probe_closes_it():
    h = ModelHealth(window=10, min_calls=4, failure_rate=0.5, cooldown_s=5.0)
    for t in range(3):
        h.record("m", float(t), ok=False)
    assert not h.cooling("m", 3.0)  # fewer than min_calls
    h.record("m", 3.0, ok=False)
    assert h.cooling("m", 3.1) and h.acquire("m", 3.1) == (Admit.SKIP, 0.0)
    assert h.acquire("other", 3.1) == (Admit.GO, 0.0)
    assert h.acquire("m", 8.1) == (Admit.GO, 0.0)  # half-open: one probe
    assert h.acquire("m", 8.2) == (Admit.SKIP, 0.0)
    h.record("m", 8.3, ok=False)  # probe failed: another cooldown
    assert h.cooling("m", 13.0) and h.cooldowns("m") == 2
    assert h.acquire("m", 13.4) == (Admit.GO, 0.0)
    h.record("m", 13.5, ok=True)
    assert not h.cooling("m", 13.6) and h.acquire("m", 13.6) == (Admit.GO, 0.0)


def test_a_healthy_model_with_some_failures_stays_closed():
    h = ModelHealth(window=10, min_calls=4, failure_rate=0.5)
    for t in range(40):
        h.record("m", float(t), ok=t % 3 != 0)  # a third fail
    assert not h.cooling("m", 40.0) and h.cooldowns("m") == 0


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((), {}),
        (("a",), {}),
        (([1, 2],), {}),
        ((["ok", ""],), {}),
        ((["x" * 201],), {}),
        ((["a"],), {"x": 1}),
        ((["a"], ["b"]), {}),
    ],
)
def test_task_payloads_must_be_one_list_of_ids(args, kwargs):
    with pytest.raises(InputError):
        check_ids(names.ROUTE_BATCH, args, kwargs)


def test_a_list_of_ids_is_a_valid_payload_and_other_tasks_are_not_checked():
    check_ids(names.EXECUTE_BATCH, (["q1", "q2"],), {})
    check_ids("conduit.reports.daily", (1, 2), {"x": 3})


def test_a_probe_that_ends_without_an_outcome_frees_its_slot():
    h = ModelHealth(min_calls=1, failure_rate=0.0, cooldown_s=1.0)
    h.record("m", 0.0, ok=False)
    assert h.acquire("m", 2.0) == (Admit.GO, 0.0)  # the probe
    h.release("m")  # cancelled
    assert h.acquire("m", 2.1) == (Admit.GO, 0.0)  # the next caller may probe
