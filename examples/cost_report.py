"""The cost report of one day, from the history database (what `conduit report` and the
nightly `conduit.reports.daily_cost` task write).

    python examples/cost_report.py [YYYY-MM-DD] [OUT_DIR]      # default: today (UTC), var/reports
"""

import sys
from datetime import UTC, date, datetime
from pathlib import Path

from conduit_workers.reports.reporting import build_daily_report, compute_daily_report
from producers.api import ConduitClient


def main(day: date, out_dir: Path) -> None:
    client = ConduitClient()
    try:
        report = compute_daily_report(day, client.history, client.catalog)  # figures only
        t = report.total
        print(
            f"{day}: {t.prompts} prompts, spend ${t.spend_usd:.6f}, "
            f"always {report.reference_model} ${t.reference_cost_usd:.6f}"
        )
        for g in report.models:
            print(
                f"  {g.key:40} {g.ok:>5} answers  ${g.spend_usd:.6f}  "
                f"share {report.routing_share.get(g.key, 0):.0%}"
            )
        # Files and the day's row in the history database (replaces an earlier run's).
        out = build_daily_report(day, client.history, client.catalog, out_dir, owner="example")
        assert out is not None
        print(f"written to {out.folder}")
    finally:
        client.close()


if __name__ == "__main__":
    main(
        date.fromisoformat(sys.argv[1]) if len(sys.argv) > 1 else datetime.now(UTC).date(),
        Path(sys.argv[2]) if len(sys.argv) > 2 else Path("var/reports"),
    )
