"""Execute claims: a prompt's call belongs to one execute task at a time; a redelivery of the
same task (same task id) takes its prompts back; a release frees only the owner's claims."""

from __future__ import annotations

import pytest
import redis

from conduit_workers.execution.claims import ExecClaims
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration


def test_a_second_task_leaves_claimed_prompts_to_the_first(redis_url: str) -> None:
    claims = ExecClaims(redis.Redis.from_url(redis_url), TEST_PREFIX, ttl_s=60)
    assert claims.claim(["a", "b"], "task-1") == ["a", "b"]
    # The router's redelivery sent the same chunk again, plus a new prompt.
    assert claims.claim(["a", "b", "c"], "task-2") == ["c"]
    # task-1's worker died: its redelivery keeps the task id and takes its prompts back.
    assert claims.claim(["a", "b"], "task-1") == ["a", "b"]
    # task-2 cannot release what task-1 holds.
    assert claims.release(["a", "b", "c"], "task-2") == 1
    assert claims.claim(["a"], "task-3") == []
    assert claims.release(["a", "b"], "task-1") == 2
    assert claims.claim(["a", "b"], "task-3") == ["a", "b"]


def test_claims_expire(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    claims = ExecClaims(client, TEST_PREFIX, ttl_s=30)
    claims.claim(["a"], "task-1")
    ttl = client.ttl(f"{TEST_PREFIX}:exec:a")
    assert 0 < ttl <= 30
