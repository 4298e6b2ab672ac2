"""Counters of LLM requests for alerting, kept incrementally in Redis.

Every request the executor sends is counted once, as it happens (not reconstructed from the
history database at scrape time): attempts, failures by error class, retries, fallbacks, a
latency histogram of the requests, and one of each prompt's end-to-end time (submitted to
result recorded), per model. An executor process accumulates them in memory and adds them
to Redis at the end of each task (one pipeline); ``conduit metrics`` reads the one hash.

Key ``P:metrics:llm`` (:mod:`conduit_workers.infra.keys`), a hash of ``kind|model[|label]``
-> number, never expiring (Prometheus counters: a Redis lost starts them again from 0, which
``rate()`` handles as a counter reset).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

import redis

from conduit_workers.errors import ConfigError, ProviderError, RetryableProviderError
from conduit_workers.infra.keys import RedisKeys

# Upper bounds (s) of the latency histogram's buckets; +Inf is implied.
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# End to end (submitted -> result recorded): queueing and routing included, so minutes matter.
END_TO_END_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)


# KEYS[1]: the metrics hash; ARGV: field, increment, field, increment, ...
FLUSH_LUA = """
for i = 1, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
"""


def key(prefix: str) -> str:
    return RedisKeys(prefix).llm_metrics


class _Fields:
    """One model's counter names."""

    def __init__(self, model: str) -> None:
        self.attempts = f"attempts|{model}"
        self.latency_count = f"latency_count|{model}"
        self.latency_sum = f"latency_sum|{model}"
        self.latency_buckets = [(le, f"latency_bucket|{model}|{le:g}") for le in LATENCY_BUCKETS_S]
        self.e2e_count = f"e2e_count|{model}"
        self.e2e_sum = f"e2e_sum|{model}"
        self.e2e_buckets = [(le, f"e2e_bucket|{model}|{le:g}") for le in END_TO_END_BUCKETS_S]


class CallMetrics:
    """This process's counts since the last flush; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, float] = defaultdict(float)
        self._by_model: dict[str, _Fields] = {}

    def _fields(self, model: str) -> _Fields:
        """The hash fields of ``model``'s counters, formatted once per model (formatting them
        per call was ~20 µs of the executor's CPU per prompt)."""
        f = self._by_model.get(model)
        if f is None:
            f = self._by_model[model] = _Fields(model)
        return f

    def call(self, model: str, latency_s: float, error: ProviderError | None) -> None:
        f = self._fields(model)
        with self._lock:
            c = self._counts
            c[f.attempts] += 1
            c[f.latency_count] += 1
            c[f.latency_sum] += latency_s
            for le, name in f.latency_buckets:
                if latency_s <= le:
                    c[name] += 1
            if error is not None:
                c[f"errors|{model}|{error.error_class}"] += 1
                if isinstance(error, RetryableProviderError):
                    c[f"retries|{model}"] += 1

    def end_to_end(self, model: str, seconds: float) -> None:
        """One prompt's result recorded ``seconds`` after it was submitted."""
        f = self._fields(model)
        with self._lock:
            c = self._counts
            c[f.e2e_count] += 1
            c[f.e2e_sum] += seconds
            for le, name in f.e2e_buckets:
                if seconds <= le:
                    c[name] += 1

    def fallbacks(self, model: str, n: int) -> None:
        if n > 0:
            with self._lock:
                self._counts[f"fallbacks|{model}"] += n

    def flush(self, client: redis.Redis, prefix: str) -> None:
        """Add the counts to Redis and forget them; kept for the next flush if Redis fails."""
        with self._lock:
            counts, self._counts = dict(self._counts), defaultdict(float)
        if not counts:
            return
        try:
            args: list[str | float] = []
            for field, value in counts.items():
                args += (field, value)
            # One script call: a pipeline of ~30 HINCRBYFLOATs per task cost the executor more
            # CPU (redis-py packs and parses every command in Python) than the task's SQL.
            client.register_script(FLUSH_LUA)(keys=[key(prefix)], args=args)
        except redis.RedisError:
            with self._lock:
                for field, value in counts.items():
                    self._counts[field] += value


class MeteredLLM:
    """An LLM client whose every request is counted in ``metrics`` (a ConfigError sent no
    request and is not counted)."""

    def __init__(self, llm: Any, metrics: CallMetrics) -> None:
        self.llm = llm
        self.metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self.llm, name)

    async def complete(self, model_name: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            done = await self.llm.complete(model_name, *args, **kwargs)
        except ConfigError:
            raise
        except ProviderError as exc:
            self.metrics.call(model_name, time.perf_counter() - started, exc)
            raise
        self.metrics.call(model_name, time.perf_counter() - started, None)
        return done


def read(client: redis.Redis, prefix: str) -> dict[tuple[str, ...], float]:
    """The counters: (kind, model[, label]) -> value."""
    raw: dict[Any, Any] = client.hgetall(key(prefix))
    out = {}
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        out[tuple(name.split("|"))] = float(v)
    return out
