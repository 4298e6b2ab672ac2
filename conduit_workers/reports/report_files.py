"""The daily report on disk: ``<out_dir>/<YYYY-MM-DD>/`` with report.md, report.html,
report.csv (one row per model, provider, batch, tag and the total) and three matplotlib charts.

The folder is written beside the old one and swapped in, so a re-run replaces a day whole.
"""

from __future__ import annotations

import csv
import html
import json
import shutil
from pathlib import Path
from typing import Any

from conduit_workers.domain.report import UNROUTABLE, DailyReport, Group

CSV_COLUMNS = (
    "section",
    "key",
    "tag",
    "submitted_at",
    "prompts",
    "ok",
    "errors",
    "unroutable",
    "over_budget",
    "budget_usd",
    "routed",
    "calls",
    "failed_calls",
    "retries",
    "fallbacks",
    "input_tokens",
    "output_tokens",
    "spend_usd",
    "reference_cost_usd",
    "savings_usd",
    "waste_usd",
    "waste_billed_usd",
    "mean_latency_ms",
    "p95_latency_ms",
    "ratings",
    "mean_rating",
)
CHARTS = ("spend_per_model.png", "routing_share.png", "savings.png")


def write_report(report: DailyReport, out_dir: Path) -> Path:
    """Write the day's folder; return it."""
    final = Path(out_dir) / report.day.isoformat()
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _charts(report, tmp)
    (tmp / "report.csv").write_text(_csv(report))
    (tmp / "report.md").write_text(_markdown(report))
    (tmp / "report.html").write_text(_html(report))
    (tmp / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _sections(r: DailyReport) -> list[tuple[str, Group, str | None]]:
    out: list[tuple[str, Group, str | None]] = [("total", r.total, None)]
    out += [("model", g, None) for g in r.models]
    out += [("provider", g, None) for g in r.providers]
    out += [("batch", g, r.batch_tags.get(g.key)) for g in r.batches]
    out += [("tag", g, None) for g in r.tags]
    out += [("user", g, None) for g in r.users]
    out += [("api_key", g, None) for g in r.keys]
    return out


def _csv(r: DailyReport) -> str:
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for section, g, tag in _sections(r):
        at = r.batch_times.get(g.key) if section == "batch" else None
        w.writerow(
            {
                "section": section,
                "tag": tag,
                "submitted_at": at.isoformat(timespec="seconds") if at else "",
                **{k: _rounded(k, v) for k, v in g.row().items()},
            }
        )
    return buf.getvalue()


def _rounded(column: str, v: Any) -> Any:
    """A CSV cell: USD to 6 decimals, ratings and shares to 4, milliseconds to 1."""
    if v is None:
        return ""
    if not isinstance(v, float):
        return v
    if column.endswith("_usd"):
        return f"{v:.6f}"
    if column.endswith("_ms"):
        return f"{v:.1f}"
    return f"{v:.4f}"


# -- text ----------------------------------------------------------------------------------


def _usd(v: float) -> str:
    return f"${v:,.4f}" if abs(v) < 100 else f"${v:,.2f}"


def _opt(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def _headline(r: DailyReport) -> list[tuple[str, str]]:
    t = r.total
    pct = 100 * t.savings_usd / t.reference_cost_usd if t.reference_cost_usd else 0.0
    return [
        (
            "prompts answered / failed / unroutable / over budget",
            f"{t.ok} / {t.errors} / {t.unroutable} / {t.over_budget}",
        ),
        ("spend", _usd(t.spend_usd)),
        (f"always {r.reference_model}", _usd(t.reference_cost_usd)),
        ("savings", f"{_usd(t.savings_usd)} ({pct:.1f}%)"),
        ("calls (failed)", f"{t.calls} ({t.failed_calls})"),
        ("retries / fallbacks", f"{t.retries} / {t.fallbacks}"),
        (
            "waste: failed attempts priced as answers (billed)",
            f"{_usd(t.waste_usd)} ({_usd(t.waste_billed_usd)})",
        ),
        ("unanswered (of them dead-lettered)", f"{r.unanswered} ({r.dead_lettered})"),
        ("tokens in / out", f"{t.input_tokens:,} / {t.output_tokens:,}"),
        ("mean explicit rating", f"{_opt(t.mean_rating, '.3f')} ({t.ratings} rated)"),
        ("quality kept against " + r.reference_model + " (estimated)", _kept(r)),
        ("catalog price version", r.catalog_version),
        ("spend at today's catalog prices", _usd(r.repriced_spend_usd)),
    ]


def _kept(r: DailyReport) -> str:
    q = r.quality
    if q is None or q.reference_quality is None:
        return "– (the reference has no rating and no quality prior)"
    basis = f"reference ≈ {q.reference_quality:.3f} from {q.reference_ratings} ratings"
    if q.prior is not None:
        basis += f" and prior {q.prior:.2f}"
    kept = "–" if q.kept is None else f"{100 * q.kept:.1f}%"
    return f"{kept} ({basis})"


def _trend_lines(r: DailyReport) -> list[list[str]]:
    """Rows of the trend table: header, then one per period."""
    if r.trend is None:
        return []
    out = [["period", "days reported", "prompts", "spend", "reference", "savings", "rating"]]
    for p in (r.trend.last_30_days, r.trend.month_to_date):
        share = "" if p.savings_share is None else f" ({100 * p.savings_share:.1f}%)"
        out.append(
            [
                f"{p.label} ({p.start.isoformat()} – {p.end.isoformat()})",
                str(p.days),
                f"{p.prompts:,}",
                _usd(p.spend_usd),
                _usd(p.reference_cost_usd),
                _usd(p.savings_usd) + share,
                _opt(p.mean_rating, ".3f"),
            ]
        )
    return out


_MODEL_COLS = (
    ("model", "key"),
    ("routed", "share"),
    ("answered", "ok"),
    ("failed", "errors"),
    ("calls", "calls"),
    ("failed calls", "failed_calls"),
    ("retries", "retries"),
    ("in tok", "input_tokens"),
    ("out tok", "output_tokens"),
    ("spend", "spend_usd"),
    ("reference", "reference_cost_usd"),
    ("savings", "savings_usd"),
    ("waste", "waste_usd"),
    ("mean ms", "mean_latency_ms"),
    ("p95 ms", "p95_latency_ms"),
    ("rating", "mean_rating"),
)
_GROUP_COLS = (
    ("key", "key"),
    ("prompts", "prompts"),
    ("answered", "ok"),
    ("failed", "errors"),
    ("calls", "calls"),
    ("in tok", "input_tokens"),
    ("out tok", "output_tokens"),
    ("spend", "spend_usd"),
    ("reference", "reference_cost_usd"),
    ("savings", "savings_usd"),
    ("waste", "waste_usd"),
    ("rating", "mean_rating"),
)


def _cell(r: DailyReport, g: Group, field: str) -> str:
    if field == "batch":
        return r.batch_label(g.key)
    if field == "share":
        return f"{100 * r.routing_share.get(g.key, 0.0):.1f}%"
    v = g.row()[field]
    if field == "budget_usd":
        return "-" if v is None else _usd(v)
    if field.endswith("_usd"):
        return _usd(v)
    if field.endswith("_ms"):
        return _opt(v, ".0f")
    if field == "mean_rating":
        return _opt(v, ".3f")
    return f"{v:,}" if isinstance(v, int) else str(v)


_BATCH_COLS = (
    ("batch", "batch"),
    *_GROUP_COLS[1:4],
    ("over budget", "over_budget"),
    *_GROUP_COLS[4:8],
    ("budget", "budget_usd"),
    *_GROUP_COLS[8:],
)


_KEY_COLS = (*_GROUP_COLS[:4], ("daily budget", "budget_usd"), *_GROUP_COLS[4:])


def _tables(r: DailyReport) -> list[tuple[str, tuple[tuple[str, str], ...], list[Group]]]:
    return [
        ("Per model", _MODEL_COLS, r.models),
        ("Per provider", _GROUP_COLS, r.providers),
        ("Per batch", _BATCH_COLS, r.batches),
        ("Per tag", _GROUP_COLS, r.tags),
        ("Per user", (("user", "key"), *_GROUP_COLS[1:]), r.users),
        ("Per API key", (("API key", "key"), *_KEY_COLS[1:]), r.keys),
    ]


def _markdown(r: DailyReport) -> str:
    lines = [f"# Conduit cost report, {r.day.isoformat()} (UTC)", ""]
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _headline(r)]
    lines += [
        "",
        "![spend per model](spend_per_model.png)",
        "",
        "![routing share over the day](routing_share.png)",
        "",
        "![savings](savings.png)",
        "",
    ]
    trend = _trend_lines(r)
    if trend:
        lines += ["## Trend", "", "| " + " | ".join(trend[0]) + " |", "|" + "---|" * 7]
        lines += ["| " + " | ".join(row) + " |" for row in trend[1:]]
        lines.append("")
    for title, cols, groups in _tables(r):
        lines += [
            f"## {title}",
            "",
            "| " + " | ".join(c for c, _ in cols) + " |",
            "|" + "---|" * len(cols),
        ]
        lines += ["| " + " | ".join(_cell(r, g, f) for _, f in cols) + " |" for g in groups]
        lines.append("")
    lines += ["Definitions: docs/reports.md. Rows: report.csv.", ""]
    return "\n".join(lines)


def _html(r: DailyReport) -> str:
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Conduit cost report {r.day.isoformat()}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:48%;margin:.5em}</style>",
        "</head><body>",
        f"<h1>Conduit cost report, {r.day.isoformat()} (UTC)</h1><table>",
    ]
    parts += [f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in _headline(r)]
    parts.append("</table><div>")
    parts += [f"<img src='{c}' alt='{c[:-4].replace('_', ' ')}'>" for c in CHARTS]
    parts.append("</div>")
    trend = _trend_lines(r)
    if trend:
        parts.append("<h2>Trend</h2><table>")
        parts.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in trend[0]) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in trend[1:]]
        parts.append("</table>")
    for title, cols, groups in _tables(r):
        parts.append(
            f"<h2>{e(title)}</h2><table><tr>"
            + "".join(f"<th>{e(c)}</th>" for c, _ in cols)
            + "</tr>"
        )
        parts += [
            "<tr>" + "".join(f"<td>{e(_cell(r, g, f))}</td>" for _, f in cols) + "</tr>"
            for g in groups
        ]
        parts.append("</table>")
    parts.append("<p>Rows: <a href='report.csv'>report.csv</a>.</p></body></html>\n")
    return "\n".join(parts)


