"""A chunk's allowance: its share of what its batch has left (ledger) over its unanswered
prompts (history database), half a chunk more counted as still to come."""

from __future__ import annotations

import pytest
import redis

from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import ResultRow
from conduit_workers.execution.batch_ledger import RedisBatchLedger
from conduit_workers.execution.budget_pacing import chunk_shares
from conduit_workers.history.history import SqlHistory
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration


def _batch(history: SqlHistory, batch: str, n: int, budget: float | None) -> list[str]:
    items = [
        parse_item({"id": f"{batch}{i}", "prompt": f"p {batch} {i}"}, line=i, max_prompt_chars=99)
        for i in range(n)
    ]
    history.submit(batch, items, tag=None, rejected=0, constraints={}, budget_usd=budget)
    return [i.key for i in items]


def test_allowance_is_the_chunks_share_of_what_is_left(history: SqlHistory, redis_url: str) -> None:
    ledger = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)
    paid = _batch(history, "paid", 10, 2.0)
    free = _batch(history, "free", 3, None)

    # Before any call: the whole limit over the 10 unanswered prompts (and 2 kept back).
    (share,) = chunk_shares(paid[:4], history, ledger)
    assert (share.positions, share.batch_id) == ([0, 1, 2, 3], "paid")
    assert share.allowance_usd == pytest.approx(2.0 * 4 / (10 + 2))

    # Two answered ($0.5 spent), one call in flight ($0.3 held): 1.2 left over 8 prompts (+1).
    history.record_results([ResultRow(q, "m", "ok", "a", 1, 1, 0.25) for q in paid[:2]], [])
    for q in paid[:2]:
        ledger.reserve("paid", 2.0, q, 0.4, ttl_s=60)
        ledger.settle("paid", q, 0.25)
    ledger.reserve("paid", 2.0, "in-flight", 0.3, ttl_s=60)
    chunk = [free[0], paid[2], free[1], paid[3]]
    shares = {s.batch_id: s for s in chunk_shares(chunk, history, ledger)}
    assert shares[None].positions == [0, 2] and shares[None].allowance_usd is None
    assert shares["paid"].positions == [1, 3]
    assert shares["paid"].allowance_usd == pytest.approx(1.2 * 2 / (8 + 1))


def test_without_ledger_or_budget_one_share_without_allowance(
    history: SqlHistory, redis_url: str
) -> None:
    free = _batch(history, "free", 3, None)
    ledger = RedisBatchLedger(redis.Redis.from_url(redis_url), TEST_PREFIX, 3600)
    for led in (ledger, None):
        (share,) = chunk_shares(free, history, led)
        assert (share.positions, share.allowance_usd) == ([0, 1, 2], None)
