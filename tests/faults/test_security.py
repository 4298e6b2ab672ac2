"""Security under a real batch: Flower (with basic auth, as ops/ ships it) shows ids only in
task arguments, and neither prompts nor answers nor API keys reach the logs above DEBUG."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import sqlalchemy as sa

from conduit_workers import names
from conduit_workers.history import history_schema as t
from producers.local import free_port
from tests.faults.harness import FaultSystem, check_exactly_once

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]
N = 500


def _get(url: str, auth: str | None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except urllib.error.URLError:
        return 0, b""  # not listening yet


def test_flower_and_logs_hold_ids_not_prompts(system: FaultSystem) -> None:
    port = free_port()
    auth = "ops:s3cret-flower"
    env = dict(
        system.env,
        CONDUIT_FLOWER__PORT=str(port),
        CONDUIT_FLOWER__BASIC_AUTH=auth,
        CONDUIT_PROVIDER_KEY="sk-never-log-me",
    )
    log = open(system.workdir / "flower.log", "wb")  # noqa: SIM115
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "conduit_workers", "flower"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while _get(base + "/healthcheck", None)[0] != 200:
            assert flower.poll() is None, (system.workdir / "flower.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "Flower did not start"
            time.sleep(0.3)
        time.sleep(1.0)  # let Flower's event consumer attach before the batch
        batch, ids = system.submit("flower", N)
        system.wait_settled(batch)
        check_exactly_once(system, batch, ids, max_duplicate_calls=0)

        assert _get(base + "/api/tasks", None)[0] == 401  # the API needs the login
        status, body = _get(base + "/api/tasks?limit=1000", auth)
        assert status == 200
        tasks = json.loads(body)
        task_names = {v["name"] for v in tasks.values()}
        assert {
            names.ROUTE_BATCH,
            names.EXECUTE_BATCH,
            names.APPLY_EVENTS,
        } <= task_names, task_names
        with system.client.history.engine.connect() as conn:
            texts = conn.execute(
                sa.select(t.queries.c.prompt, t.results.c.response).select_from(
                    t.queries.join(t.results, t.results.c.query_id == t.queries.c.id)
                )
            ).all()
        shown = json.dumps(tasks)
        for prompt, response in texts:
            assert prompt not in shown and (response or "§") not in shown
        flower_log = (system.workdir / "flower.log").read_text(errors="replace")
        for text in (system.worker_logs(), flower_log):
            assert "s3cret-flower" not in text and "sk-never-log-me" not in text
        print(f"\nSECURITY Flower /api/tasks: {len(tasks)} tasks, ids only; 401 without login")
    finally:
        flower.terminate()
        try:
            flower.wait(10)
        except subprocess.TimeoutExpired:
            flower.kill()
        log.close()
