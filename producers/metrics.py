"""``conduit metrics``: a Prometheus exporter for what Flower's ``/metrics`` lacks.

Flower exports task events (``flower_events_total``, ``flower_task_runtime_seconds``,
``flower_worker_online`` …). This exporter adds, read at scrape time (at most every
``metrics.cache_s``) from the history database, the broker and Redis:

==========================================  =======  ==========================================
name                                        type     labels / meaning
==========================================  =======  ==========================================
``conduit_routing_decisions_total``         counter  ``model`` (``none``: unroutable)
``conduit_answers_total``                   counter  ``model``, ``status`` (ok, error, over_budget…)
``conduit_llm_calls_total``                 counter  ``model``: models tried (fallbacks count)
``conduit_llm_errors_total``                counter  ``model``: failed model tries
``conduit_llm_tokens_total``                counter  ``model``, ``direction`` (input, output)
``conduit_llm_cost_usd_total``              counter  ``model``: recorded spend
``conduit_llm_latency_seconds_total``       counter  ``model``: latency of the answers
``conduit_llm_reference_cost_usd_total``    counter  ``model``: answers at reference prices
``conduit_tag_cost_usd_total``              counter  ``tag``: spend by batch tag
``conduit_tag_reference_cost_usd_total``    counter  ``tag``: reference cost by batch tag
``conduit_queue_depth``                     gauge    ``queue``: messages waiting
``conduit_dead_letters``                    gauge    tasks in the dead-letter queue
``conduit_posterior_quality``               gauge    ``model``: the router's mean quality
``conduit_posterior_evidence``              gauge    ``model``: weight of quality evidence
``conduit_llm_attempts_total``              counter  ``model``: requests sent (retries count)
``conduit_llm_attempt_errors_total``        counter  ``model``, ``error_class``: failed requests
``conduit_llm_retries_total``               counter  ``model``: retryable failures
``conduit_fallbacks_total``                 counter  ``model``: models given up before it
``conduit_llm_call_seconds``                histo.   ``model``: latency of every request
``conduit_end_to_end_seconds``              histo.   ``model``: submitted to result recorded
``conduit_floor_quality_ratio``             gauge    ``floor``, ``bound`` (estimate, lower): a
                                                     floor's quality against the reference's,
                                                     as its routers estimate it
``conduit_floor_reference_share``           gauge    ``floor``: share of its prompts sent to
                                                     the reference
``conduit_floor_lambda_cost``               gauge    ``floor``: its dual variable
==========================================  =======  ==========================================

The last six are counted by the executors as requests happen and read from one Redis hash
(``execution/call_metrics.py``), not from the database: alert on them.

Mean latency is ``rate(conduit_llm_latency_seconds_total)`` divided by
``rate(conduit_answers_total{status="ok"})``; savings are the reference cost minus the spend.
The history's counters are kept incrementally (``producers/metrics_history.py``): after the
first scrape, a scrape reads only the rows created since a watermark ``metrics.settle_s``
behind the clock, by the indexed ``created_at``; queue depths, dead letters, posteriors and
the floor come from the broker and Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from conduit_workers import names
from conduit_workers.learning.posterior_store import RedisPosteriorStore
from conduit_workers.routing.floor_store import RedisFloorStore
from conduit_workers.routing.quality_floor import DEFAULT_STREAM, FloorState, floor_states
from producers.api import ConduitClient
from producers.metrics_history import HistoryCounters


class ConduitCollector(Collector):
    def __init__(self, client: ConduitClient, cache_s: float | None = None) -> None:
        self.client = client
        self.cache_s = client.settings.metrics.cache_s if cache_s is None else cache_s
        self._cached: tuple[float, list[Metric]] | None = None
        self.history = HistoryCounters(client.settings.metrics.settle_s)

    def collect(self) -> Iterator[Metric]:
        if self._cached is None or time.monotonic() - self._cached[0] > self.cache_s:
            self._cached = (time.monotonic(), self._read())
        yield from self._cached[1]

    def _read(self) -> list[Metric]:
        import redis

        from producers.status import dead_letter_count, model_statuses, queue_depths

        h = self.client.history

        def q(stmt: Any) -> list[Any]:
            return h._tx(lambda conn: list(conn.execute(stmt).all()))

        decided, answered, tried = self.history.read(q)
        out: list[Metric] = []
        m = CounterMetricFamily("conduit_routing_decisions", "Routing decisions", labels=["model"])
        for (model,), (n,) in sorted(decided.items(), key=_by_key):
            m.add_metric([model or "none"], n)
        out.append(m)
        answers = CounterMetricFamily(
            "conduit_answers", "Prompts with a result", labels=["model", "status"]
        )
        tokens = CounterMetricFamily(
            "conduit_llm_tokens", "Tokens of the answers", labels=["model", "direction"]
        )
        cost = CounterMetricFamily("conduit_llm_cost_usd", "Recorded spend (USD)", labels=["model"])
        lat = CounterMetricFamily(
            "conduit_llm_latency_seconds", "Summed latency of the answers", labels=["model"]
        )
        for (model, status), (n, tin, tout, usd, ms) in sorted(answered.items(), key=_by_key):
            name = model or "none"
            answers.add_metric([name, status], n)
            if status == "ok":
                tokens.add_metric([name, "input"], tin)
                tokens.add_metric([name, "output"], tout)
                cost.add_metric([name], usd)
                lat.add_metric([name], ms / 1000)
        out += [answers, tokens, cost, lat]
        # savings = reference cost - spend: every answer's tokens at the reference's prices
        ref = self.client.catalog.get(self.client.catalog.reference)
        reference = CounterMetricFamily(
            "conduit_llm_reference_cost_usd",
            "The answers' tokens at the catalog reference model's prices (USD)",
            labels=["model"],
        )
        for (model, status), (_, tin, tout, _, _) in sorted(answered.items(), key=_by_key):
            if status == "ok":
                reference.add_metric([model or "none"], ref.cost_usd(int(tin), int(tout)))
        tag_spend = CounterMetricFamily(
            "conduit_tag_cost_usd", "Recorded spend by batch tag (USD)", labels=["tag"]
        )
        tag_reference = CounterMetricFamily(
            "conduit_tag_reference_cost_usd",
            "The answers' tokens at the reference model's prices, by batch tag (USD)",
            labels=["tag"],
        )
        spend_by_tag: dict[str, float] = {}
        reference_by_tag: dict[str, float] = {}
        for (tag, status), (usd, tin, tout) in self.history.read_tags(q).items():
            name = tag or ""
            spend_by_tag[name] = spend_by_tag.get(name, 0.0) + usd
            if status == "ok":
                add = ref.cost_usd(int(tin), int(tout))
                reference_by_tag[name] = reference_by_tag.get(name, 0.0) + add
        for name in sorted(spend_by_tag):
            tag_spend.add_metric([name], spend_by_tag[name])
            tag_reference.add_metric([name], reference_by_tag.get(name, 0.0))
        out += [reference, tag_spend, tag_reference]
        calls = CounterMetricFamily("conduit_llm_calls", "Models tried", labels=["model"])
        errors = CounterMetricFamily("conduit_llm_errors", "Failed model tries", labels=["model"])
        for (model,), (n, e) in sorted(tried.items(), key=_by_key):
            calls.add_metric([model], n)
            errors.add_metric([model], e)
        out += [calls, errors]

        # The broker and Redis, no SQL: queue lengths, dead letters, the router's posteriors.
        settings = self.client.settings
        r = settings.redis
        depth = GaugeMetricFamily("conduit_queue_depth", "Messages waiting", labels=["queue"])
        try:
            depths = queue_depths(self.client.app, names.QUEUES)
        except Exception:  # noqa: BLE001 - a broker away: the other figures still count
            depths = {}
        for queue in names.QUEUES:
            depth.add_metric([queue], depths.get(queue) or 0)
        out.append(depth)
        conn = redis.Redis.from_url(
            r.url, socket_timeout=r.socket_timeout_s, socket_connect_timeout=r.socket_timeout_s
        )
        dead: int | None = None
        models: list[Any] = []
        floors: list[Any] = []
        try:  # Redis away: the history's and the broker's figures still count
            dead = dead_letter_count(conn, r.key_prefix)
            store = RedisPosteriorStore(conn, r.key_prefix, r.applied_ttl_s)
            models = model_statuses(settings, self.client.catalog, store)
            # The default streams (one per floor value); the engine's own streams, which no
            # task uses today, would be a label each.
            floor_store = RedisFloorStore(conn, r.key_prefix, r.applied_ttl_s)
            floors = floor_states(floor_store, settings.router, only=DEFAULT_STREAM)
        except Exception:  # noqa: BLE001
            pass
        finally:
            conn.close()
        if dead is not None:
            out.append(GaugeMetricFamily("conduit_dead_letters", "Dead letters", value=dead))
        quality = GaugeMetricFamily("conduit_posterior_quality", "Mean quality", labels=["model"])
        evidence = GaugeMetricFamily(
            "conduit_posterior_evidence", "Quality evidence", labels=["model"]
        )
        for ms_ in models:
            quality.add_metric([ms_.model], ms_.quality)
            evidence.add_metric([ms_.model], ms_.evidence)
        out += [quality, evidence]
        return out + _floor_metrics(floors)


def _floor_metrics(floors: list[FloorState]) -> list[Metric]:
    ratio = GaugeMetricFamily(
        "conduit_floor_quality_ratio",
        "A floor's quality as a share of the reference's (estimate, lower)",
        labels=["floor", "bound"],
    )
    to_ref = GaugeMetricFamily(
        "conduit_floor_reference_share",
        "Share of its prompts sent to the reference",
        labels=["floor"],
    )
    lam = GaugeMetricFamily("conduit_floor_lambda_cost", "Its dual variable", labels=["floor"])
    for f in floors:
        label = f"{f.floor:g}"
        if f.estimate is not None and f.lower_bound is not None:
            ratio.add_metric([label, "estimate"], f.estimate)
            ratio.add_metric([label, "lower"], f.lower_bound)
        to_ref.add_metric([label], f.reference_share)
        lam.add_metric([label], f.lambda_cost)
    return [ratio, to_ref, lam]


def _by_key(item: tuple[tuple[Any, ...], list[float]]) -> tuple[str, ...]:
    return tuple(str(k) for k in item[0])


class CallCollector(Collector):
    """The executors' counters of LLM requests (``execution/call_metrics.py``), read from one
    Redis hash at each scrape: incremental, no SQL."""

    def __init__(self, client: ConduitClient) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        import redis

        from conduit_workers.execution import call_metrics

        r = self.client.settings.redis
        conn = redis.Redis.from_url(r.url, socket_timeout=r.socket_timeout_s)
        try:
            counts = call_metrics.read(conn, r.key_prefix)
        finally:
            conn.close()
        attempts = CounterMetricFamily(
            "conduit_llm_attempts", "LLM requests sent (every retry counts)", labels=["model"]
        )
        errors = CounterMetricFamily(
            "conduit_llm_attempt_errors",
            "Failed LLM requests by error class (http_429, http_500, timeout, …)",
            labels=["model", "error_class"],
        )
        retries = CounterMetricFamily(
            "conduit_llm_retries",
            "Retryable failures: each was followed by a retry or a fallback",
            labels=["model"],
        )
        fallbacks = CounterMetricFamily(
            "conduit_fallbacks",
            "Models given up for the next one, by final model",
            labels=["model"],
        )
        simple = {"attempts": attempts, "retries": retries, "fallbacks": fallbacks}
        buckets: dict[str, list[tuple[str, float]]] = {}
        sums: dict[str, float] = {}
        totals: dict[str, float] = {}
        for k, v in sorted(counts.items()):
            kind, model, *label = k
            if kind in simple:
                simple[kind].add_metric([model], v)
            elif kind == "errors":
                errors.add_metric([model, label[0] if label else "error"], v)
            elif kind == "latency_bucket":
                buckets.setdefault(model, []).append((label[0], v))
            elif kind == "latency_sum":
                sums[model] = v
            elif kind == "latency_count":
                totals[model] = v
        latency = HistogramMetricFamily(
            "conduit_llm_call_seconds", "Latency of LLM requests", labels=["model"]
        )
        for model, count in totals.items():
            have = dict(buckets.get(model, []))
            series = [
                (f"{le:g}", have.get(f"{le:g}", 0.0)) for le in call_metrics.LATENCY_BUCKETS_S
            ]
            latency.add_metric([model], series + [("+Inf", count)], sums.get(model, 0.0))
        e2e = _histogram(
            "conduit_end_to_end_seconds",
            "Time from a prompt's submission to its result, by answering model",
            "e2e",
            counts,
            call_metrics.END_TO_END_BUCKETS_S,
        )
        yield from (attempts, errors, retries, fallbacks, latency, e2e)


def _histogram(
    name: str,
    doc: str,
    kind: str,
    counts: dict[tuple[str, ...], float],
    bounds: tuple[float, ...],
) -> HistogramMetricFamily:
    """A per-model histogram from the ``<kind>_bucket|model|le``, ``_sum``, ``_count`` fields."""
    family = HistogramMetricFamily(name, doc, labels=["model"])
    for (k, model, *_), count in sorted(counts.items()):
        if k != f"{kind}_count":
            continue
        series = [
            (f"{le:g}", counts.get((f"{kind}_bucket", model, f"{le:g}"), 0.0)) for le in bounds
        ]
        family.add_metric(
            [model], series + [("+Inf", count)], counts.get((f"{kind}_sum", model), 0.0)
        )
    return family


def registry(client: ConduitClient, cache_s: float | None = None) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(ConduitCollector(client, cache_s))
    reg.register(CallCollector(client))
    return reg


def serve(client: ConduitClient, port: int | None = None) -> None:
    """Serve ``/metrics`` until interrupted."""
    from prometheus_client import start_http_server

    m = client.settings.metrics
    server, thread = start_http_server(port or m.port, m.address, registry=registry(client))
    print(f"Prometheus metrics on http://{m.address}:{port or m.port}/metrics", flush=True)
    try:
        while thread.is_alive():
            thread.join(1.0)
    except KeyboardInterrupt:
        server.shutdown()


__all__ = ["ConduitCollector", "registry", "serve"]
