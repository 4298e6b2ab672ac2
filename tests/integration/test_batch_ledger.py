"""The batch budget ledger on a real Redis: reserve, settle, idempotence, expiry, races."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from conduit_workers.domain.budget import to_nano
from conduit_workers.domain.catalog import parse_catalog
from conduit_workers.execution.batch_ledger import RedisBatchLedger
from conduit_workers.execution.budget_guard import CallBudget
from conduit_workers.settings import BudgetSettings
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration


@pytest.fixture
def ledger(redis_url: str) -> RedisBatchLedger:
    return RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)


def test_reserve_holds_until_settled_then_counts_the_real_cost(ledger: RedisBatchLedger) -> None:
    hold = ledger.reserve("b1", 1.0, "r1", 0.6, ttl_s=60)
    assert hold.held
    assert (hold.state.limit_usd, hold.state.spent_usd, hold.state.reserved_usd) == (1.0, 0, 0.6)
    # 0.6 held: a second call of 0.6 does not fit, one of 0.4 does.
    assert not ledger.reserve("b1", 1.0, "r2", 0.6, ttl_s=60).held
    assert ledger.reserve("b1", 1.0, "r3", 0.4, ttl_s=60).held
    assert ledger.settle("b1", "r1", 0.25)
    state = ledger.states(["b1"])["b1"]
    assert (state.spent_usd, state.reserved_usd, state.calls) == (0.25, 0.4, 1)
    assert state.remaining_usd == pytest.approx(0.35)
    assert ledger.reserve("b1", 1.0, "r4", 0.35, ttl_s=60).held
    assert not ledger.reserve("b1", 1.0, "r5", 1e-6, ttl_s=60).held


def test_settle_is_idempotent_by_reservation_id(ledger: RedisBatchLedger) -> None:
    ledger.reserve("b1", 1.0, "r1", 0.5, ttl_s=60)
    assert ledger.settle("b1", "r1", 0.2)
    assert not ledger.settle("b1", "r1", 0.2)  # a redelivered settle
    state = ledger.states(["b1"])["b1"]
    assert (state.spent_usd, state.reserved_usd, state.calls) == (0.2, 0, 1)
    # A settled id cannot be reserved again (a stale retry of the reserve).
    assert not ledger.reserve("b1", 1.0, "r1", 0.5, ttl_s=60).held
    # Reserving an id already held answers held again and holds nothing more.
    assert ledger.reserve("b1", 1.0, "r2", 0.3, ttl_s=60).held
    assert ledger.reserve("b1", 1.0, "r2", 0.3, ttl_s=60).state.reserved_usd == 0.3


def test_failed_call_settles_at_zero_and_frees_the_hold(ledger: RedisBatchLedger) -> None:
    ledger.reserve("b1", 1.0, "r1", 0.9, ttl_s=60)
    ledger.settle("b1", "r1", 0.0)
    state = ledger.states(["b1"])["b1"]
    assert (state.spent_usd, state.reserved_usd, state.calls) == (0, 0, 0)


def test_a_dead_workers_reservation_expires_charged_at_its_worst_case(
    ledger: RedisBatchLedger,
) -> None:
    """The default: the dead call may have been billed, so its hold becomes spend."""
    assert ledger.reserve("b1", 1.0, "dead", 0.6, ttl_s=0.05).held
    time.sleep(0.1)
    hold = ledger.reserve("b1", 1.0, "r2", 0.3, ttl_s=60)
    assert hold.held and (hold.state.spent_usd, hold.state.reserved_usd) == (0.6, 0.3)
    assert not ledger.reserve("b1", 1.0, "r3", 0.2, ttl_s=60).held  # not held forever: spent
    state = ledger.states(["b1"])["b1"]
    assert (state.spent_usd, state.reserved_usd, state.expired) == (0.6, 0.3, 1)
    # The call finished after all (slow, not dead): its real cost replaces the charge, once.
    assert ledger.settle("b1", "dead", 0.1)
    assert not ledger.settle("b1", "dead", 0.1)
    state = ledger.states(["b1"])["b1"]
    assert (state.spent_usd, state.reserved_usd) == (0.1, 0.3)


def test_with_charge_off_a_dead_workers_reservation_is_released(redis_url: str) -> None:
    ledger = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600, False)
    assert ledger.reserve("b1", 1.0, "dead", 0.8, ttl_s=0.05).held
    assert not ledger.reserve("b1", 1.0, "r2", 0.5, ttl_s=60).held
    time.sleep(0.1)
    assert ledger.reserve("b1", 1.0, "r2", 0.5, ttl_s=60).held
    state = ledger.states(["b1"])["b1"]
    assert (state.spent_usd, state.reserved_usd, state.expired) == (0, 0.5, 1)
    # The call finished after all: its cost is real and counted, its hold is not freed twice.
    assert ledger.settle("b1", "dead", 0.1)
    state = ledger.states(["b1"])["b1"]
    assert (state.spent_usd, state.reserved_usd) == (0.1, 0.5)


def test_the_limit_is_the_first_one_given_and_batches_are_apart(
    ledger: RedisBatchLedger,
) -> None:
    ledger.reserve("b1", 1.0, "r1", 0.1, ttl_s=60)
    assert ledger.reserve("b1", 50.0, "r2", 0.1, ttl_s=60).state.limit_usd == 1.0
    assert ledger.reserve("b2", 2.0, "r1", 1.5, ttl_s=60).held
    states = ledger.states(["b1", "b2", "never"])
    assert set(states) == {"b1", "b2"}
    assert (states["b1"].reserved_usd, states["b2"].reserved_usd) == (0.2, 1.5)


def test_keys_expire_after_the_ledger_ttl(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ledger = RedisBatchLedger(client, TEST_PREFIX, 120)
    ledger.reserve("b1", 1.0, "r1", 0.1, ttl_s=60)
    ledger.settle("b1", "r1", 0.05)
    ledger.reserve("b1", 1.0, "dead", 0.1, ttl_s=0.01)
    time.sleep(0.05)
    ledger.reserve("b1", 1.0, "r2", 0.1, ttl_s=60)
    # Every key of the batch (ledger, holds, expiries, settled and charged ids) goes after the
    # ledger TTL.
    assert all(0 < client.ttl(k) <= 120 for k in ledger.keys("b1"))


def test_threads_racing_for_one_budget_never_overshoot(redis_url: str) -> None:
    """32 threads, each with its own connection, reserve and settle calls until refused."""
    limit, amount, cost = 1.0, 0.013, 0.011

    def work(n: int, out: list[int]) -> None:
        mine = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)
        i = 0
        while mine.reserve("race", limit, f"t{n}-{i}", amount, ttl_s=60).held:
            mine.settle("race", f"t{n}-{i}", cost)
            i += 1
        out.append(i)

    counts: list[int] = []
    threads = [threading.Thread(target=work, args=(n, counts)) for n in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)
    state = ledger.states(["race"])["race"]
    assert state.calls == sum(counts)
    assert to_nano(state.spent_usd) == sum(counts) * to_nano(cost)
    assert state.spent_usd <= limit
    assert state.reserved_usd == 0
    # Refused only when the next worst case no longer fitted.
    assert limit - state.spent_usd < amount


def _guard(ledger: RedisBatchLedger, hold_wait_s: float) -> CallBudget:
    catalog = parse_catalog(
        {
            "models": [
                {
                    "name": "m",
                    "provider": "openai",
                    "input_price_per_mtok_usd": 1000.0,
                    "output_price_per_mtok_usd": 1000.0,
                }
            ]
        },
        {},
    )
    settings = BudgetSettings(
        max_output_tokens=100, input_overhead_tokens=0, hold_wait_s=hold_wait_s
    )
    # 100 input + 100 output tokens at $1000/Mtok: $0.2 worst case per call.
    return CallBudget(ledger, catalog, "b1", 1.0, 100, None, settings, ttl_s=60)


def test_a_call_kept_out_by_holds_in_flight_waits_for_them(ledger: RedisBatchLedger) -> None:
    assert ledger.reserve("b1", 1.0, "other", 0.9, ttl_s=60).held  # a call in flight

    async def main() -> str | None:
        guard = _guard(ledger, hold_wait_s=30)
        waiting = asyncio.create_task(guard.reserve("m"))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # $0.1 left beside the hold: it waits
        await asyncio.to_thread(ledger.settle, "b1", "other", 0.3)  # cost less than held
        return await waiting

    assert asyncio.run(main()) is not None
    state = ledger.states(["b1"])["b1"]
    assert (state.spent_usd, state.reserved_usd) == (0.3, 0.2)


def test_a_call_the_spend_alone_rules_out_is_refused_at_once(ledger: RedisBatchLedger) -> None:
    ledger.reserve("b1", 1.0, "r1", 0.85, ttl_s=60)
    ledger.settle("b1", "r1", 0.85)
    guard = _guard(ledger, hold_wait_s=30)
    assert asyncio.run(guard.reserve("m")) is None
    assert guard.refused == [("m", pytest.approx(0.2))]
    assert "$0.150000 left" in guard.reason() and "m up to $0.200000" in guard.reason()


def test_a_ledger_made_anew_starts_from_the_recorded_spend(ledger: RedisBatchLedger) -> None:
    hold = ledger.reserve("b1", 1.0, "r1", 0.3, ttl_s=60, recorded_spend_usd=0.6)
    assert hold.held and (hold.state.spent_usd, hold.state.reserved_usd) == (0.6, 0.3)
    assert not ledger.reserve("b1", 1.0, "r2", 0.2, ttl_s=60, recorded_spend_usd=0.6).held
    # Only a new ledger takes it: an existing one keeps its own count.
    ledger.settle("b1", "r1", 0.1)
    assert (
        ledger.reserve("b1", 1.0, "r3", 0.1, ttl_s=60, recorded_spend_usd=0.0).state.spent_usd
        == 0.7
    )


def test_each_message_of_a_chat_request_adds_its_overhead(ledger: RedisBatchLedger) -> None:
    from conduit_workers.execution.budget_guard import call_budgets
    from conduit_workers.settings import ExecutorSettings

    guard = _guard(ledger, hold_wait_s=0)
    settings = BudgetSettings(input_overhead_tokens=10)
    out = call_budgets(
        ledger,
        guard.catalog,
        {"q1": ("b1", 1.0), "q2": ("b1", 1.0)},
        [("q1", "héllo", 1, None), ("q2", "héllo", 3, 7), ("q3", "not budgeted", 1, None)],
        settings,
        ExecutorSettings(timeout_s=5),
    )
    assert set(out) == {"q1", "q2"}
    assert (out["q1"].input_tokens, out["q2"].input_tokens) == (6 + 10, 6 + 30)  # é: 2 bytes
    assert out["q1"].ttl_s == max(settings.reservation_ttl_s, 5 + 60.0)
    # A prompt's own max_tokens caps its call, and so its worst case.
    assert (out["q1"].output_cap("m"), out["q2"].output_cap("m")) == (
        settings.max_output_tokens,
        7,
    )
