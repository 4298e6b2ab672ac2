"""Reports role: the nightly cost report, sent by beat (one instance) to queue ``reports``."""

from __future__ import annotations

import logging
from datetime import date

from conduit_workers.celery_app import app
from conduit_workers.infra.runtime import runtime
from conduit_workers.names import DAILY_COST
from conduit_workers.reports.reporting import build_daily_report, yesterday_utc

log = logging.getLogger(__name__)


@app.task(name=DAILY_COST, bind=True, max_retries=10, retry_backoff=10, retry_backoff_max=600)
def daily_cost(self, day: str | None = None, force: bool = False) -> str | None:  # type: ignore[no-untyped-def]
    """Build the cost report of one UTC day (default: yesterday) into ``reports.out_dir``.

    Queue ``reports``. Payload: an ISO date or nothing; ``force``. Idempotent: without
    ``force`` the day is claimed by a row of ``daily_reports`` first, so a second beat or a
    redelivered message builds nothing twice; with ``force`` the day's report is replaced.
    Retries with backoff while the history database is unavailable. Returns the folder.
    """
    rt = runtime()
    the_day = date.fromisoformat(day) if day else yesterday_utc()
    out = build_daily_report(
        the_day,
        rt.history,
        rt.catalog,
        rt.settings.reports.out_dir,
        owner=str(self.request.id),
        scheduled=not force,
        stale_claim_s=rt.settings.reports.stale_claim_s,
        dead_letters=rt.dead_letters.query_ids(),
    )
    return str(out.folder) if out else None


__all__ = ["daily_cost"]
