"""A quality floor and a budget given to `conduit submit` or the Python API reach the batch:
stored with it in the history database, read back by the router and the executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from conduit_workers.domain.budget import key_ledger, utc_day
from conduit_workers.domain.constraints import Constraints, parse_constraints
from conduit_workers.errors import InputError
from conduit_workers.history import history_schema as t
from conduit_workers.settings import DatabaseSettings, RedisSettings, Settings
from producers.api import ConduitClient
from tests.conftest import ROOT, TEST_PREFIX

pytestmark = pytest.mark.integration
ITEMS = [
    {"id": "a", "prompt": "first prompt"},
    {"id": "b", "prompt": "second prompt", "constraints": {"quality_floor": 0.8}},
]


@pytest.fixture
def client(redis_url: str, pg_url: str):  # type: ignore[no-untyped-def]
    settings = Settings(
        redis=RedisSettings(url=redis_url, key_prefix=TEST_PREFIX),
        database=DatabaseSettings(url=pg_url, retry_for_s=1),
    )
    c = ConduitClient(settings)
    yield c
    c.close()


def _batch(client: ConduitClient, batch_id: str) -> tuple[dict[str, object], float | None]:
    with client.history.engine.connect() as conn:
        row = conn.execute(
            sa.select(t.batches.c.constraints, t.batches.c.budget_usd).where(
                t.batches.c.id == batch_id
            )
        ).one()
    return row[0], row[1]


def _router_constraints(client: ConduitClient, batch_id: str) -> dict[str, Constraints]:
    ids = client.history.query_ids_by_external(batch_id)
    rows = client.history.load_queries(list(ids.values()))
    by_id = {v: k for k, v in ids.items()}
    return {
        by_id[r.id]: parse_constraints(r.constraints).merged_over(
            parse_constraints(r.batch_constraints)
        )
        for r in rows
    }


def test_python_api_stores_floor_and_budget_with_the_batch(client: ConduitClient) -> None:
    sub = client.submit(
        ITEMS, constraints=Constraints(lambda_cost=0.3), quality_floor=0.95, budget_usd=20
    )
    constraints, budget = _batch(client, sub.batch_id)
    assert constraints == {"lambda_cost": 0.3, "quality_floor": 0.95}
    assert budget == 20.0
    seen = _router_constraints(client, sub.batch_id)
    assert seen["a"].quality_floor == 0.95  # the batch's floor
    assert seen["b"].quality_floor == 0.8  # the prompt's own floor wins
    qids = list(client.history.query_ids_by_external(sub.batch_id).values())
    assert client.history.batch_budgets(qids) == {q: (sub.batch_id, 20.0) for q in qids}


def test_a_batch_without_budget_has_none(client: ConduitClient) -> None:
    sub = client.submit(ITEMS)
    assert _batch(client, sub.batch_id) == ({}, None)
    qids = list(client.history.query_ids_by_external(sub.batch_id).values())
    assert client.history.batch_budgets(qids) == {}


def test_a_prompt_in_two_budgeted_batches_is_paid_by_the_first(client: ConduitClient) -> None:
    first = client.submit(ITEMS[:1], budget_usd=1)
    client.submit(ITEMS, budget_usd=5)
    qid = client.history.query_ids_by_external(first.batch_id)["a"]
    assert client.history.batch_budgets([qid]) == {qid: (first.batch_id, 1.0)}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"budget_usd": 0}, "budget_usd: a budget must be a finite number of USD > 0, got 0"),
        ({"budget_usd": float("inf")}, "finite number"),
        ({"quality_floor": 1.2}, "quality_floor must be in [0, 1], got 1.2"),
        ({"quality_floor": -0.1}, "quality_floor must be a finite number >= 0"),
    ],
)
def test_bad_values_are_refused_and_nothing_is_recorded(
    client: ConduitClient, kwargs: dict[str, float], message: str
) -> None:
    with pytest.raises(InputError) as info:
        client.submit(ITEMS, **kwargs)
    assert message in str(info.value)
    with client.history.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.batches)) == 0


def test_a_batch_id_of_a_keys_ledger_is_refused(client: ConduitClient) -> None:
    """A budgeted batch's ledger is known by the batch's id: one named like an API key's daily
    ledger would spend from the key's budget (and the key's calls from the batch's)."""
    ledger = key_ledger("team-a", utc_day())
    with pytest.raises(InputError, match="may not start with 'apikey:'"):
        client.submit_items(client.parse(ITEMS)[0], batch_id=ledger, budget_usd=1000)
    with client.history.engine.connect() as conn:
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.batches)) == 0
        assert conn.scalar(sa.select(sa.func.count()).select_from(t.queries)) == 0
    assert client.history.batch_budgets([]) == {}
    ok = client.submit_items(client.parse(ITEMS)[0], batch_id="team-a-apikey:x", budget_usd=1)
    assert ok.accepted == 2


def _cli(client: ConduitClient, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "CONDUIT_DATABASE__URL": client.settings.database.url,
        "CONDUIT_REDIS__URL": client.settings.redis.url,
        "CONDUIT_REDIS__KEY_PREFIX": TEST_PREFIX,
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)),
    }
    return subprocess.run(
        [sys.executable, "-m", "producers.cli", "submit", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_cli_flags_reach_the_batch(client: ConduitClient, tmp_path: Path) -> None:
    src = tmp_path / "batch.jsonl"
    src.write_text("".join(json.dumps(i) + "\n" for i in ITEMS), encoding="utf-8")
    out = _cli(client, str(src), "--quality-floor", "0.95", "--budget-usd", "20")
    assert out.returncode == 0, out.stderr
    batch_id = out.stdout.strip()
    assert _batch(client, batch_id) == ({"quality_floor": 0.95}, 20.0)

    bad = _cli(client, str(src), "--budget-usd", "-3")
    assert bad.returncode != 0 and "a budget must be a finite number of USD > 0" in bad.stderr
    assert "Traceback" not in bad.stderr
