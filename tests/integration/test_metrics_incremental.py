"""``conduit metrics`` reads the history incrementally: after its first scrape, a scrape
reads only the rows created since the watermark (``producers/metrics_history.py``), never
the whole results table, and its totals still equal the history's."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import ResultRow
from conduit_workers.history import history_schema as t
from producers.metrics import ConduitCollector
from tests.conftest import client_on

pytestmark = pytest.mark.integration


def _scrape(reg: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    out = {}
    for fam in text_string_to_metric_families(generate_latest(reg).decode()):
        for x in fam.samples:
            who = x.labels.get("model", x.labels.get("tag", ""))
            out[(x.name, who, x.labels.get("status", ""))] = x.value
    return out


def _db_totals(history) -> tuple[int, float]:
    with history.engine.connect() as conn:
        n = conn.scalar(sa.select(sa.func.count()).select_from(t.results))
        usd = conn.scalar(sa.select(sa.func.sum(t.results.c.cost_usd)))
    return n, usd


def test_a_scrape_reads_only_the_rows_created_since_the_last(history, redis_url, pg_url):
    items = [parse_item({"prompt": f"p{i}"}, line=i + 1, max_prompt_chars=100) for i in range(5)]
    qids = history.submit("b", items, tag="nightly", rejected=0, constraints={}).new
    history.record_results(
        [
            ResultRow(qids[0], "m-a", "ok", "x", 10, 20, 0.5, 100.0, 1, 0),
            ResultRow(qids[1], "m-b", "error", None, 0, 0, 0.0, 50.0, 3, 0),
        ],
        [],
    )
    with history.engine.begin() as conn:  # the first answer is an hour old: settled at once
        conn.execute(
            t.results.update()
            .where(t.results.c.query_id == qids[0])
            .values(created_at=t.results.c.created_at - timedelta(hours=1))
        )
    client = client_on(redis_url, pg_url)
    try:
        reg = CollectorRegistry()
        reg.register(ConduitCollector(client, cache_s=0))
        first = _scrape(reg)
        assert first[("conduit_llm_cost_usd_total", "m-a", "")] == pytest.approx(0.5)
        assert first[("conduit_answers_total", "m-b", "error")] == 1

        history.record_results(
            [
                ResultRow(qids[2], "m-a", "ok", "x", 1, 2, 0.25, 10.0, 1, 0),
                ResultRow(qids[3], "m-a", "ok", "x", 1, 2, 0.125, 10.0, 1, 0),
            ],
            [],
        )
        statements: list[str] = []

        def seen(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
            statements.append(statement)

        sa.event.listen(client.history.engine, "before_cursor_execute", seen)
        try:
            second = _scrape(reg)
        finally:
            sa.event.remove(client.history.engine, "before_cursor_execute", seen)
        ref = client.catalog.get(client.catalog.reference)
    finally:
        client.close()

    n, usd = _db_totals(history)
    assert second[("conduit_tag_cost_usd_total", "nightly", "")] == pytest.approx(usd)
    # savings are measured on the answers: 12 input and 24 output tokens at reference prices
    assert second[("conduit_llm_reference_cost_usd_total", "m-a", "")] == pytest.approx(
        ref.cost_usd(12, 24)
    )
    assert second[("conduit_tag_reference_cost_usd_total", "nightly", "")] == pytest.approx(
        ref.cost_usd(12, 24)
    )
    assert n == 4
    cost = sum(v for (k, _, _), v in second.items() if k == "conduit_llm_cost_usd_total")
    assert cost == pytest.approx(usd, rel=1e-9)
    assert second[("conduit_answers_total", "m-a", "ok")] == 3
    assert second[("conduit_llm_tokens_total", "m-a", "")] >= 0
    on_results = [s for s in statements if "FROM results" in s]
    assert on_results, statements
    # every read of the results table is bounded below by the watermark: no whole-table scan
    assert all("results.created_at >" in s for s in on_results), on_results
    assert any("conduit_queue_depth" == k for (k, _, _) in second)


def test_rows_move_from_the_recent_window_into_the_totals_once(history):
    from datetime import UTC, datetime

    from producers.metrics_history import HistoryCounters

    items = [parse_item({"prompt": f"p{i}"}, line=i + 1, max_prompt_chars=100) for i in range(3)]
    qids = history.submit("b", items, tag=None, rejected=0, constraints={}).new
    history.record_results([ResultRow(qids[0], "m-a", "ok", "x", 1, 1, 0.5, 1.0, 1, 0)], [])

    def q(stmt):  # noqa: ANN001, ANN202
        with history.engine.connect() as conn:
            return list(conn.execute(stmt).all())

    counters = HistoryCounters(settle_s=600)
    now = datetime.now(UTC)
    _, first, _ = counters.read(q, now)
    assert first[("m-a", "ok")][0] == 1 and counters.results.settled == {}  # still recent
    history.record_results([ResultRow(qids[1], "m-a", "ok", "x", 1, 1, 0.25, 1.0, 1, 0)], [])
    # an hour later both rows are settled: folded into the totals once, not read again
    _, later, _ = counters.read(q, now + timedelta(hours=1))
    assert later[("m-a", "ok")][:1] == [2] and later[("m-a", "ok")][3] == pytest.approx(0.75)
    assert counters.results.settled[("m-a", "ok")][0] == 2
    # a clock stepping back does not fold (nor count) anything twice
    _, back, _ = counters.read(q, now)
    assert back[("m-a", "ok")][0] == 2
    _, again, _ = counters.read(q, now + timedelta(hours=2))
    assert again[("m-a", "ok")][0] == 2
