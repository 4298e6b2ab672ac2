"""The end-to-end latency histogram: each new result counts the time since its prompt was
submitted (``queries.created_at`` in PostgreSQL), per answering model, added to the Redis hash
the exporter reads and exported as ``conduit_end_to_end_seconds``."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
import sqlalchemy as sa

from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import ResultRow
from conduit_workers.execution.call_metrics import CallMetrics
from conduit_workers.execution.executor import _end_to_end
from conduit_workers.history import history_schema as t
from tests.conftest import TEST_PREFIX, scrape

pytestmark = pytest.mark.integration


def test_results_count_their_time_since_submission_per_model(history, redis_url, pg_url):
    items = [parse_item({"prompt": f"p{i}"}, line=i + 1, max_prompt_chars=100) for i in range(3)]
    qids = history.submit("b", items, tag=None, rejected=0, constraints={}).new
    with history.engine.begin() as conn:  # the first prompt waited about 100 s in the queues
        old = conn.scalar(sa.select(t.queries.c.created_at).where(t.queries.c.id == qids[0]))
        conn.execute(
            t.queries.update()
            .where(t.queries.c.id == qids[0])
            .values(created_at=old - timedelta(seconds=100))
        )
    results = [
        ResultRow(qids[0], "m-a", "ok", "x", 1, 1, 0.0, 1.0, 1, 0),
        ResultRow(qids[1], "m-a", "ok", "x", 1, 1, 0.0, 1.0, 1, 0),
        ResultRow(qids[2], "m-b", "error", None, 0, 0, 0.0, 1.0, 3, 0),
    ]
    metrics = CallMetrics()
    _end_to_end(metrics, results, history.submitted_at(qids))
    metrics.flush(redis.Redis.from_url(redis_url), TEST_PREFIX)

    s = {}
    for x in scrape("CallCollector", redis_url, pg_url):
        if x.name.startswith("conduit_end_to_end_seconds"):
            s[(x.name, x.labels.get("model"), x.labels.get("le"))] = x.value
    assert s[("conduit_end_to_end_seconds_count", "m-a", None)] == 2
    assert s[("conduit_end_to_end_seconds_count", "m-b", None)] == 1
    assert s[("conduit_end_to_end_seconds_bucket", "m-a", "+Inf")] == 2
    # the prompt that waited 100 s is above the 60 s bucket, within the 120 s one
    assert s[("conduit_end_to_end_seconds_bucket", "m-a", "60")] == 1
    assert s[("conduit_end_to_end_seconds_bucket", "m-a", "120")] == 2
    assert 100 <= s[("conduit_end_to_end_seconds_sum", "m-a", None)] < 100 + 2 * 60


def test_call_counters_per_model_with_their_latency_buckets(redis_url):
    """Each request counted once per model: attempts, the latency histogram (cumulative
    buckets), errors by class and retries; the names as the exporter reads them."""
    from conduit_workers.errors import PermanentProviderError, RetryableProviderError
    from conduit_workers.execution import call_metrics

    m = CallMetrics()
    m.call("m-a", 0.05, None)
    m.call("m-a", 0.3, RetryableProviderError("timeout", "m-a"))
    permanent = PermanentProviderError("bad request", "m-b")
    m.call("m-b", 3.0, permanent)
    m.call("m-a", 100.0, None)
    m.end_to_end("m-a", 2.0)
    m.flush(redis.Redis.from_url(redis_url), TEST_PREFIX)
    got = call_metrics.read(redis.Redis.from_url(redis_url), TEST_PREFIX)
    assert got[("attempts", "m-a")] == 3 and got[("attempts", "m-b")] == 1
    assert got[("latency_sum", "m-a")] == pytest.approx(100.35)
    bucket = {k[2]: v for k, v in got.items() if k[:2] == ("latency_bucket", "m-a")}
    assert bucket == {
        "0.1": 1,
        "0.25": 1,
        "0.5": 2,
        "1": 2,
        "2.5": 2,
        "5": 2,
        "10": 2,
        "30": 2,
        "60": 2,
    }
    assert ("latency_bucket", "m-b", "2.5") not in got
    assert got[("latency_bucket", "m-b", "5")] == 1
    assert ("retries", "m-a") in got and got[("retries", "m-a")] == 1
    assert ("retries", "m-b") not in got
    assert got[("errors", "m-b", permanent.error_class)] == 1
    assert got[("e2e_count", "m-a")] == 1 and got[("e2e_bucket", "m-a", "5")] == 1
    assert ("e2e_bucket", "m-a", "1") not in got


def test_the_executor_counts_time_since_submission_from_the_rows_it_loads(history):
    """The submission time comes with the prompt (``load_for_execution``), not from a query of
    its own per execute task: a redelivered chunk counts nothing twice."""
    import asyncio

    from conduit_workers.domain.catalog import Catalog, ModelSpec
    from conduit_workers.domain.records import DecisionRow
    from conduit_workers.execution.executor import handle_execute_batch
    from conduit_workers.fakes.llm_fake import FakeLLM
    from conduit_workers.settings import ExecutorSettings, FeedbackSettings

    items = [parse_item({"prompt": f"q{i}"}, line=i + 1, max_prompt_chars=100) for i in range(3)]
    qids = history.submit("b", items, tag=None, rejected=0, constraints={}).new
    with history.engine.begin() as conn:
        created = dict(conn.execute(sa.select(t.queries.c.id, t.queries.c.created_at)).all())
        conn.execute(
            t.queries.update()
            .where(t.queries.c.id == qids[0])
            .values(created_at=created[qids[0]] - timedelta(seconds=100))
        )
    history.insert_decisions(
        [DecisionRow(q, "m-a", ["m-a"], [1.0], {"m-a": 0.5}, "other", 0.1, 0.0, {}) for q in qids]
    )
    rows = {r.query_id: r for r in history.load_for_execution(qids)}
    assert rows[qids[1]].submitted_at == created[qids[1]]
    assert rows[qids[0]].submitted_at == created[qids[0]] - timedelta(seconds=100)
    assert all(r.submitted_at.tzinfo is not None for r in rows.values())
    url = "http://127.0.0.1:1/v1"
    catalog = Catalog((ModelSpec("m-a", "openai-compatible", 1.0, 1.0, base_url=url),), "m-a")
    metrics = CallMetrics()

    def run() -> list[ResultRow]:
        return asyncio.run(
            handle_execute_batch(
                qids,
                history,
                FakeLLM(),
                catalog,
                ExecutorSettings(),
                FeedbackSettings(),
                metrics=metrics,
            )
        )[0]

    assert len(run()) == 3
    assert run() == []  # answered already: nothing new, nothing counted
    counts = metrics._counts
    assert counts["e2e_count|m-a"] == 3
    assert counts["e2e_bucket|m-a|60"] == 2 and counts["e2e_bucket|m-a|120"] == 3
    assert 100 <= counts["e2e_sum|m-a"] < 100 + 3 * 60
