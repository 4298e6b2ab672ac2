"""200 real prompts through producer → router → executor → feedback, with real workers."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import sqlalchemy as sa

from conduit_workers.domain.catalog import load_catalog
from conduit_workers.history import history_schema as t
from tests.conftest import SAMPLE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
N = 200


def _sample(n: int = N) -> list[dict]:
    return [json.loads(line) for line in SAMPLE.read_text().splitlines()[:n]]


def _wait_feedback_applied(system, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while system.client.history.unapplied_feedback_ids():
        assert time.monotonic() < deadline, "feedback not applied in time"
        time.sleep(0.3)


def test_batch_is_answered_once_billed_by_catalog_and_learned_from(system):
    sample = _sample()
    by_id = {r["id"]: r for r in sample}
    client = system.client
    sub = client.submit([{"id": r["id"], "prompt": r["prompt"]} for r in sample], tag="e2e")
    assert (sub.accepted, sub.new, sub.existing, sub.errors) == (N, N, 0, [])
    rows = client.wait(sub.batch_id, timeout_s=300)

    # every prompt has exactly one result, all answered
    assert len(rows) == N and all(r["status"] == "ok" for r in rows)
    engine = client.history.engine
    with engine.connect() as conn:
        per_query = conn.execute(
            sa.select(t.results.c.query_id, sa.func.count()).group_by(t.results.c.query_id)
        ).all()
    assert len(per_query) == N and {c for _, c in per_query} == {1}

    # tokens are the recorded ones, cost is the catalog's price for them
    catalog = load_catalog(system.settings.catalog.path, {})
    for r in rows:
        rec = by_id[r["external_id"]]["models"][r["model"]]
        assert (r["input_tokens"], r["output_tokens"]) == (
            rec["input_tokens"],
            rec["output_tokens"],
        )
        assert r["cost_usd"] == pytest.approx(
            catalog.get(r["model"]).cost_usd(rec["input_tokens"], rec["output_tokens"]), rel=1e-12
        )

    # explicit ratings: the measured correctness of the model that answered
    ratings = [
        (r["external_id"], by_id[r["external_id"]]["models"][r["model"]]["quality"]) for r in rows
    ]
    out = client.feedback(ratings)
    assert (out.applied, out.duplicates, out.errors) == (N, 0, [])
    assert client.feedback(ratings[:5]).duplicates == 5  # the same ratings again count once
    _wait_feedback_applied(system)

    # the posteriors moved by exactly the feedback recorded in the history database
    with engine.connect() as conn:
        fb = conn.execute(
            sa.select(t.feedback, t.decisions.c.features).select_from(
                t.feedback.join(t.decisions, t.decisions.c.query_id == t.feedback.c.query_id)
            )
        ).all()
    assert len(fb) == 2 * N  # one implicit event per call, one explicit rating per prompt
    read = system.store.read(list(catalog.names), system.settings.context_dim)
    for model in catalog.names:
        mine = [f for f in fb if f.model == model]
        _, stats = read[model]
        c = stats.counters
        assert c["calls"] == sum(f.is_call for f in mine)
        assert c["n"] == pytest.approx(sum(f.weight for f in mine), abs=1e-9)
        assert c["r"] == pytest.approx(sum(f.weight * f.reward for f in mine), abs=1e-9)
        assert c["cost_usd"] == pytest.approx(
            sum(r["cost_usd"] for r in rows if r["model"] == model), rel=1e-9
        )
        xx = sum(
            (f.weight * np.outer(f.features, f.features) for f in mine), np.zeros_like(stats.xx)
        )
        np.testing.assert_allclose(stats.xx, xx, atol=1e-9)
    assert sum(read[m][1].counters["calls"] for m in catalog.names) == N

    # the same batch again answers nothing twice
    again = client.submit([{"id": r["id"], "prompt": r["prompt"]} for r in sample], tag="e2e")
    assert (again.new, again.existing, again.enqueued) == (0, N, 0)
    assert len(client.wait(again.batch_id, timeout_s=30)) == N
    with engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.results)) == N


def test_cli_submit_reports_bad_lines_and_answers_the_rest(system, tmp_path):
    good = _sample(N + 10)[N:]
    lines = [json.dumps({"id": r["id"], "prompt": r["prompt"]}) for r in good]
    lines.insert(3, "{broken json")
    lines.insert(6, json.dumps({"id": "empty", "prompt": ""}))
    src = tmp_path / "batch.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "producers.cli",
            "submit",
            str(src),
            "--wait",
            "--out",
            str(out),
            "--tag",
            "cli",
            "--timeout",
            "240",
        ],
        env=system.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "line 4: invalid JSON" in proc.stderr
    assert "line 7: 'prompt' is empty" in proc.stderr
    assert "10 prompts accepted" in proc.stderr and "2 rejected" in proc.stderr
    results = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(results) == 10 and all(r["status"] == "ok" for r in results)
    for r in good:  # prompt text never reaches the worker log above DEBUG
        assert r["prompt"] not in (system.workdir / "worker.log").read_text()
