import time

import pytest
import redis

from conduit_workers.domain.health import ModelHealth
from conduit_workers.execution import cooldowns
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration


def test_a_cooled_down_model_is_published_until_its_cooldown_ends(redis_url):
    client = redis.Redis.from_url(redis_url)
    health = ModelHealth(window=4, min_calls=4, failure_rate=0.5, cooldown_s=30)
    for _ in range(4):
        health.record("flaky", 100.0, ok=False)
        health.record("steady", 100.0, ok=True)
    remaining = {m: s for m in ("flaky", "steady") if (s := health.cooling_for(m, 110.0)) > 0}
    assert remaining == {"flaky": 20.0}
    cooldowns.publish(client, TEST_PREFIX, remaining)
    seen = cooldowns.read(client, TEST_PREFIX)
    assert list(seen) == ["flaky"] and 19.0 < seen["flaky"] <= 20.0
    cooldowns.publish(client, TEST_PREFIX, {"flaky": 0.001})
    time.sleep(0.05)
    assert cooldowns.read(client, TEST_PREFIX) == {}