# -- charts --------------------------------------------------------------------------------


def _short(name: str) -> str:
    return name.split("/")[-1]


def _charts(r: DailyReport, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = [g for g in r.models if (g.prompts or g.calls) and g.key != UNROUTABLE]
    colors = {g.key: plt.cm.tab10(i % 10) for i, g in enumerate(models)}

    fig, ax = plt.subplots(figsize=(7, 3.6))
    names = [_short(g.key) for g in models]
    bars = ax.barh(names, [g.spend_usd for g in models], color=[colors[g.key] for g in models])
    ax.bar_label(
        bars,
        labels=[f"{_usd(g.spend_usd)}  ({g.ok} answers)" for g in models],
        padding=3,
        fontsize=8,
    )
    ax.invert_yaxis()
    if not models:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no model was called this day", ha="center", transform=ax.transAxes)
    ax.set_xlabel("spend (USD)")
    ax.set_title(f"Spend per model, {r.day.isoformat()}")
    ax.margins(x=0.5)
    fig.tight_layout()
    fig.savefig(folder / "spend_per_model.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    if r.share_over_time:
        # One stacked bar per time bin that saw traffic: honest for a day of steady traffic
        # and for one short batch alike (no area drawn across hours without prompts).
        keys = sorted({m for _, c in r.share_over_time for m in c})
        totals = [sum(c.values()) for _, c in r.share_over_time]
        bottom = [0.0] * len(totals)
        xs = range(len(totals))
        for k in keys:
            vals = [
                100 * c.get(k, 0) / n for (_, c), n in zip(r.share_over_time, totals, strict=True)
            ]
            ax.bar(xs, vals, bottom=bottom, width=0.9, label=_short(k), color=colors.get(k, "grey"))
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        times = [ts for ts, _ in r.share_over_time]
        span = (times[-1] - times[0]).total_seconds()
        fmt = "%H:%M" if span >= 3600 else "%H:%M:%S"
        step = max(1, len(times) // 6)
        ax.set_xticks(list(xs)[::step], [ts.strftime(fmt) for ts in times[::step]])
        ax.set_xlabel(f"time bin (UTC; prompts per bin {min(totals)}–{max(totals)})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    else:
        ax.text(0.5, 0.5, "no routed prompts this day", ha="center", transform=ax.transAxes)
        ax.set_xticks([])
    ax.set_ylim(0, 100)
    ax.set_ylabel("% of routed prompts")
    ax.set_title("Routing share over the day (UTC)")
    fig.tight_layout()
    fig.savefig(folder / "routing_share.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.6))
    t = r.total
    labels = ["Conduit", f"always {_short(r.reference_model)}"]
    bars = ax.bar(labels, [t.spend_usd, t.reference_cost_usd], color=["tab:green", "tab:grey"])
    pct = 100 * t.savings_usd / t.reference_cost_usd if t.reference_cost_usd else 0.0
    ax.bar_label(bars, labels=[_usd(t.spend_usd), _usd(t.reference_cost_usd)], padding=3)
    ax.set_ylabel("USD")
    ax.set_title(f"Savings: {_usd(t.savings_usd)} ({pct:.1f}%) on {t.ok} answers")
    ax.margins(y=0.15)
    if not t.ok:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no answers this day", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(folder / "savings.png", dpi=100)
    plt.close(fig)


__all__ = ["write_report", "CSV_COLUMNS", "CHARTS"]
