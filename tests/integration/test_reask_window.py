"""Bounded re-ask detection: a user's window holds at most ``max_prompts`` prompts, whatever
the user submits, so one big batch neither grows Redis nor slows everyone's routing."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from conduit_workers.domain.reask import VECTOR_DIM, find_reasks, text_vector
from conduit_workers.learning.recent_prompts import RedisRecentPrompts, max_bytes_per_user
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration
MAX = 50


def test_a_user_with_many_prompts_keeps_a_bounded_footprint(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    recent = RedisRecentPrompts(client, TEST_PREFIX, window_s=3600, max_prompts=MAX)
    now = 1_000_000.0
    for chunk in range(40):  # 2,000 prompts of one user, 50 per routed chunk
        entries = [
            ("big", f"q{chunk}-{i}", text_vector(f"prompt {chunk} {i} about topic {i % 7}"))
            for i in range(50)
        ]
        recent.remember(entries, now=now + chunk)
    zkey, hkey = recent._keys("big")
    assert client.zcard(zkey) == MAX and client.hlen(hkey) == MAX
    used = int(client.memory_usage(zkey) or 0) + int(client.memory_usage(hkey) or 0)
    assert used <= max_bytes_per_user(MAX), (used, max_bytes_per_user(MAX))
    # The window keeps the most recent prompts: the last chunk's, and re-asks are still found.
    window = recent.recent(["big"], now=now + 40)["big"]
    assert sorted(qid for qid, _ in window) == sorted(f"q39-{i}" for i in range(50))
    again = find_reasks(
        [("new", text_vector("prompt 39 7 about topic 0"))], window, threshold=0.9, limit=MAX
    )
    assert [r.earlier_query_id for r in again] == ["q39-7"]


def test_within_a_chunk_a_user_is_compared_with_a_bounded_pool() -> None:
    vecs = [(f"q{i}", text_vector(f"distinct words {i} {i * 7919}")) for i in range(300)]
    vecs.append(("last", vecs[0][1].copy()))  # repeats the first: out of a 50-prompt window
    assert find_reasks(vecs, [], threshold=0.9, limit=MAX) == []
    assert len(find_reasks(vecs, [], threshold=0.9, limit=1000)) >= 1
    assert np.isclose(float(vecs[0][1] @ vecs[-1][1]), 1.0)
    assert VECTOR_DIM * 4 * MAX < max_bytes_per_user(MAX)
