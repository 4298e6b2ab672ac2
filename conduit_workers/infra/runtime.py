"""What a worker process builds once and reuses: settings, catalog, stores, clients.

Built lazily in the process that uses it (after Celery's fork), keyed by pid, so no
connection or event loop crosses a fork. The router's encoder is loaded only by processes that
route: executor and feedback processes never import torch.

Thread-safe: under the executor's ``threads`` pool several tasks of one process share the
runtime, its one event loop (in a thread of its own), its HTTP connections and its LLM call
slots (``executor.concurrency`` per process), so that a task waiting for the slowest call of
its chunk never leaves slots idle while other chunks wait.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

from conduit_workers.domain.catalog import Catalog, load_catalog
from conduit_workers.domain.health import ModelHealth
from conduit_workers.history.history import SqlHistory
from conduit_workers.infra.dead_letters import RedisDeadLetters
from conduit_workers.learning.posterior_store import RedisPosteriorStore
from conduit_workers.settings import Settings, environ, get_settings

if TYPE_CHECKING:  # imported where built: a role's process imports only what it uses
    from conduit_workers.execution.batch_ledger import RedisBatchLedger
    from conduit_workers.execution.call_metrics import CallMetrics
    from conduit_workers.execution.llm import LLMClient
    from conduit_workers.routing.engine import RoutingEngine
    from conduit_workers.routing.feature_cache import RedisFeatureCache
    from conduit_workers.routing.floor_store import RedisFloorStore

T = TypeVar("T")
R = TypeVar("R")


def _once(build: Callable[[R], T]) -> cached_property[T]:
    """A cached property built once per runtime even when pool threads ask at the same time
    (two SQL engines or HTTP clients would waste connections; two migrations, time)."""
    name = build.__name__

    def get(self: R) -> T:
        with self._lock:  # type: ignore[attr-defined]
            if name not in self.__dict__:
                self.__dict__[name] = build(self)
            value: T = self.__dict__[name]
            return value

    get.__name__ = name
    get.__doc__ = build.__doc__
    return cached_property(get)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self._lock = threading.RLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None

    @_once
    def catalog(self) -> Catalog:
        return load_catalog(self.settings.catalog.path, environ())

    @_once
    def uncallable(self) -> dict[str, str]:
        """Catalog models this process cannot call (no key, no SDK) and why; warned once."""
        from conduit_workers.execution.model_check import uncallable_models, warn_uncallable

        out = uncallable_models(self.catalog, environ())
        warn_uncallable(out, f"process {self.pid}")
        return out

    @property
    def callable_models(self) -> frozenset[str]:
        return frozenset(self.catalog.names) - set(self.uncallable)

    @_once
    def history(self) -> SqlHistory:
        db = self.settings.database
        history = SqlHistory(db.url, retry_for_s=db.retry_for_s, pool_size=db.pool_size)
        history.create_schema(auto_migrate=db.auto_migrate)
        return history

    @_once
    def store(self) -> RedisPosteriorStore:
        r = self.settings.redis
        return RedisPosteriorStore.from_url(
            r.url, r.key_prefix, r.applied_ttl_s, r.socket_timeout_s
        )

    @_once
    def budget_ledger(self) -> RedisBatchLedger:
        """The ledger of batch budgets, on the posteriors' Redis."""
        from conduit_workers.execution.batch_ledger import RedisBatchLedger

        b = self.settings.budget
        return RedisBatchLedger(
            self.store.client,
            self.settings.redis.key_prefix,
            b.ledger_ttl_s,
            b.charge_expired_holds,
        )

    @_once
    def floor_store(self) -> RedisFloorStore:
        """The quality floors' counters and marks, on the posteriors' Redis."""
        from conduit_workers.routing.floor_store import RedisFloorStore

        r = self.settings.redis
        return RedisFloorStore(self.store.client, r.key_prefix, r.applied_ttl_s)

    @_once
    def dead_letters(self) -> RedisDeadLetters:
        return RedisDeadLetters(self.store.client, self.settings.redis.key_prefix)

    @_once
    def engine(self) -> RoutingEngine:
        from conduit_workers.execution.model_check import routable_catalog
        from conduit_workers.routing.embedder import make_embedder
        from conduit_workers.routing.engine import RoutingEngine

        rs = self.settings.router
        return RoutingEngine(
            routable_catalog(self.catalog, self.uncallable),
            self.store,
            make_embedder(rs.embedder, rs.static_model_dir),
            rs,
            floor_store=self.floor_store,
        )

    @_once
    def feature_cache(self) -> RedisFeatureCache | None:
        """The router's cache of query features, or None when turned off (ttl 0)."""
        rs = self.settings.router
        if rs.feature_cache_ttl_s <= 0:
            return None
        from conduit_workers.routing.embedder import embedder_id
        from conduit_workers.routing.feature_cache import RedisFeatureCache, signature

        sig = signature(
            embedder_id(self.engine.embedder),
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

    @_once
    def llm(self) -> LLMClient:
        from conduit_workers.execution.llm import LLMClient

        ex = self.settings.executor
        return LLMClient(
            self.catalog,
            environ(),
            ex.timeout_s,
            ex.max_output_tokens,
            http_client=ex.http_client,
            max_connections=max(ex.max_connections, ex.concurrency),
        )

    @_once
    def health(self) -> ModelHealth:
        """Rate-limit gate and circuit breaker per model, shared by this process's calls."""
        ex = self.settings.executor
        return ModelHealth(
            ex.health_window, ex.cooldown_min_calls, ex.cooldown_failure_rate, ex.cooldown_s
        )

    @_once
    def call_metrics(self) -> CallMetrics:
        """This process's counters of LLM requests, added to Redis after each task."""
        from conduit_workers.execution.call_metrics import CallMetrics

        return CallMetrics()

    @_once
    def call_slots(self) -> asyncio.Semaphore:
        """LLM calls in flight in this process, over all its tasks (``executor.concurrency``)."""
        return asyncio.Semaphore(self.settings.executor.concurrency)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed() or not self._loop.is_running():
                loop = new_event_loop()
                started = threading.Event()
                loop.call_soon(started.set)
                thread = threading.Thread(
                    target=loop.run_forever, name="conduit-event-loop", daemon=True
                )
                thread.start()
                started.wait()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this process's one event loop and wait for it; callable from any
        thread (clients, connections and call slots stay bound to that loop)."""
        future = asyncio.run_coroutine_threadsafe(coro, self._event_loop())
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. a soft time limit in the waiting thread: stop the calls too
            raise


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where installed (a dependency: the executor's CPU per prompt was
    ~15% lower on it than on asyncio's own loop, bench/README.md), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    global _runtime
    rt = _runtime
    if rt is None or rt.pid != os.getpid():
        with _runtime_lock:
            if _runtime is None or _runtime.pid != os.getpid():
                _runtime = Runtime(get_settings())
            rt = _runtime
    return rt


def chunks(seq: list[T], n: int) -> list[list[T]]:
    return [seq[i : i + n] for i in range(0, len(seq), max(1, n))]
