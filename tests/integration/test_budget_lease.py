"""The HTTP API's per-process budget leases (gateway/budget_lease.py) on a real Redis: calls held
from the lease without a round trip, the lease grown, shrunk and released, a killed process's
lease charged at what it held, a ledger Redis lost rebuilt without overshoot, and processes
racing for a key's last dollars never together past the limit."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis

from conduit_workers.domain.budget import BudgetState
from conduit_workers.domain.records import Hold
from conduit_workers.execution.batch_ledger import AsyncRedisBatchLedger, RedisBatchLedger
from conduit_workers.gateway.budget_lease import BudgetLeases, Lease
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration

SCOPE = "apikey:team:2026-12-03"
NEVER = 3600.0  # a flush interval the tests never reach: they flush by hand


@pytest.fixture
def sync(redis_url: str) -> Iterator[RedisBatchLedger]:
    yield RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)


def _state(sync: RedisBatchLedger) -> BudgetState:
    return sync.states([SCOPE])[SCOPE]


def _run(redis_url: str, body: Callable[[AsyncRedisBatchLedger], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        ledger = AsyncRedisBatchLedger.from_url(redis_url, TEST_PREFIX, 3600)
        try:
            return await body(ledger)
        finally:
            await ledger.aclose()

    return asyncio.run(main())


def _leases(
    ledger: AsyncRedisBatchLedger,
    cap_usd: float = 1.0,
    ttl_s: float = 60.0,
    flush_interval_s: float = NEVER,
    recorded_usd: float = 0.0,
) -> BudgetLeases:
    async def recorded(scope: str) -> float:
        return recorded_usd

    return BudgetLeases(ledger, cap_usd, ttl_s, recorded, flush_interval_s=flush_interval_s)


async def _local(leases: BudgetLeases, limit_usd: float, worst_usd: float) -> tuple[Hold, Lease]:
    """A reserve that must finish without waiting for anything (no Redis round trip)."""
    coro = leases.reserve(SCOPE, limit_usd, worst_usd)
    try:
        coro.send(None)
    except StopIteration as done:
        result: tuple[Hold, Lease] = done.value
        return result
    coro.close()
    raise AssertionError("the reserve waited: it was not granted from the lease")


def test_calls_that_fit_are_held_from_the_lease_and_a_flush_shrinks_it(
    redis_url: str, sync: RedisBatchLedger
) -> None:
    async def body(ledger: AsyncRedisBatchLedger) -> None:
        leases = _leases(ledger, cap_usd=1.0)
        # The first call grows the lease: its worst case and $1 of headroom.
        hold, lease = await leases.reserve(SCOPE, 100.0, 0.25)
        assert hold.held
        assert _state(sync).reserved_usd == pytest.approx(1.25)
        # Four more fit in the headroom: granted with no Redis call, the ledger unchanged.
        for _ in range(4):
            assert (await _local(leases, 100.0, 0.25))[0].held
        assert _state(sync).reserved_usd == pytest.approx(1.25)
        # The sixth does not fit: the lease grows by its worst case and $1 more.
        assert (await leases.reserve(SCOPE, 100.0, 0.25))[0].held
        assert _state(sync).reserved_usd == pytest.approx(2.50)
        # Five calls end (cost $0.01 each): the flush moves their cost to spent and keeps the
        # call in flight plus $1 of headroom (the lease was used since the last flush).
        for _ in range(5):
            leases.settle(lease, 0.25, 0.01)
        await leases.flush()
        state = _state(sync)
        assert (state.spent_usd, state.reserved_usd, state.calls) == (
            pytest.approx(0.05),
            pytest.approx(1.25),
            5,
        )
        # Unused since: the next flush gives the headroom back.
        await leases.flush()
        assert _state(sync).reserved_usd == pytest.approx(0.25)
        # The last call ends; the lease is released, then dropped.
        leases.settle(lease, 0.25, 0.02)
        await leases.flush()
        state = _state(sync)
        assert (state.spent_usd, state.reserved_usd, state.calls) == (
            pytest.approx(0.07),
            0.0,
            6,
        )
        await leases.flush()
        assert leases.lease(SCOPE) is None
        await leases.aclose()

    _run(redis_url, body)


def test_concurrent_calls_that_do_not_fit_share_one_grow(
    redis_url: str, sync: RedisBatchLedger
) -> None:
    async def body(ledger: AsyncRedisBatchLedger) -> list[bool]:
        leases = _leases(ledger, cap_usd=1.0)
        held = await asyncio.gather(*(leases.reserve(SCOPE, 100.0, 0.25) for _ in range(20)))
        lease = leases.lease(SCOPE)
        assert lease is not None
        # One script held the 20 worst cases and the headroom.
        assert lease.held == int(6.0e9)
        await leases.aclose()  # nothing in flight is settled: the calls' holds remain
        return [h.held for h, _ in held]

    assert all(_run(redis_url, body))
    assert _state(sync).reserved_usd == pytest.approx(5.0)


def test_the_headroom_is_a_share_of_what_is_left_and_none_near_the_last_dollars(
    redis_url: str, sync: RedisBatchLedger
) -> None:
    async def body(ledger: AsyncRedisBatchLedger) -> tuple[bool, bool]:
        leases = _leases(ledger, cap_usd=1.0)
        # $3.25 left: the headroom is 1/32 of what is left after the call ($0.10).
        await leases.reserve(SCOPE, 3.25, 0.05)
        assert _state(sync).reserved_usd == pytest.approx(0.15)
        # With $0.50 left the share ($0.0094) is less than a call: no headroom, the lease grows
        # by the call's worst case exactly, and a call that does not fit is refused.
        others = _leases(ledger, cap_usd=1.0)
        assert sync.reserve(SCOPE, 3.25, "elsewhere", 2.6, 60).held
        first = (await others.reserve(SCOPE, 3.25, 0.2))[0].held
        assert _state(sync).remaining_usd == pytest.approx(0.3)
        second = (await others.reserve(SCOPE, 3.25, 0.2))[0].held
        third = (await others.reserve(SCOPE, 3.25, 0.2))[0]
        assert not third.held
        assert third.state.spent_usd + third.state.reserved_usd == pytest.approx(3.15)
        return first, second

    assert _run(redis_url, body) == (True, True)
    assert _state(sync).remaining_usd == pytest.approx(0.1)


def test_near_the_last_dollars_what_a_call_did_not_use_goes_back_at_its_settle(
    redis_url: str, sync: RedisBatchLedger
) -> None:
    async def body(ledger: AsyncRedisBatchLedger) -> bool:
        one, other = _leases(ledger), _leases(ledger)
        hold, lease = await one.reserve(SCOPE, 0.5, 0.3)  # $0.20 left, no headroom
        assert hold.held and _state(sync).reserved_usd == pytest.approx(0.3)
        assert not (await other.reserve(SCOPE, 0.5, 0.3))[0].held
        one.settle(lease, 0.3, 0.1)  # not the flush interval's: sent at once
        await asyncio.sleep(0.05)
        state = _state(sync)
        assert (state.spent_usd, state.reserved_usd) == (pytest.approx(0.1), 0.0)
        return (await other.reserve(SCOPE, 0.5, 0.3))[0].held

    assert _run(redis_url, body)


def test_a_killed_process_lease_expires_charged_at_what_it_held(
    redis_url: str, sync: RedisBatchLedger
) -> None:
    async def body(ledger: AsyncRedisBatchLedger) -> None:
        leases = _leases(ledger, cap_usd=1.0, ttl_s=0.3)
        _, lease = await leases.reserve(SCOPE, 100.0, 0.25)
        await _local(leases, 100.0, 0.25)
        leases.settle(lease, 0.25, 0.05)  # settled here, never flushed
        # The process dies: no flush, no shutdown.

    _run(redis_url, body)
    assert _state(sync).reserved_usd == pytest.approx(1.25)
    asyncio.run(asyncio.sleep(0.5))
    state = _state(sync)  # resolves the expired lease: charged at the $1.25 it held
    assert (state.spent_usd, state.reserved_usd, state.expired) == (
        pytest.approx(1.25),
        0.0,
        1,
    )


def test_a_lease_that_expired_while_its_process_lived_is_charged_its_real_costs(
    redis_url: str, sync: RedisBatchLedger, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(ledger: AsyncRedisBatchLedger) -> None:
        leases = _leases(ledger, cap_usd=1.0, ttl_s=0.3)
        _, lease = await leases.reserve(SCOPE, 100.0, 0.25)
        await _local(leases, 100.0, 0.25)
        leases.settle(lease, 0.25, 0.05)
        await asyncio.sleep(0.5)  # stalled past its TTL
        assert _state(sync).spent_usd == pytest.approx(1.25)  # charged meanwhile
        await leases.flush()  # the charge taken back, the real cost and the call in flight
        state = _state(sync)
        assert (state.spent_usd, state.reserved_usd) == (pytest.approx(0.05), pytest.approx(1.25))
        leases.settle(lease, 0.25, 0.05)
        await leases.aclose()

    with caplog.at_level(logging.WARNING):
        _run(redis_url, body)
    assert "expired and charged" in caplog.text
    state = _state(sync)
    assert (state.spent_usd, state.reserved_usd) == (pytest.approx(0.1), 0.0)


def test_a_lease_redis_lost_is_held_again_from_the_recorded_spend_without_overshoot(
    redis_url: str, sync: RedisBatchLedger, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(ledger: AsyncRedisBatchLedger) -> tuple[bool, bool]:
        # The history recorded $9.00 of the key's $10.00 today.
        leases = _leases(ledger, cap_usd=0.0001, recorded_usd=9.0)
        holds = await asyncio.gather(*(leases.reserve(SCOPE, 10.0, 0.25) for _ in range(3)))
        lease = holds[0][1]
        leases.settle(lease, 0.25, 0.05)  # one call ends, not flushed yet
        redis.Redis.from_url(redis_url).flushdb()  # Redis loses everything
        # The flush notices: the two calls in flight are held again, the cost counted.
        await leases.flush()
        state = _state(sync)
        assert (state.spent_usd, state.reserved_usd) == (pytest.approx(9.05), pytest.approx(0.5))
        # $0.45 is left: one more call fits through the check, the next does not.
        fits = (await leases.reserve(SCOPE, 10.0, 0.25))[0].held
        over = (await leases.reserve(SCOPE, 10.0, 0.25))[0].held
        return fits, over

    with caplog.at_level(logging.WARNING):
        assert _run(redis_url, body) == (True, False)
    assert "budget lease was gone" in caplog.text


def test_a_lease_script_repeated_counts_the_settled_costs_once(
    redis_url: str, sync: RedisBatchLedger
) -> None:
    async def body(ledger: AsyncRedisBatchLedger) -> None:
        for _ in range(2):  # the same script twice, as after an answer lost on the way back
            await ledger.lease(
                SCOPE,
                10.0,
                "lease:p:1",
                held=0,
                floor=0,
                keep=0,
                share=0.25,
                least=0,
                settled=(300_000_000, 0),
                calls=(3, 0),
                ttl_s=60,
                recorded_spend_usd=0.0,
            )

    _run(redis_url, body)
    state = _state(sync)
    assert (state.spent_usd, state.calls, state.reserved_usd) == (pytest.approx(0.3), 3, 0.0)


@pytest.mark.parametrize("seed", [0, 1])
def test_processes_racing_for_the_last_dollars_never_overshoot(
    redis_url: str, sync: RedisBatchLedger, seed: int
) -> None:
    """Eight processes' leases (and the per-call holds of an executor beside them) race for
    $0.02: every call costs its worst case, so the calls granted are what was spent."""
    worst = 0.0012
    sync.reserve(SCOPE, 1.0, "earlier", 0.98, 60)
    sync.settle(SCOPE, "earlier", 0.98)

    async def body(ledger: AsyncRedisBatchLedger) -> tuple[int, int]:
        rng = random.Random(seed)
        ledgers = [AsyncRedisBatchLedger.from_url(redis_url, TEST_PREFIX, 3600) for _ in range(8)]
        procs = [_leases(lg, cap_usd=1.0, flush_interval_s=0.05) for lg in ledgers]
        granted = refused = 0
        in_flight = 0.0

        async def one(i: int) -> None:
            nonlocal granted, refused, in_flight
            await asyncio.sleep(rng.random() * 0.1)
            if i % 9 == 8:  # an executor's per-call hold on the same ledger
                hold = await ledger.reserve(SCOPE, 1.0, f"call-{i}", worst, 60)
            else:
                hold, lease = await procs[i % 8].reserve(SCOPE, 1.0, worst)
            if not hold.held:
                refused += 1
                return
            granted += 1
            in_flight += worst
            state = _state(sync)
            assert state.spent_usd + state.reserved_usd <= 1.0 + 1e-9
            await asyncio.sleep(0.01 + rng.random() * 0.02)
            in_flight -= worst
            if i % 9 == 8:
                await ledger.settle(SCOPE, f"call-{i}", worst)
            else:
                procs[i % 8].settle(lease, worst, worst)

        try:
            await asyncio.gather(*(one(i) for i in range(256)))
            for p in procs:
                await p.aclose()
        finally:
            for lg in ledgers:
                await lg.aclose()
        return granted, refused

    granted, refused = _run(redis_url, body)
    state = _state(sync)
    assert granted > 0 and refused > 0
    assert state.reserved_usd == 0.0
    assert state.spent_usd == pytest.approx(0.98 + granted * worst)
    assert state.spent_usd <= 1.0 + 1e-9
    # As many calls as the budget has room for at worst case: nothing idles in a lease.
    assert granted == int(0.02 / worst + 1e-9)
