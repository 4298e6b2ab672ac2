"""The router's feature cache on real Redis: hits skip the embedding, and an unreachable cache
is skipped by its circuit breaker while routing goes on."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from conduit_workers.domain.catalog import load_catalog
from conduit_workers.domain.constraints import Constraints
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore
from conduit_workers.routing.embedder import HashingEmbedder
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.routing.feature_cache import RedisFeatureCache, read_stats
from conduit_workers.settings import DEFAULT_CATALOG, RouterSettings
from tests.conftest import TEST_PREFIX

pytestmark = pytest.mark.integration


class CountingEmbedder(HashingEmbedder):
    def __init__(self) -> None:
        super().__init__(64)
        self.embedded: list[str] = []

    def embed(self, texts):  # type: ignore[no-untyped-def]
        self.embedded.extend(texts)
        return super().embed(texts)


def _engine() -> tuple[RoutingEngine, CountingEmbedder]:
    emb = CountingEmbedder()
    catalog = load_catalog(DEFAULT_CATALOG, {})
    return RoutingEngine(catalog, InMemoryPosteriorStore(), emb, RouterSettings(seed=1)), emb


def test_repeats_cost_no_embedding_and_are_counted(redis_url):
    engine, emb = _engine()
    cache = RedisFeatureCache.from_url(redis_url, TEST_PREFIX, "sig", ttl_s=60, breaker_s=5)
    texts = ["What is 2+2?", "Name a prime number.", "Explain why the sky is blue."]
    first, an1 = cache.featurize(texts, engine.featurize, engine.dim)
    assert len(emb.embedded) == 3
    again, an2 = cache.featurize(texts[:2] + ["A new prompt"], engine.featurize, engine.dim)
    assert emb.embedded[3:] == ["A new prompt"]
    np.testing.assert_array_equal(again[:2], first[:2])
    assert an2[:2] == an1[:2]
    assert read_stats(cache.client, TEST_PREFIX) == {"hits": 2, "misses": 4, "skipped": 0}
    ttl = cache.client.ttl(cache.key(texts[0]))
    assert 0 < ttl <= 60
    rows = engine.decide(["a", "b", "c"], texts, [Constraints()] * 3, first, an1)
    assert all(r.model for r in rows)


def test_other_settings_never_reuse_features(redis_url):
    engine, emb = _engine()
    a = RedisFeatureCache.from_url(redis_url, TEST_PREFIX, "sig-a", ttl_s=60, breaker_s=5)
    b = RedisFeatureCache.from_url(redis_url, TEST_PREFIX, "sig-b", ttl_s=60, breaker_s=5)
    a.featurize(["same prompt"], engine.featurize, engine.dim)
    b.featurize(["same prompt"], engine.featurize, engine.dim)
    assert len(emb.embedded) == 2
    assert not any(b"same prompt" in k for k in a.client.keys("*"))  # hashes, never text


def test_unreachable_cache_opens_the_breaker_and_routing_goes_on(redis_url):
    engine, emb = _engine()
    cache = RedisFeatureCache.from_url(
        "redis://127.0.0.1:9/0", TEST_PREFIX, "sig", ttl_s=60, breaker_s=30, timeout_s=0.2
    )
    ctx, an = cache.featurize(["p1", "p2"], engine.featurize, engine.dim)
    assert ctx.shape == (2, engine.dim) and len(an) == 2
    assert cache.breaker.is_open
    # While open, the cache is not even tried: no second timeout.
    calls = []
    cache.client.mget = lambda *a, **k: calls.append(a)  # type: ignore[method-assign]
    cache.featurize(["p3"], engine.featurize, engine.dim)
    assert calls == [] and cache.skipped == 3
    assert emb.embedded == ["p1", "p2", "p3"]
    # Redis back and the breaker's time over: the skipped prompts are counted.
    cache.client = redis.Redis.from_url(redis_url)
    cache.breaker.open_until = 0.0
    cache.featurize(["p4"], engine.featurize, engine.dim)
    assert read_stats(cache.client, TEST_PREFIX) == {"hits": 0, "misses": 1, "skipped": 3}
    assert not cache.breaker.is_open
