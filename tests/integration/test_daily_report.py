"""The daily report against PostgreSQL: one row per day, claims, replacement, files."""

from __future__ import annotations

import csv
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from conduit_workers.domain.catalog import load_catalog
from conduit_workers.domain.items import parse_item
from conduit_workers.domain.records import DecisionRow, ResultRow
from conduit_workers.domain.rewards import FeedbackEvent
from conduit_workers.history import history_schema as t
from conduit_workers.history.history import SqlHistory
from conduit_workers.reports.report_files import CHARTS
from conduit_workers.reports.report_sql import SqlReports
from conduit_workers.reports.reporting import build_daily_report
from conduit_workers.settings import DEFAULT_CATALOG

pytestmark = pytest.mark.integration
CATALOG = load_catalog(DEFAULT_CATALOG, {})
BIG, SMALL = CATALOG.reference, "mistralai/Mixtral-8x7B-Instruct-v0.1"


def _day_of_traffic(history: SqlHistory) -> None:
    items = [parse_item({"prompt": f"p{i}"}, line=i + 1, max_prompt_chars=100) for i in range(4)]
    qids = history.submit("b1", items, tag="nightly", rejected=0, constraints={}).new
    history.insert_decisions(
        [
            DecisionRow(q, m, [m], [1.0], {m: 0.5}, "other", 0.1, 0.001, {m: 0})
            for q, m in zip(qids, [SMALL, SMALL, BIG, BIG], strict=True)
        ]
    )
    rows, events = [], []
    for q, m, tin, tout in zip(
        qids, [SMALL, SMALL, BIG, BIG], [100, 200, 300, 400], [10, 20, 30, 40], strict=True
    ):
        cost = CATALOG.get(m).cost_usd(tin, tout)
        rows.append(ResultRow(q, m, "ok", "x", tin, tout, cost, 40.0, 1, 0))
        events.append(
            FeedbackEvent(
                f"implicit:{q}:{m}", q, m, "implicit", 1.0, 0.0, is_call=True, cost_usd=cost
            )
        )
    history.record_results(rows, events)
    history.add_feedback(
        [FeedbackEvent(f"explicit:{qids[0]}", qids[0], SMALL, "explicit", 0.25, 1.0)]
    )


def test_a_day_is_written_once_per_schedule_and_replaced_by_hand(history, tmp_path):
    _day_of_traffic(history)
    today = datetime.now(UTC).date()
    first = build_daily_report(today, history, CATALOG, tmp_path, owner="beat-1", scheduled=True)
    assert first is not None
    # a second beat (or a redelivered message) for the same day does nothing
    assert (
        build_daily_report(today, history, CATALOG, tmp_path, owner="beat-2", scheduled=True)
        is None
    )
    reports = SqlReports(history)
    row = reports.row(today)
    assert row["status"] == "done" and row["claimed_by"] == "beat-1" and row["prompts"] == 4
    assert row["catalog_version"] == CATALOG.version and row["mean_rating"] == 0.25
    with history.engine.connect() as conn:
        spend = conn.scalar(sa.select(sa.func.sum(t.results.c.cost_usd)))
    assert row["spend_usd"] == pytest.approx(spend, rel=1e-12)

    folder = first.folder
    for name in ("report.md", "report.html", "report.csv", *CHARTS):
        assert (folder / name).stat().st_size > 0, name
    rows = list(csv.DictReader((folder / "report.csv").open()))
    total = next(r for r in rows if r["section"] == "total")
    assert float(total["spend_usd"]) == pytest.approx(spend, abs=5e-7)  # USD to 6 decimals
    assert "nightly" in (folder / "report.md").read_text()

    # more traffic, then a manual re-run: the day's row and folder are replaced, not doubled
    items = [parse_item({"prompt": "late"}, line=1, max_prompt_chars=100)]
    q = history.submit("b2", items, tag=None, rejected=0, constraints={}).new[0]
    history.insert_decisions([DecisionRow(q, SMALL, [SMALL], [1.0], {}, "other", 0.1, 0.0, {})])
    history.record_results([ResultRow(q, SMALL, "ok", "x", 10, 10, 0.5, 1.0, 1, 0)], [])
    again = build_daily_report(today, history, CATALOG, tmp_path, owner="cli")
    assert again is not None and again.folder == folder
    assert reports.count_rows() == 1 and reports.row(today)["prompts"] == 5
    assert [p.name for p in tmp_path.iterdir()] == [today.isoformat()]


def test_a_stale_claim_is_taken_over_and_a_failed_build_releases_it(history, tmp_path):
    reports = SqlReports(history)
    day = datetime(2026, 1, 2).date()
    assert reports.claim(day, "dead-run", stale_after_s=3600)
    assert not reports.claim(day, "beat", stale_after_s=3600)
    assert reports.claim(day, "beat", stale_after_s=0)  # the first run died long ago
    reports.release(day, "beat")
    assert reports.row(day) is None


