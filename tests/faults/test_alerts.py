"""Alerts that fire: with 20 % 500s and 5 % 429s injected, the exporter's request counters
equal what the provider saw (every retry counts), the error-rate alert of docs/deploy.md
(failed requests / requests) is well above its threshold, and the latency histogram has one
observation per request."""

from __future__ import annotations

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from producers.metrics import registry
from tests.faults.harness import FaultSystem, check_exactly_once

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]
N = 300


def _samples(system: FaultSystem) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry(system.client, cache_s=0)).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _total(samples: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == name and all(dict(lab).get(k) == want for k, want in labels.items())
    )


def test_error_rate_alert_fires_under_injected_faults(system: FaultSystem) -> None:
    system.set_profiles({"*": {"latency_ms": 40, "rate_500": 0.2, "rate_429": 0.05}})
    batch, ids = system.submit("alerts", N)
    system.wait_settled(batch)
    checked = check_exactly_once(system, batch, ids, max_duplicate_calls=0)
    stats = system.replay_stats()
    samples = _samples(system)
    sent = _total(samples, "conduit_llm_attempts_total")
    failed = _total(samples, "conduit_llm_attempt_errors_total")
    n500 = _total(samples, "conduit_llm_attempt_errors_total", error_class="http_500")
    n429 = _total(samples, "conduit_llm_attempt_errors_total", error_class="http_429")
    assert sent == stats["calls"]
    assert n500 == stats["statuses"].get("500", 0) and n429 == stats["statuses"].get("429", 0)
    assert failed == n500 + n429
    assert _total(samples, "conduit_llm_retries_total") == failed  # all retryable
    assert _total(samples, "conduit_llm_call_seconds_count") == sent
    assert _total(samples, "conduit_llm_call_seconds_bucket", le="+Inf") == sent
    # one end-to-end observation per prompt, whatever its retries
    assert _total(samples, "conduit_end_to_end_seconds_count") == sum(checked.statuses.values())
    rate = failed / sent
    assert rate > 0.1  # docs/deploy.md: alert above a few percent
    print(
        f"\nALERTS 20% 500s + 5% 429s: {int(sent)} requests, {int(failed)} failed "
        f"({int(n500)} http_500, {int(n429)} http_429): error rate {rate:.1%}; "
        f"{int(_total(samples, 'conduit_fallbacks_total'))} fallbacks; statuses "
        f"{checked.statuses}"
    )
