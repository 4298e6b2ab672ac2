"""What a worker process builds once and reuses: settings, catalog, stores, clients.

Built lazily in the process that uses it (after Celery's fork), keyed by pid, so no
connection or event loop crosses a fork. The router's encoder is loaded only by processes that
route: executor and feedback processes never import torch.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from functools import cached_property
from typing import Any, TypeVar

from conduit_workers.adapters.dead_letters import RedisDeadLetters
from conduit_workers.adapters.history import SqlHistory
from conduit_workers.adapters.posterior_store import RedisPosteriorStore
from conduit_workers.domain.catalog import Catalog, load_catalog
from conduit_workers.domain.health import ModelHealth
from conduit_workers.settings import Settings, environ, get_settings

T = TypeVar("T")


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self._loop: asyncio.AbstractEventLoop | None = None

    @cached_property
    def catalog(self) -> Catalog:
        return load_catalog(self.settings.catalog.path, environ())

    @cached_property
    def history(self) -> SqlHistory:
        db = self.settings.database
        history = SqlHistory(db.url, retry_for_s=db.retry_for_s, pool_size=db.pool_size)
        history.create_schema(auto_migrate=db.auto_migrate)
        return history

    @cached_property
    def store(self) -> RedisPosteriorStore:
        r = self.settings.redis
        return RedisPosteriorStore.from_url(
            r.url, r.key_prefix, r.applied_ttl_s, r.socket_timeout_s
        )

    @cached_property
    def dead_letters(self) -> RedisDeadLetters:
        return RedisDeadLetters(self.store.client, self.settings.redis.key_prefix)

    @cached_property
    def engine(self) -> Any:
        from conduit_workers.adapters.embedder import make_embedder
        from conduit_workers.engine import RoutingEngine

        rs = self.settings.router
        return RoutingEngine(
            self.catalog, self.store, make_embedder(rs.embedder, rs.static_model_dir), rs
        )

    @cached_property
    def feature_cache(self) -> Any:
        """The router's cache of query features, or None when turned off (ttl 0)."""
        rs = self.settings.router
        if rs.feature_cache_ttl_s <= 0:
            return None
        from conduit_workers.adapters.feature_cache import RedisFeatureCache, signature

        sig = signature(
            rs.embedder,
            rs.projection_dim,
            rs.embed_tail_chars,
            rs.strip_shared_prefix,
            rs.shared_prefix_min_chars,
            self.settings.context_dim,
        )
        return RedisFeatureCache.from_url(
            rs.feature_cache_url or self.settings.redis.url,
            self.settings.redis.key_prefix,
            sig,
            rs.feature_cache_ttl_s,
            rs.feature_cache_breaker_s,
            rs.feature_cache_timeout_s,
        )

    @cached_property
    def llm(self) -> Any:
        from conduit_workers.adapters.llm import LLMClient

        ex = self.settings.executor
        return LLMClient(
            self.catalog,
            environ(),
            ex.timeout_s,
            ex.max_output_tokens,
            http_client=ex.http_client,
            max_connections=ex.max_connections,
        )

    @cached_property
    def health(self) -> ModelHealth:
        """Rate-limit gate and circuit breaker per model, shared by this process's calls."""
        ex = self.settings.executor
        return ModelHealth(
            ex.health_window, ex.cooldown_min_calls, ex.cooldown_failure_rate, ex.cooldown_s
        )

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this process's one event loop (clients stay bound to it)."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        return self._loop.run_until_complete(coro)


_runtime: Runtime | None = None


def runtime() -> Runtime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        _runtime = Runtime(get_settings())
    return _runtime


def chunks(seq: list[T], n: int) -> list[list[T]]:
    return [seq[i : i + n] for i in range(0, len(seq), max(1, n))]