def test_spend_per_user_and_key_and_unanswered_and_dead_lettered_prompts(
    history, tmp_path, redis_client, redis_url
):
    from conduit_workers.infra.dead_letters import DeadLetter, RedisDeadLetters

    items = [
        parse_item({"prompt": f"p{i}", "user": u}, line=i + 1, max_prompt_chars=100)
        for i, u in enumerate(["ann", "bob", "ann", "bob"])
    ]
    qids = history.submit("b-api", items, tag="api:alpha", rejected=0, constraints={}).new
    history.insert_decisions(
        [DecisionRow(q, SMALL, [SMALL], [1.0], {}, "other", 0.1, 0.0, {}) for q in qids]
    )
    # ann's first prompt and bob's first are answered; the other two never are,
    # and the dead-letter queue holds the chunk of one of them.
    history.record_results(
        [
            ResultRow(qids[0], SMALL, "ok", "x", 10, 10, 0.25, 1.0, 1, 0),
            ResultRow(qids[1], SMALL, "ok", "x", 10, 10, 0.5, 1.0, 1, 0),
        ],
        [],
    )
    letters = RedisDeadLetters(redis_client, "conduit-report-test")
    letters.client.delete(letters.key)
    letters.put(DeadLetter("t1", "conduit.execute", [[qids[3]]], "execute", "failed", "E", 1, 3, 0))
    from conduit_workers.history.history_gateway import GatewayHistory

    keys = GatewayHistory(str(history.engine.url.render_as_string(hide_password=False)))
    keys.create_key("alpha", budget_usd_per_day=5.0)  # as `conduit keys create` does
    keys.engine.dispose()
    today = datetime.now(UTC).date()
    out = build_daily_report(
        today, history, CATALOG, tmp_path, owner="cli", dead_letters=letters.query_ids()
    )
    letters.client.delete(letters.key)
    assert out is not None
    rep = out.report
    assert {g.key: g.spend_usd for g in rep.users} == {"ann": 0.25, "bob": 0.5}
    assert {g.key: (g.spend_usd, g.budget_usd) for g in rep.keys} == {"alpha": (0.75, 5.0)}
    assert (rep.unanswered, rep.dead_lettered) == (2, 1)
    assert rep.batch_label("b-api").startswith("api:alpha (")
    md = (out.folder / "report.md").read_text()
    assert "| unanswered (of them dead-lettered) | 2 (1) |" in md and "b-api" not in md
    assert "| alpha | 2 | 2 | 0 | $5.0000 |" in md  # the key's daily budget beside its spend


def test_trend_reads_the_stored_daily_rows_and_quality_kept_the_references_ratings(
    history, tmp_path
):
    from datetime import timedelta

    _day_of_traffic(history)
    with history.engine.begin() as conn:  # the reference's two answers rated 0.8 and 1.0
        big = [
            q
            for (q,) in conn.execute(
                sa.select(t.results.c.query_id).where(t.results.c.model == BIG)
            )
        ]
    history.add_feedback(
        [
            FeedbackEvent(f"explicit:{q}", q, BIG, "explicit", v, 1.0)
            for q, v in zip(big, [0.8, 1.0], strict=True)
        ]
    )
    today = datetime.now(UTC).date()
    reports = SqlReports(history)
    # earlier days exist only as their stored rows: no result of theirs is in the database
    for back, spend in ((1, 2.0), (40, 50.0)):
        summary = {
            "catalog_version": "old",
            "prompts": 7,
            "calls": 7,
            "errors": 0,
            "input_tokens": 0,
            "output_tokens": 0,
            "spend_usd": spend,
            "reference_cost_usd": 3 * spend,
            "savings_usd": 2 * spend,
            "waste_usd": 0.0,
            "mean_rating": 0.5,
        }
        figures = {"total": {"ratings": 2}}
        reports.save(today - timedelta(days=back), "old-run", summary, figures, "x")
    out = build_daily_report(today, history, CATALOG, tmp_path, owner="cli")
    assert out is not None
    rep = out.report
    p30 = rep.trend.last_30_days
    assert p30.days == 2 and p30.prompts == 7 + 4
    assert p30.spend_usd == pytest.approx(2.0 + rep.total.spend_usd)
    assert p30.reference_cost_usd == pytest.approx(6.0 + rep.total.reference_cost_usd)
    assert p30.ratings == 2 + 3
    assert p30.mean_rating == pytest.approx((2 * 0.5 + 0.25 + 0.8 + 1.0) / 5)
    q = rep.quality
    assert q.reference_model == BIG and q.reference_ratings == 2
    prior = CATALOG.get(BIG).quality_prior
    expected_ref = 0.9 if prior is None else (5 * prior + 1.8) / 7
    assert q.reference_quality == pytest.approx(expected_ref)
    assert q.kept == pytest.approx(((0.25 + 0.8 + 1.0) / 3) / expected_ref)
    md = (out.folder / "report.md").read_text()
    assert "## Trend" in md and "last 30 days" in md and "month to date" in md
    assert f"{100 * q.kept:.1f}%" in md
    # the day's own row is the one a later day's trend reads
    assert reports.stored_days(today, today)[0].spend_usd == pytest.approx(rep.total.spend_usd)
