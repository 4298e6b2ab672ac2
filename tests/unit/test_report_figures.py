"""The daily report's figures on hand-made rows: every definition of docs/reports.md."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from conduit_workers.domain.catalog import parse_catalog
from conduit_workers.domain.report import CallFact, ResultFact, build_report

CATALOG = parse_catalog(
    {
        "version": "v7",
        "reference": "big",
        "models": [
            {
                "name": "big",
                "provider": "openai",
                "input_price_per_mtok_usd": 10.0,
                "output_price_per_mtok_usd": 30.0,
            },
            {
                "name": "small",
                "provider": "groq",
                "input_price_per_mtok_usd": 1.0,
                "output_price_per_mtok_usd": 1.0,
            },
        ],
    },
    {},
)
T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def _r(
    qid,
    model,
    routed,
    status="ok",
    tin=100,
    tout=10,
    attempts=1,
    fallbacks=0,
    minutes=0,
    batch="b1",
    tag="t",
):
    spec = CATALOG.get(model) if model and status == "ok" else None
    cost = spec.cost_usd(tin, tout) if spec else 0.0
    if status != "ok":
        tin = tout = 0
    return ResultFact(
        qid,
        model,
        routed,
        status,
        tin,
        tout,
        cost,
        50.0 + minutes,
        attempts,
        fallbacks,
        T0 + timedelta(minutes=minutes),
        batch,
        tag,
    )


def test_totals_savings_retries_waste_and_shares():
    results = [
        _r("q1", "small", "small"),
        _r("q2", "small", "small", attempts=3, minutes=10),  # two retries on small
        _r("q3", "small", "big", attempts=4, fallbacks=1, minutes=20, batch="b2", tag=None),
        _r("q4", "big", "big", minutes=30),
        _r("q5", "big", "big", status="error", attempts=3, minutes=40),
        _r("q6", None, None, status="unroutable", attempts=0, minutes=50),
    ]
    calls = [
        CallFact("q1", "small", False, 0.0),
        CallFact("q2", "small", False, 0.0),
        CallFact("q3", "big", True, 0.0),
        CallFact("q3", "small", False, 0.0),
        CallFact("q4", "big", False, 0.0),
        CallFact("q5", "big", True, 0.001),
    ]
    rep = build_report(date(2026, 11, 24), results, calls, {"q1": 1.0, "q4": 0.5}, CATALOG)
    t = rep.total
    small, big = CATALOG.get("small"), CATALOG.get("big")
    assert (t.prompts, t.ok, t.errors, t.unroutable) == (6, 4, 1, 1)
    assert (t.calls, t.failed_calls) == (6, 2)
    assert t.retries == 0 + 2 + 2 + 0 + 2  # attempts − fallbacks − 1, unroutable none
    assert t.fallbacks == 1
    assert t.spend_usd == pytest.approx(3 * small.cost_usd(100, 10) + big.cost_usd(100, 10))
    assert t.reference_cost_usd == pytest.approx(4 * big.cost_usd(100, 10))
    assert t.savings_usd == pytest.approx(t.reference_cost_usd - t.spend_usd)
    # failed attempts: q2 2, q3 3 (priced as small answers), q5 3 (as big answers)
    assert t.waste_usd == pytest.approx(5 * small.cost_usd(100, 10) + 3 * big.cost_usd(100, 10))
    assert t.waste_billed_usd == pytest.approx(0.001)
    assert t.mean_rating == pytest.approx(0.75)
    assert rep.routing_share == pytest.approx({"small": 0.4, "big": 0.6})
    by = {g.key: g for g in rep.models}
    assert (by["small"].ok, by["small"].calls, by["big"].calls, by["big"].failed_calls) == (
        3,
        3,
        3,
        2,
    )
    assert by["(unroutable)"].prompts == 1
    assert {g.key: g.prompts for g in rep.providers} == {"groq": 3, "openai": 2, "-": 1}
    assert {g.key: g.prompts for g in rep.batches} == {"b1": 5, "b2": 1}
    assert {g.key: g.prompts for g in rep.tags} == {"t": 5, "(none)": 1}
    # the groups partition the day
    for groups in (rep.models, rep.providers, rep.batches, rep.tags):
        assert sum(g.spend_usd for g in groups) == pytest.approx(t.spend_usd)
        assert sum(g.prompts for g in groups) == t.prompts
        assert sum(g.calls for g in groups) == t.calls
    assert rep.catalog_version == "v7" and rep.repriced_spend_usd == pytest.approx(t.spend_usd)
    assert sum(sum(c.values()) for _, c in rep.share_over_time) == 5
    assert rep.summary()["errors"] == 2


def test_an_empty_day_is_a_report_of_zeros():
    rep = build_report(date(2026, 11, 24), [], [], {}, CATALOG)
    assert rep.total.prompts == 0 and rep.total.spend_usd == 0 and rep.routing_share == {}
    assert rep.share_over_time == [] and rep.total.mean_rating is None


def test_report_files_are_written_and_a_rerun_replaces_them(tmp_path):
    from conduit_workers.reports.report_files import CHARTS, write_report

    day = date(2026, 11, 24)
    empty = build_report(day, [], [], {}, CATALOG)
    folder = write_report(empty, tmp_path)
    (folder / "stale.txt").write_text("from an earlier run")
    busy = build_report(
        day,
        [_r("q1", "small", "small"), _r("q2", "big", "big", minutes=5)],
        [],
        {"q1": 1.0},
        CATALOG,
    )
    assert write_report(busy, tmp_path) == folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-11-24"]
    assert not (folder / "stale.txt").exists()
    for name in ("report.md", "report.html", "report.csv", "report.json", *CHARTS):
        assert (folder / name).stat().st_size > 0, name
    csv_rows = (folder / "report.csv").read_text().splitlines()
    assert csv_rows[0].startswith("section,key,tag,submitted_at,prompts")
    # header, total, two models, two providers, one batch, one tag, one user, one key
    assert len(csv_rows) == 1 + 1 + 2 + 2 + 1 + 1 + 1 + 1


def test_budgeted_batches_show_budget_and_over_budget_prompts(tmp_path):
    from dataclasses import replace

    from conduit_workers.domain.report import OVER_BUDGET_KEY
    from conduit_workers.reports.report_files import write_report

    day = date(2026, 11, 24)
    rows = [
        replace(_r("q1", "big", "big", batch="paid"), budget_usd=0.01),
        replace(_r("q2", "small", "big", fallbacks=1, batch="paid"), budget_usd=0.01),
        replace(_r("q3", None, "big", status="over_budget", attempts=0), batch_id="paid"),
        _r("q4", "small", "small", batch="free"),
    ]
    rows[2] = replace(rows[2], budget_usd=0.01)
    rep = build_report(day, rows, [], {}, CATALOG)
    batches = {g.key: g for g in rep.batches}
    paid, free = batches["paid"], batches["free"]
    assert (paid.prompts, paid.ok, paid.over_budget, paid.errors, paid.budget_usd) == (
        3,
        2,
        1,
        0,
        0.01,
    )
    assert paid.spend_usd == pytest.approx(CATALOG.get("big").cost_usd(100, 10) + 110e-6)
    assert (free.over_budget, free.budget_usd) == (0, None)
    assert rep.total.over_budget == 1
    models = {g.key: g for g in rep.models}
    assert models[OVER_BUDGET_KEY].over_budget == 1
    assert {g.key: g.over_budget for g in rep.providers}["-"] == 1
    folder = write_report(rep, tmp_path)
    md = (folder / "report.md").read_text()
    assert "| prompts answered / failed / unroutable / over budget | 3 / 0 / 0 / 1 |" in md
    assert "| paid | 3 | 2 | 0 | 1 |" in md and "$0.0100" in md
    csv_head = (folder / "report.csv").read_text().splitlines()[0]
    assert "over_budget,budget_usd" in csv_head


def test_spend_per_user_and_per_api_key_and_prompts_left_unanswered():
    import dataclasses

    def with_user(r, user, submitted=None):
        return dataclasses.replace(r, user=user, batch_created_at=submitted)

    at = datetime(2026, 11, 24, 7, 30, tzinfo=UTC)
    results = [
        with_user(_r("q1", "small", "small", tag="api:alpha", batch="h1"), "ann", at),
        with_user(_r("q2", "big", "big", tag="api:alpha", batch="h1"), "bob", at),
        with_user(_r("q3", "big", "big", tag="api:beta", batch="h2"), "ann", at),
        with_user(_r("q4", "small", "small", tag=None, batch="h3"), None, at),
    ]
    rep = build_report(
        date(2026, 11, 24),
        results,
        [],
        {},
        CATALOG,
        unanswered=["q8", "q9", "q10"],
        dead_letters=["q9", "q10", "q-other-day"],
    )
    small, big = CATALOG.get("small").cost_usd(100, 10), CATALOG.get("big").cost_usd(100, 10)
    users = {g.key: g.spend_usd for g in rep.users}
    assert users == pytest.approx({"ann": small + big, "bob": big, "(none)": small})
    keys = {g.key: g.spend_usd for g in rep.keys}
    assert keys == pytest.approx({"alpha": small + big, "beta": big, "(no API key)": small})
    assert (rep.unanswered, rep.dead_lettered) == (3, 2)
    # a named batch reads as its tag and submission time; an untagged one keeps its id
    assert rep.batch_label("h1") == "api:alpha (2026-11-24 07:30 UTC)"
    assert rep.batch_label("h3") == "h3"
    js = rep.to_json()
    assert js["unanswered"] == 3 and js["dead_lettered"] == 2
    assert {b["key"]: b["submitted_at"] for b in js["batches"]}["h1"] == at.isoformat()


def test_csv_figures_are_rounded_and_name_users_keys_and_batch_times(tmp_path):
    import csv
    import dataclasses

    from conduit_workers.reports.report_files import write_report

    at = datetime(2026, 11, 24, 7, 30, tzinfo=UTC)
    r = dataclasses.replace(
        _r("q1", "small", "small", tin=333, tout=7, tag="api:alpha"),
        user="ann",
        batch_created_at=at,
    )
    rep = build_report(date(2026, 11, 24), [r], [], {"q1": 2 / 3}, CATALOG, unanswered=["q2"])
    folder = write_report(rep, tmp_path)
    rows = list(csv.DictReader((folder / "report.csv").open()))
    total = next(x for x in rows if x["section"] == "total")
    assert total["spend_usd"] == f"{CATALOG.get('small').cost_usd(333, 7):.6f}" == "0.000340"
    assert total["mean_rating"] == "0.6667"
    assert total["mean_latency_ms"] == "50.0"
    assert {(x["section"], x["key"]) for x in rows} >= {("user", "ann"), ("api_key", "alpha")}
    batch = next(x for x in rows if x["section"] == "batch")
    assert batch["submitted_at"] == "2026-11-24T07:30:00+00:00"
    md = (folder / "report.md").read_text()
    assert "api:alpha (2026-11-24 07:30 UTC)" in md and "## Per API key" in md
    assert "| unanswered (of them dead-lettered) | 1 (0) |" in md


def test_trend_sums_the_stored_days_of_the_window_and_the_day_being_built():
    from conduit_workers.domain.report_trend import DayFigures, build_trend, trend_start

    day = date(2026, 11, 24)

    def d(n_back, spend, ratings=0, mean=None):
        return DayFigures(day - timedelta(days=n_back), 10, spend, 2 * spend, 0.0, ratings, mean)

    stored = [
        d(40, 100.0),  # outside both windows
        d(29, 1.0, 2, 0.5),  # first day of the 30 (October 26): not this month
        d(23, 2.0),  # November 1st
        d(3, 4.0, 1, 1.0),
        d(0, 999.0),  # a stale row of the day itself: the fresh figures replace it
        d(-1, 999.0),  # a later day (a day rebuilt late): not in its trend
    ]
    assert trend_start(day) == day - timedelta(days=29)
    tr = build_trend(day, d(0, 8.0, 1, 0.25), stored)
    p30, mtd = tr.last_30_days, tr.month_to_date
    assert (p30.days, p30.spend_usd, p30.prompts) == (4, 15.0, 40)
    assert (p30.start, p30.end) == (date(2026, 10, 26), day)
    assert p30.savings_usd == 15.0 and p30.savings_share == 0.5
    assert p30.mean_rating == pytest.approx((2 * 0.5 + 1.0 + 0.25) / 4) and p30.ratings == 4
    assert (mtd.days, mtd.spend_usd, mtd.start) == (3, 14.0, date(2026, 11, 1))
    assert [x.day.day for x in tr.daily] == [26, 1, 21, 24]


def test_quality_kept_is_the_days_rating_over_the_references_estimated_quality():
    from conduit_workers.domain.report_trend import PRIOR_WEIGHT, estimate_quality_kept

    q = estimate_quality_kept("big", 0.6, (5, 4.0), prior=0.9)  # five ratings summing to 4.0
    assert q.reference_quality == pytest.approx((PRIOR_WEIGHT * 0.9 + 4.0) / (PRIOR_WEIGHT + 5))
    assert q.kept == pytest.approx(0.6 / q.reference_quality)
    assert estimate_quality_kept("big", 0.6, (4, 3.2), prior=None).kept == pytest.approx(0.75)
    none = estimate_quality_kept("big", 0.6, (0, 0.0), prior=None)
    assert none.reference_quality is None and none.kept is None
