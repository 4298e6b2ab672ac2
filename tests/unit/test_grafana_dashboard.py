"""ops/grafana-dashboard.json is built on what the exporter exports: every metric a panel
queries is one that producers/metrics.py defines (with Prometheus's suffixes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_panel_queries_exported_metrics() -> None:
    dash = json.loads((ROOT / "ops" / "grafana-dashboard.json").read_text())
    exported = set(re.findall(r'"(conduit_[a-z_]+)"', (ROOT / "producers/metrics.py").read_text()))
    assert {"conduit_llm_attempts", "conduit_llm_call_seconds"} <= exported
    used = set()
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bconduit_[a-z_]+", target["expr"]))
    assert used
    for name in used:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert base in exported, name
    alerts = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    assert "conduit_llm_attempt_errors_total" in alerts and "histogram_quantile" in alerts
    assert "conduit_end_to_end_seconds_bucket" in alerts  # what users wait, queueing included
