"""The daily cost report: read the day from the history database, compute, write, record.

Used by the ``conduit.reports.daily_cost`` task (scheduled by beat) and ``conduit report``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from conduit_workers.domain.catalog import Catalog
from conduit_workers.domain.report import DailyReport, build_report
from conduit_workers.domain.report_trend import (
    TREND_DAYS,
    DayFigures,
    build_trend,
    estimate_quality_kept,
    trend_start,
)
from conduit_workers.history.history import SqlHistory
from conduit_workers.reports.report_files import write_report
from conduit_workers.reports.report_sql import SqlReports

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportOutcome:
    report: DailyReport
    folder: Path


def yesterday_utc(now: datetime | None = None) -> date:
    return ((now or datetime.now(UTC)) - timedelta(days=1)).date()


def compute_daily_report(
    day: date, history: SqlHistory, catalog: Catalog, dead_letters: Collection[str] = ()
) -> DailyReport:
    """The day's figures, without writing anything. ``dead_letters``: the prompt ids held by
    the dead-letter queue (its letters' chunks), to count the day's dead-lettered prompts."""
    reports = SqlReports(history)
    results, calls, ratings = reports.facts(day)
    report = build_report(
        day,
        results,
        calls,
        ratings,
        catalog,
        unanswered=reports.unanswered(day),
        dead_letters=dead_letters,
        key_budgets=reports.key_budgets(),
    )
    t = report.total
    today = DayFigures(
        day, t.prompts, t.spend_usd, t.reference_cost_usd, t.waste_usd, t.ratings, t.mean_rating
    )
    report.trend = build_trend(day, today, reports.stored_days(trend_start(day), day))
    ref = catalog.get(catalog.reference)
    window = reports.model_ratings(ref.name, day - timedelta(days=TREND_DAYS - 1), day)
    report.quality = estimate_quality_kept(ref.name, t.mean_rating, window, ref.quality_prior)
    return report


def build_daily_report(
    day: date,
    history: SqlHistory,
    catalog: Catalog,
    out_dir: Path,
    *,
    owner: str,
    scheduled: bool = False,
    stale_claim_s: float = 3600,
    dead_letters: Collection[str] = (),
) -> ReportOutcome | None:
    """Build, write and record the report of ``day``; replaces an earlier report of that day.

    ``scheduled``: first claim the day in the history database, and do nothing (return None)
    when it is done already or another run holds it, so that two beats, or a redelivered
    task, build it once.
    """
    reports = SqlReports(history)
    if scheduled and not reports.claim(day, owner, stale_claim_s):
        log.info("daily_cost %s: already built or being built; skipped", day)
        return None
    try:
        report = compute_daily_report(day, history, catalog, dead_letters)
        folder = write_report(report, out_dir)
        reports.save(day, owner, report.summary(), report.to_json(), str(folder))
    except BaseException:
        if scheduled:
            reports.release(day, owner)
        raise
    t = report.total
    log.info(
        "daily_cost %s: %d prompts, spend $%.6f, reference $%.6f, savings $%.6f, "
        "waste $%.6f, written to %s",
        day,
        t.prompts,
        t.spend_usd,
        t.reference_cost_usd,
        t.savings_usd,
        t.waste_usd,
        folder,
    )
    return ReportOutcome(report, folder)


__all__ = ["ReportOutcome", "build_daily_report", "compute_daily_report", "yesterday_utc"]
