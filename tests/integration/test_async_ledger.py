"""The HTTP API's asyncio ledger: the same scripts and keys as the executors' ledger, so a key's
holds made by either are one budget, with no overshoot when many requests race."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis

from conduit_workers.execution.batch_ledger import AsyncRedisBatchLedger, RedisBatchLedger
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration


def test_async_holds_and_settles_share_the_sync_ledger(redis_url: str) -> None:
    sync = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)

    async def race() -> tuple[int, bool, bool]:
        ledger = AsyncRedisBatchLedger.from_url(redis_url, TEST_PREFIX, 3600, max_connections=4)
        try:
            # 50 holds of $0.3 racing for $1.0 on 4 connections: exactly 3 fit.
            holds = await asyncio.gather(
                *(ledger.reserve("k", 1.0, f"r{i}", 0.3, 60.0) for i in range(50))
            )
            won = next(i for i, h in enumerate(holds) if h.held)  # which ones: the race's
            first = await ledger.settle("k", f"r{won}", 0.1)
            again = await ledger.settle("k", f"r{won}", 0.1)
        finally:
            await ledger.aclose()
        return sum(h.held for h in holds), first, again

    held, first, again = asyncio.run(race())
    assert (held, first, again) == (3, True, False)
    state = sync.states(["k"])["k"]
    assert (state.spent_usd, state.reserved_usd) == (pytest.approx(0.1), pytest.approx(0.6))
    # A hold taken through the sync ledger counts against the same budget.
    assert sync.reserve("k", 1.0, "sync", 0.3, 60.0).held
    assert not sync.reserve("k", 1.0, "sync2", 0.3, 60.0).held


def test_a_script_redis_does_not_hold_is_loaded_and_its_calls_run_once(redis_url: str) -> None:
    from conduit_workers.execution.ledger_scripts import RESERVE_LUA

    async def run() -> list[bool]:
        ledger = AsyncRedisBatchLedger.from_url(redis_url, TEST_PREFIX, 3600)
        # The same script under a SHA no Redis has seen (as after a restart or SCRIPT FLUSH).
        ledger._reserve = ledger.client.register_script(f"{RESERVE_LUA}\n-- {uuid.uuid4()}")
        try:
            holds = await asyncio.gather(
                *(ledger.reserve("fresh", 1.0, f"r{i}", 0.3, 60.0) for i in range(5))
            )
        finally:
            await ledger.aclose()
        return [h.held for h in holds]

    assert sorted(asyncio.run(run())) == [False, False, True, True, True]
    state = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600).states(["fresh"])
    assert state["fresh"].reserved_usd == pytest.approx(0.9)


def test_an_unreachable_ledger_fails_every_waiting_call(redis_url: str) -> None:
    from conduit_workers.errors import StoreUnavailable

    async def run() -> list[object]:
        ledger = AsyncRedisBatchLedger.from_url(
            "redis://127.0.0.1:1/0", TEST_PREFIX, 3600, socket_timeout_s=0.5
        )
        try:
            return await asyncio.gather(
                *(ledger.reserve("k", 1.0, f"r{i}", 0.3, 60.0) for i in range(3)),
                return_exceptions=True,
            )
        finally:
            await ledger.aclose()

    assert all(isinstance(r, StoreUnavailable) for r in asyncio.run(run()))
