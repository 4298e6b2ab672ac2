"""The beat lock: one owner; renewal keeps it, takes it back after Redis restarted empty, and
reports it lost when another beat holds it."""

from __future__ import annotations

import pytest
import redis

from conduit_workers.infra.beat_lock import BeatLock
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration


def test_one_owner_renewal_and_loss(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    first, second = BeatLock(client, TEST_PREFIX, 5), BeatLock(client, TEST_PREFIX, 5)
    assert first.try_acquire() and not second.try_acquire()
    assert first.renew() and first.holder() == first.owner
    client.delete(first.key)  # Redis restarted empty: the owner takes it back on renewal
    assert first.renew() and first.holder() == first.owner
    client.set(first.key, second.owner)  # another beat holds it: lost
    assert not first.renew()
    first.release()  # not the owner: releases nothing
    assert second.holder() == second.owner
    second.release()
    assert first.holder() is None
