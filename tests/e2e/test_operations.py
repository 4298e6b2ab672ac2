"""Day two on a running system: a real batch, then the cost report (sent as beat sends it, and
by hand), `conduit status`, Flower with basic auth, and the Prometheus exporter, all checked
against the history database."""

from __future__ import annotations

import base64
import csv
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from conduit_workers import names
from conduit_workers.domain.catalog import load_catalog
from conduit_workers.domain.constraints import Constraints
from conduit_workers.history import history_schema as t
from conduit_workers.reports.report_sql import SqlReports, day_bounds
from producers.local import free_port, start_worker, wait_worker_ready
from tests.conftest import SAMPLE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
N = 120
AUTH = "ops:s3cret"


def _get(url: str, auth: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def _wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _get(url)
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def day_of_traffic(system):
    """Flower and a reports worker, then a real batch (with an unroutable prompt and a second
    tag), answered, half of it rated, its feedback applied."""
    workdir = system.workdir
    env = dict(
        system.env,
        CONDUIT_REPORTS__OUT_DIR=str(workdir / "reports"),
        CONDUIT_FLOWER__BASIC_AUTH=AUTH,
        CONDUIT_FLOWER__PORT=str(free_port()),
    )
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "conduit_workers", "flower"],
        env=env,
        stdout=open(workdir / "flower.log", "wb"),
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    reports = start_worker(["reports"], env, workdir / "reports.log", concurrency=1, name="reports")
    try:
        flower_url = f"http://127.0.0.1:{env['CONDUIT_FLOWER__PORT']}"
        _wait_http(flower_url + "/healthcheck")
        wait_worker_ready(reports, timeout_s=120)
        sample = [json.loads(x) for x in SAMPLE.read_text().splitlines()[-N:]]
        client = system.client
        items = [{"id": r["id"], "prompt": r["prompt"]} for r in sample]
        items.append(
            {"id": "too-cheap", "prompt": "Name a prime.", "constraints": {"max_cost_usd": 1e-12}}
        )
        # Routed by λ_cost: under the default quality floor a first batch with no ratings yet
        # goes to the reference model alone, and the report would show no savings to check.
        by_cost = Constraints(lambda_cost=0.1)
        a = client.submit(items[: N // 2], tag="nightly", constraints=by_cost)
        b = client.submit(items[N // 2 :], tag="adhoc", constraints=by_cost)
        rows = client.wait(a.batch_id, timeout_s=300) + client.wait(b.batch_id, timeout_s=300)
        labels = {r["id"]: r["models"] for r in sample}
        rated = [
            (r["external_id"], labels[r["external_id"]][r["model"]]["quality"])
            for r in rows[::2]
            if r["status"] == "ok"
        ]
        assert client.feedback(rated).applied == len(rated)
        deadline = time.monotonic() + 120
        while client.history.unapplied_feedback_ids():
            assert time.monotonic() < deadline
            time.sleep(0.3)
        yield {
            "env": env,
            "rows": rows,
            "flower": flower_url,
            "sample": sample,
            "out_dir": workdir / "reports",
        }
    finally:
        flower.terminate()
        flower.wait(15)
        reports.stop()


def _today(system) -> datetime:
    with system.client.history.engine.connect() as conn:
        lo, hi = conn.execute(
            sa.select(sa.func.min(t.results.c.created_at), sa.func.max(t.results.c.created_at))
        ).one()
    if lo.date() != hi.date():
        pytest.skip("the batch straddled midnight UTC")
    return hi.date()


def test_the_report_reconciles_with_the_history_database(system, day_of_traffic):
    day = _today(system)
    client = system.client
    # Two beats sending the nightly task for the same day build it once.
    for _ in range(2):
        client.app.send_task(names.DAILY_COST, kwargs={"day": day.isoformat()}, queue=names.REPORTS)
    reports = SqlReports(client.history)
    deadline = time.monotonic() + 120
    while (reports.row(day) or {}).get("status") != "done":
        assert time.monotonic() < deadline, "the reports worker built nothing"
        time.sleep(0.3)
    time.sleep(2)  # let the second message arrive and be skipped
    log = (system.workdir / "reports.log").read_text()
    assert log.count("already built or being built; skipped") == 1, log[-3000:]
    assert reports.count_rows() == 1

    # By hand, the same day again: replaced, not doubled.
    proc = subprocess.run(
        [sys.executable, "-m", "producers.cli", "report", "--date", day.isoformat()],
        env=day_of_traffic["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert reports.count_rows() == 1
    row = reports.row(day)
    assert row["claimed_by"].startswith("cli:")
    folder = day_of_traffic["out_dir"] / day.isoformat()
    assert row["out_dir"] == str(folder)
    figures = row["figures"]

    # Every figure, recomputed here from the tables with SQL.
    catalog = load_catalog(system.settings.catalog.path, {})
    ref = catalog.get(catalog.reference)
    start, end = day_bounds(day)
    r, f, d, bi, b = t.results, t.feedback, t.decisions, t.batch_items, t.batches
    in_day = sa.and_(r.c.created_at >= start, r.c.created_at < end)
    with client.history.engine.connect() as conn:
        res = conn.execute(sa.select(r).where(in_day)).all()
        by_model = {
            m: (n, tin, tout, usd)
            for m, n, tin, tout, usd in conn.execute(
                sa.select(
                    r.c.model,
                    sa.func.count(),
                    sa.func.sum(r.c.input_tokens),
                    sa.func.sum(r.c.output_tokens),
                    sa.func.sum(r.c.cost_usd),
                )
                .where(in_day)
                .group_by(r.c.model)
            )
        }
        by_tag = dict(
            conn.execute(
                sa.select(b.c.tag, sa.func.sum(r.c.cost_usd))
                .select_from(
                    r.join(bi, bi.c.query_id == r.c.query_id).join(b, b.c.id == bi.c.batch_id)
                )
                .where(in_day)
                .group_by(b.c.tag)
            ).all()
        )
        calls, failed = conn.execute(
            sa.select(sa.func.count(), sa.func.sum(sa.cast(f.c.error, sa.Integer)))
            .select_from(f.join(r, r.c.query_id == f.c.query_id))
            .where(in_day, f.c.is_call.is_(True))
        ).one()
        mean_rating, n_rated = conn.execute(
            sa.select(sa.func.avg(f.c.reward), sa.func.count())
            .select_from(f.join(r, r.c.query_id == f.c.query_id))
            .where(in_day, f.c.kind == "explicit")
        ).one()
        routed = dict(
            conn.execute(
                sa.select(d.c.model, sa.func.count())
                .select_from(r.join(d, d.c.query_id == r.c.query_id))
                .where(in_day, d.c.model.is_not(None))
                .group_by(d.c.model)
            ).all()
        )

    total = figures["total"]
    assert total["prompts"] == len(res) == N + 1
    assert (total["ok"], total["unroutable"]) == (sum(x.status == "ok" for x in res), 1)
    assert total["input_tokens"] == sum(x.input_tokens for x in res)
    assert total["output_tokens"] == sum(x.output_tokens for x in res)
    assert total["spend_usd"] == pytest.approx(sum(x.cost_usd for x in res), rel=1e-12)
    assert (total["calls"], total["failed_calls"]) == (calls, failed or 0)
    assert total["retries"] == sum(
        max(0, x.attempts - x.fallbacks - 1) for x in res if x.status != "unroutable"
    )
    assert total["reference_cost_usd"] == pytest.approx(
        sum(ref.cost_usd(x.input_tokens, x.output_tokens) for x in res if x.status == "ok"),
        rel=1e-12,
    )
    assert total["savings_usd"] == pytest.approx(total["reference_cost_usd"] - total["spend_usd"])
    assert total["savings_usd"] > 0
    assert (total["ratings"], total["mean_rating"]) == (n_rated, pytest.approx(float(mean_rating)))
    models = {g["key"]: g for g in figures["models"]}
    for m, (n, tin, tout, usd) in by_model.items():
        g = models[m or "(unroutable)"]
        assert (g["prompts"], g["input_tokens"], g["output_tokens"]) == (n, tin, tout)
        assert g["spend_usd"] == pytest.approx(usd, rel=1e-12)
    assert {k: v for k, v in figures["routing_share"].items()} == pytest.approx(
        {m: n / sum(routed.values()) for m, n in routed.items()}
    )
    tags = {g["key"]: g["spend_usd"] for g in figures["tags"]}
    assert tags == pytest.approx(by_tag)
    assert figures["catalog_version"] == row["catalog_version"] == catalog.version
    assert row["spend_usd"] == total["spend_usd"] and row["prompts"] == total["prompts"]

    # The files: the CSV's rows say the same, the charts exist.
    rows = {(x["section"], x["key"]): x for x in csv.DictReader((folder / "report.csv").open())}
    assert float(rows[("total", "total")]["spend_usd"]) == pytest.approx(
        total["spend_usd"], abs=5e-7
    )
    assert int(rows[("tag", "nightly")]["prompts"]) == N // 2
    for name in (
        "report.md",
        "report.html",
        "spend_per_model.png",
        "routing_share.png",
        "savings.png",
    ):
        assert (folder / name).stat().st_size > 1000, name
    html = (folder / "report.html").read_text()
    assert "routing_share.png" in html and catalog.version in html
    for rec in day_of_traffic["sample"][:20]:  # no prompt text in a report
        assert rec["prompt"] not in html


def test_status_shows_workers_queues_posteriors_and_spend(system, day_of_traffic):
    proc = subprocess.run(
        [sys.executable, "-m", "producers.cli", "status", "--json", "--timeout", "2"],
        env=day_of_traffic["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads(proc.stdout)
    assert s["errors"] == []
    queues = sorted(q for qs in s["workers"].values() for q in qs)
    assert {"route", "execute", "feedback", "reports"} <= set(queues)
    assert set(s["queues"]) == {"route", "execute", "feedback", "reports"}
    catalog = load_catalog(system.settings.catalog.path, {})
    read = system.store.read(list(catalog.names), system.settings.context_dim)
    for m in s["models"]:
        assert m["pulls"] == read[m["model"]][1].counters["calls"]
        assert 0 <= m["quality_sd"] < 1 and m["expected_cost_usd"] > 0
    with system.client.history.engine.connect() as conn:
        spent = conn.scalar(
            sa.select(sa.func.sum(t.results.c.cost_usd)).where(
                t.results.c.created_at >= day_bounds(datetime.now(UTC).date())[0]
            )
        )
    assert s["spend_today_usd"] == pytest.approx(spent or 0.0, rel=1e-9)


def test_flower_needs_the_configured_login_and_shows_task_names_and_ids_only(day_of_traffic):
    url = day_of_traffic["flower"]
    assert _get(url + "/api/workers")[0] == 401
    status, body = _get(url + "/api/tasks?limit=1000", AUTH)
    assert status == 200
    tasks = json.loads(body)
    task_names = {t_["name"] for t_ in tasks.values()}
    assert {names.ROUTE_BATCH, names.EXECUTE_BATCH} <= task_names
    for rec in day_of_traffic["sample"]:
        assert rec["prompt"][:60] not in body
    assert _get(url + "/metrics")[0] == 200


def test_the_prometheus_exporter_counts_what_the_history_holds(system, day_of_traffic):
    port = free_port()
    env = dict(day_of_traffic["env"], CONDUIT_METRICS__PORT=str(port))
    proc = subprocess.Popen(
        [sys.executable, "-m", "producers.cli", "metrics"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/metrics")
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        proc.terminate()
        proc.wait(10)
    assert status == 200
    with system.client.history.engine.connect() as conn:
        spent = conn.scalar(sa.select(sa.func.sum(t.results.c.cost_usd)))
        decided = conn.scalar(sa.select(sa.func.count()).select_from(t.decisions))
    samples = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    cost = sum(float(v) for k, v in samples if k.startswith("conduit_llm_cost_usd_total"))
    assert cost == pytest.approx(spent, rel=1e-9)
    assert (
        sum(float(v) for k, v in samples if k.startswith("conduit_routing_decisions_total"))
        == decided
    )
    for name in (
        "conduit_answers_total",
        "conduit_llm_calls_total",
        "conduit_llm_errors_total",
        "conduit_llm_tokens_total",
        "conduit_llm_latency_seconds_total",
        "conduit_queue_depth",
        "conduit_posterior_quality",
    ):
        assert any(k.startswith(name) for k, _ in samples), name


def test_the_service_backed_examples_run(system, day_of_traffic, tmp_path):
    root = SAMPLE.parents[2]
    for args in (
        ["batch_job.py", "10"],
        ["cost_report.py", _today(system).isoformat(), str(tmp_path)],
    ):
        proc = subprocess.run(
            [sys.executable, str(root / "examples" / args[0]), *args[1:]],
            cwd=root,
            env=day_of_traffic["env"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / _today(system).isoformat() / "report.html").exists()
