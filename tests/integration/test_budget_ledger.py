"""The Redis budget ledger: reservations never let spent + reserved pass the limit, whatever
the concurrency; settling releases the reservation and records the actual cost exactly."""

from __future__ import annotations

import asyncio
import random

import pytest
import redis.asyncio as aioredis

from conduit_workers.adapters.budget_ledger import NANO_PER_USD, RedisBudgetLedger, to_nano
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration


def test_reserve_refuses_past_the_limit_and_settle_records_the_cost(redis_url: str) -> None:
    async def run() -> None:
        ledger = RedisBudgetLedger(aioredis.Redis.from_url(redis_url), TEST_PREFIX)
        a = await ledger.reserve("apikey:k", "d1", 0.6, 1.0)
        b = await ledger.reserve("apikey:k", "d1", 0.5, 1.0)
        assert a.ok and not b.ok and b.committed_usd == pytest.approx(0.6)
        assert await ledger.settle(a, 0.25) == to_nano(0.25)
        assert await ledger.totals("apikey:k", "d1") == (0.25, 0.0)
        c = await ledger.reserve("apikey:k", "d1", 0.75, 1.0)  # exactly to the limit
        assert c.ok
        assert not (await ledger.reserve("apikey:k", "d1", 1e-9, 1.0)).ok
        assert (await ledger.reserve("apikey:k", "d2", 0.75, 1.0)).ok  # another day
        await ledger.client.aclose()

    asyncio.run(run())


def test_concurrent_reservations_never_overshoot(redis_url: str) -> None:
    limit, tasks = 0.05, 400
    rng = random.Random(5)
    worst = [rng.uniform(0.0005, 0.002) for _ in range(tasks)]

    async def run() -> tuple[list[int], float, float]:
        clients = [aioredis.Redis.from_url(redis_url) for _ in range(4)]
        ledgers = [RedisBudgetLedger(c, TEST_PREFIX) for c in clients]
        granted: list[int] = []

        async def call(i: int) -> None:
            ledger = ledgers[i % len(ledgers)]
            res = await ledger.reserve("apikey:race", "d", worst[i], limit)
            if res.ok:
                granted.append(i)
                await asyncio.sleep(0.001 * (i % 5))
                await ledger.settle(res, worst[i] * 0.7)

        await asyncio.gather(*(call(i) for i in range(tasks)))
        spent, reserved = await ledgers[0].totals("apikey:race", "d")
        for c in clients:
            await c.aclose()
        return granted, spent, reserved

    granted, spent, reserved = asyncio.run(run())
    assert 0 < len(granted) < tasks
    assert reserved == 0.0
    assert round(spent * NANO_PER_USD) == sum(to_nano(worst[i] * 0.7) for i in granted)
    assert spent <= limit
