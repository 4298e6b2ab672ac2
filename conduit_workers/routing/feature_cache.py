"""A Redis cache of query features (context vector and analysis) by prompt hash.

Repeated prompts are common in batch jobs; a repeat found here costs no embedding. The cache is
an optimisation only: when Redis does not answer, a circuit breaker skips it for a while and
routing goes on computing every feature.

Keys ``P:features:<signature>:<prompt hash>`` and ``P:features:stats``, described in
:mod:`conduit_workers.infra.keys`.

``signature`` hashes the settings that shape a context (embedder, dimensions, what is
embedded), so features computed under other settings are never reused. The prompt hash is a
SHA-256 of the text: no prompt text is stored here.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import redis

from conduit_workers.domain.bandit import Array
from conduit_workers.domain.features import Analysis
from conduit_workers.infra.keys import RedisKeys
from conduit_workers.infra.redis_batch import set_many

log = logging.getLogger(__name__)

STAT_FIELDS = ("hits", "misses", "skipped")
Compute = Callable[[list[str]], tuple[Array, list[Any]]]


class CircuitBreaker:
    """Closed until a failure; then open (calls skipped) for ``open_s``; then one trial call
    (half-open): success closes it, failure opens it again."""

    def __init__(self, open_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.open_s = open_s
        self.clock = clock
        self.open_until: float | None = None

    @property
    def is_open(self) -> bool:
        return self.open_until is not None and self.clock() < self.open_until

    def allow(self) -> bool:
        return not self.is_open

    def failure(self) -> None:
        self.open_until = self.clock() + self.open_s

    def success(self) -> None:
        self.open_until = None


def encode(context: Array, analysis: Analysis) -> bytes:
    head = f"{analysis.domain}|{analysis.complexity!r}|{analysis.chars}|".encode()
    return head + np.asarray(context, dtype="<f8").tobytes()


def decode(raw: bytes, dim: int) -> tuple[Array, Analysis] | None:
    """The cached features, or None when the value does not fit (another dimension)."""
    try:
        domain, complexity, chars, blob = raw.split(b"|", 3)
        ctx = np.frombuffer(blob, dtype="<f8").astype(np.float64)
        if ctx.shape != (dim,):
            return None
        return ctx, Analysis(domain.decode(), float(complexity), int(chars))
    except ValueError:
        return None


class RedisFeatureCache:
    """Get-or-compute features for a chunk: one MGET, then one pipeline for the misses."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        signature: str,
        ttl_s: int,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.keys = RedisKeys(prefix)
        self.signature = signature
        self.ttl_s = ttl_s
        self.breaker = breaker or CircuitBreaker(30.0)
        self.skipped = 0  # prompts routed without the cache, not yet counted in Redis

    @classmethod
    def from_url(
        cls,
        url: str,
        prefix: str,
        signature: str,
        ttl_s: int,
        breaker_s: float,
        timeout_s: float = 0.25,
    ) -> RedisFeatureCache:
        # Short timeouts: a slow cache must cost less than the embedding it saves.
        client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        return cls(client, prefix, signature, ttl_s, CircuitBreaker(breaker_s))

    def key(self, text: str) -> str:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return self.keys.features(self.signature, digest)

    @property
    def stats_key(self) -> str:
        return self.keys.features_stats

    def _failed(self, what: str, exc: Exception) -> None:
        log.warning(
            "feature cache %s failed (%s); skipping it for %.0f s",
            what,
            type(exc).__name__,
            self.breaker.open_s,
        )
        self.breaker.failure()

    def featurize(
        self, texts: Sequence[str], compute: Compute, dim: int
    ) -> tuple[Array, list[Any]]:
        """Contexts (n, dim) and analyses of ``texts``; ``compute`` runs on the misses only."""
        n = len(texts)
        cached: list[tuple[Array, Analysis] | None] = [None] * n
        use = self.breaker.allow()
        keys = [self.key(t) for t in texts] if use else []
        if use and n:
            try:
                raw = self.client.mget(keys)
                cached = [decode(r, dim) if isinstance(r, bytes) else None for r in raw]
                self.breaker.success()
            except redis.RedisError as exc:
                self._failed("read", exc)
                use = False
        miss = [i for i, c in enumerate(cached) if c is None]
        contexts = np.zeros((n, dim))
        analyses: list[Any] = [None] * n
        for i, c in enumerate(cached):
            if c is not None:
                contexts[i], analyses[i] = c
        if miss:
            ctx, an = compute([texts[i] for i in miss])
            for k, i in enumerate(miss):
                contexts[i], analyses[i] = ctx[k], an[k]
        if use:
            try:
                pipe = self.client.pipeline(transaction=False)
                set_many(
                    pipe, {keys[i]: encode(contexts[i], analyses[i]) for i in miss}, self.ttl_s
                )
                pipe.hincrby(self.stats_key, "hits", n - len(miss))
                pipe.hincrby(self.stats_key, "misses", len(miss))
                if self.skipped:
                    # Prompts routed while the breaker was open, counted now that Redis answers.
                    pipe.hincrby(self.stats_key, "skipped", self.skipped)
                pipe.execute()
                self.skipped = 0
            except redis.RedisError as exc:
                self._failed("write", exc)
        elif n:
            self.skipped += n
        return contexts, analyses


def signature(*parts: object) -> str:
    """A short hash of the settings that shape a context."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


def read_stats(client: redis.Redis, prefix: str) -> dict[str, int]:
    """Hit/miss counters of the feature cache (for ``conduit status``)."""
    raw = client.hgetall(RedisKeys(prefix).features_stats)
    out = {k: 0 for k in STAT_FIELDS}
    out.update({(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()})
    return out
