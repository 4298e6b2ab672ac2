"""A Conduit under test: private Redis (broker + posteriors), PostgreSQL, the replay server and
one worker per role as subprocesses, plus the one checker every fault test ends with.

Settings are short so that recovery fits a test: visibility timeout 12 s, restore scan every
2 s, task time limit 10 s, LLM call timeout 2 s, hashing embedder (no torch).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from conduit_workers.domain.catalog import load_catalog
from conduit_workers.domain.constraints import Constraints
from conduit_workers.errors import StoreUnavailable
from conduit_workers.history import history_schema as t
from conduit_workers.learning.posterior_store import RedisPosteriorStore
from conduit_workers.settings import Settings
from producers.api import ConduitClient
from producers.local import Proc, start_replay_server, start_worker, wait_worker_ready
from tests.conftest import SAMPLE, TEST_PREFIX

ROLES = ("route", "execute", "feedback")
POOLS = {"execute": "threads"}  # as ops/worker runs each role
VISIBILITY_TIMEOUT_S = 12
RESTORE_INTERVAL_S = 2
TASK_TIME_LIMIT_S = 10

FAULT_ENV = {
    "CONDUIT_REDIS__KEY_PREFIX": TEST_PREFIX,
    "CONDUIT_ROUTER__EMBEDDER": "hashing",
    "CONDUIT_ROUTER__SEED": "7",
    "CONDUIT_ROUTER__CHUNK_SIZE": "50",
    "CONDUIT_EXECUTOR__CHUNK_SIZE": "25",
    "CONDUIT_EXECUTOR__CONCURRENCY": "8",
    "CONDUIT_EXECUTOR__TIMEOUT_S": "2",
    "CONDUIT_EXECUTOR__BACKOFF_BASE_S": "0.05",
    "CONDUIT_EXECUTOR__BACKOFF_MAX_S": "3",
    "CONDUIT_EXECUTOR__COOLDOWN_S": "3",
    "CONDUIT_FEEDBACK__CHUNK_SIZE": "50",
    "CONDUIT_BROKER__VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
    "CONDUIT_BROKER__RESTORE_INTERVAL_S": str(RESTORE_INTERVAL_S),
    "CONDUIT_BROKER__TASK_TIME_LIMIT_S": str(TASK_TIME_LIMIT_S),
    "CONDUIT_DATABASE__RETRY_FOR_S": "4",
    # Beat sends the sweep every 3 s; it re-sends work older than 60 s (longer than any batch
    # here takes without faults) whose task was lost: with the Redis transport a message popped
    # by a worker killed before it recorded the message as unacknowledged is gone.
    "CONDUIT_FEEDBACK__SWEEP_INTERVAL_S": "3",
    "CONDUIT_FEEDBACK__SWEEP_AFTER_S": "60",
    "CONDUIT_REPORTS__SCHEDULE": "false",
    "CONDUIT_LOG_LEVEL": "INFO",
    # No forgetting: the posteriors are then exact sums of the feedback, which the checker
    # compares with the history database (with decay < 1 they depend on the order of updates).
    "CONDUIT_ROUTER__DECAY": "1.0",
}


@dataclass
class FaultSystem:
    workdir: Path
    env: dict[str, str]
    replay: Proc
    replay_url: str
    workers: dict[str, Proc] = field(default_factory=dict)
    _client: ConduitClient | None = None
    restarts: int = 0
    beat: Proc | None = None
    crashed: list[str] = field(default_factory=list)  # workers restarted by supervise()

    # -- processes ------------------------------------------------------------------------

    def start_worker(
        self, role: str, wait: bool = True, concurrency: int = 2, pool: str | None = None
    ) -> Proc:
        """One worker for the role's queue, with the pool of ``ops/worker`` (the executor's
        is threads: ``concurrency`` tasks at once over its shared call slots) unless ``pool``."""
        self.restarts += 1
        proc = start_worker(
            [role],
            self.env,
            self.workdir / f"worker-{role}-{self.restarts}.log",
            concurrency=concurrency,
            name=f"fault-{role}",
            pool=pool or POOLS.get(role, "prefork"),
        )
        self.workers[role] = proc
        if wait:
            wait_worker_ready(proc, timeout_s=90)
        return proc

    def start_beat(self) -> Proc:
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "conduit_workers",
            "beat",
            "-s",
            str(self.workdir / "beat-schedule"),
            "--loglevel",
            "INFO",
        ]
        log_path = self.workdir / "beat.log"
        log = open(log_path, "ab")  # noqa: SIM115
        popen = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.beat = Proc("beat", popen, log_path, log)
        return self.beat

    def start_all(self, concurrency: dict[str, int] | None = None) -> None:
        self.start_beat()
        procs = [
            self.start_worker(r, wait=False, concurrency=(concurrency or {}).get(r, 2))
            for r in ROLES
        ]
        for p in procs:
            wait_worker_ready(p, timeout_s=90)

    def supervise(self) -> None:
        """Restart a worker whose process ended, as systemd ``Restart=always`` or compose
        ``restart: unless-stopped`` would (a Celery worker may exit on an unrecoverable broker
        error, e.g. when Redis vanishes mid-read)."""
        for role, proc in list(self.workers.items()):
            if not proc.alive():
                self.crashed.append(role)
                self.start_worker(role, wait=False)

    def children(self, role: str) -> list[int]:
        pid = self.workers[role].popen.pid
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        return [int(x) for x in out.stdout.split()]

    def kill_child(self, role: str) -> int:
        """SIGKILL one pool process of the role's worker (the main process survives)."""
        pid = self.children(role)[0]
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill_worker(self, role: str) -> None:
        """SIGKILL the role's whole worker: main process and pool, no warm shutdown."""
        proc = self.workers[role]
        os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait(10)

    def stop(self) -> None:
        """Kill everything at once (a warm shutdown of each worker in turn took ~15 s a test;
        nothing is left to finish, and the next test starts from fresh services)."""
        if self._client is not None:
            self._client.close()
        procs = [*self.workers.values(), *([self.beat] if self.beat else []), self.replay]
        for p in procs:
            if p.alive():
                try:
                    os.killpg(p.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in procs:
            p.stop(timeout_s=5)

    def worker_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.workdir.glob("worker-*.log"))

    # -- the producer side ----------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        # The env holds CONDUIT_* values; Settings reads them only from the environment.
        keep = dict(os.environ)
        os.environ.update(self.env)
        try:
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(keep)

    @property
    def client(self) -> ConduitClient:
        if self._client is None:
            self._client = ConduitClient(self.settings)
        return self._client

    @property
    def store(self) -> RedisPosteriorStore:
        s = self.settings
        return RedisPosteriorStore.from_url(s.redis.url, s.redis.key_prefix)

    def submit(
        self, tag: str, n: int = 500, constraints: Constraints | None = None
    ) -> tuple[str, list[str]]:
        """``n`` distinct prompts (unknown to the replay data: generated answers)."""
        items = [
            {"id": f"{tag}-{i}", "prompt": f"[{tag}] question {i}: what is {i} plus {i % 13}?"}
            for i in range(n)
        ]
        sub = self.client.submit(items, tag=tag, constraints=constraints)
        assert (sub.accepted, sub.new, sub.errors) == (n, n, []), sub
        by_external = self.client.history.query_ids_by_external(sub.batch_id)
        return sub.batch_id, [by_external[f"{tag}-{i}"] for i in range(n)]

    def progress(self, batch_id: str) -> tuple[int, int]:
        """(prompts, answered); (1, 0) while the database is down (the fault under test)."""
        try:
            return self.client.progress(batch_id)
        except StoreUnavailable:
            return 1, 0

    def unapplied(self) -> bool:
        try:
            return bool(self.client.history.unapplied_feedback_ids(limit=1))
        except StoreUnavailable:
            return True

    def wait_answered(self, batch_id: str, at_least: int, timeout_s: float = 120) -> float:
        deadline = time.monotonic() + timeout_s
        while True:
            total, done = self.progress(batch_id)
            if done >= min(at_least, total):
                return time.monotonic()
            assert time.monotonic() < deadline, f"only {done}/{total} answered after {timeout_s} s"
            self.supervise()
            time.sleep(0.1)

    def wait_settled(self, batch_id: str, timeout_s: float = 180) -> float:
        """Until every prompt has a result and every feedback event is applied; returns when."""
        self.wait_answered(batch_id, 10**9, timeout_s)
        deadline = time.monotonic() + timeout_s
        while self.unapplied():
            assert time.monotonic() < deadline, "feedback not applied in time"
            self.supervise()
            time.sleep(0.1)
        return time.monotonic()

    def replay_stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.replay_url.removesuffix("/v1") + "/_replay/stats") as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def set_profiles(self, profiles: dict[str, Any]) -> None:
        req = urllib.request.Request(
            self.replay_url.removesuffix("/v1") + "/_replay/profiles",
            data=json.dumps(profiles).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req) as r:
            assert r.status == 200


def start_system(
    workdir: Path,
    redis_url: str,
    db_url: str,
    latency_ms: float = 40,
    extra_env: dict[str, str] | None = None,
    start: bool = True,
) -> FaultSystem:
    replay, replay_url = start_replay_server(
        [SAMPLE], workdir / "replay.log", latency_ms=latency_ms
    )
    base = {k: v for k, v in os.environ.items() if k != "CONDUIT_BROKER__URL"}
    env = {
        **base,
        **FAULT_ENV,
        "CONDUIT_REDIS__URL": redis_url,
        "CONDUIT_DATABASE__URL": db_url,
        "CONDUIT_REPLAY_URL": replay_url,
        **(extra_env or {}),
    }
    system = FaultSystem(workdir, env, replay, replay_url)
    os.environ["CONDUIT_REPLAY_URL"] = replay_url  # the producer's catalog reads it
    if start:
        try:
            system.start_all()
        except BaseException:
            system.stop()
            raise
    return system


# -- the shared checker -------------------------------------------------------------------


@dataclass
class Checked:
    prompts: int
    statuses: dict[str, int]
    llm_calls: int
    duplicate_calls: int
    events: int
    cost_usd: float


def check_exactly_once(
    system: FaultSystem, batch_id: str, expected: list[str], max_duplicate_calls: int
) -> Checked:
    """Every accepted prompt has exactly one result row; cost totals equal the sum of the
    per-result costs (and the catalog's prices); the posterior totals equal exactly the feedback
    recorded in the history database, each update applied once; no prompt or answer text in
    the worker logs; duplicate LLM calls (the replay server counts them) stay within
    ``max_duplicate_calls``."""
    engine = system.client.history.engine
    settings = system.settings
    catalog = load_catalog(settings.catalog.path, {"CONDUIT_REPLAY_URL": system.replay_url})
    with engine.connect() as conn:
        accepted = set(
            conn.scalars(
                sa.select(t.batch_items.c.query_id).where(t.batch_items.c.batch_id == batch_id)
            )
        )
        results = conn.execute(sa.select(t.results)).all()
        feedback = conn.execute(
            sa.select(t.feedback, t.decisions.c.features).select_from(
                t.feedback.outerjoin(t.decisions, t.decisions.c.query_id == t.feedback.c.query_id)
            )
        ).all()
    assert accepted == set(expected), "the batch lost or gained prompts"
    per_query = Counter(r.query_id for r in results)
    assert set(per_query) >= accepted, f"{len(accepted - set(per_query))} prompts have no result"
    assert max(per_query.values()) == 1, "a prompt has two results"

    # Billed once: each result's cost is the catalog price of its tokens, and the successful
    # call events (what the posteriors count as spend) carry exactly those costs.
    for r in results:
        if r.status == "ok":
            assert r.cost_usd == catalog.get(r.model).cost_usd(r.input_tokens, r.output_tokens)
        else:
            assert r.cost_usd == 0
    ok_calls = {(f.query_id, f.model): f.cost_usd for f in feedback if f.is_call and not f.error}
    assert len(ok_calls) == sum(r.status == "ok" for r in results)
    for r in results:
        if r.status == "ok":
            assert ok_calls[(r.query_id, r.model)] == r.cost_usd
    total_cost = sum(r.cost_usd for r in results)

    # Learned once: nothing left to apply, and Redis holds exactly the recorded feedback.
    assert all(f.applied_at is not None for f in feedback), "feedback left unapplied"
    read = system.store.read(list(catalog.names), settings.context_dim)
    for model in catalog.names:
        mine = [f for f in feedback if f.model == model]
        version, stats = read[model]
        c = stats.counters
        assert version == len({f.update_id for f in mine}), f"{model}: an update applied twice"
        want = {
            "calls": sum(f.is_call for f in mine),
            "errors": sum(f.is_call and f.error for f in mine),
            "events": len(mine),
        }
        assert c["calls"] == want["calls"], (model, dict(c), want)
        assert c["errors"] == want["errors"], (model, dict(c), want)
        assert c["in_tokens"] == sum(f.in_tokens for f in mine)
        assert c["out_tokens"] == sum(f.out_tokens for f in mine)
        assert np.isclose(c["cost_usd"], sum(f.cost_usd for f in mine), rtol=1e-9, atol=1e-12)
        assert np.isclose(c["n"], sum(f.weight for f in mine), atol=1e-9)
        assert np.isclose(c["r"], sum(f.weight * f.reward for f in mine), atol=1e-9)
        xx = sum(
            (f.weight * np.outer(f.features, f.features) for f in mine if f.features),
            np.zeros_like(stats.xx),
        )
        np.testing.assert_allclose(stats.xx, xx, atol=1e-9)
    spent = sum(read[m][1].counters["cost_usd"] for m in catalog.names)
    assert np.isclose(spent, total_cost, rtol=1e-9, atol=1e-12), "posterior spend != billed cost"

    # Ids only on the broker: no prompt or answer text in the worker logs (INFO level).
    with engine.connect() as conn:
        texts = conn.execute(
            sa.select(t.queries.c.prompt, t.results.c.response).select_from(
                t.queries.outerjoin(t.results, t.results.c.query_id == t.queries.c.id)
            )
        ).all()
    logs = system.worker_logs()
    leaked = [p for p, r in texts if p in logs or (r and len(r) > 20 and r in logs)]
    assert not leaked, f"{len(leaked)} prompts or answers appear in the worker logs"

    stats = system.replay_stats()
    assert stats["duplicates"] <= max_duplicate_calls, (
        f"{stats['duplicates']} duplicate LLM calls (bound {max_duplicate_calls})"
    )
    return Checked(
        len(accepted),
        dict(Counter(r.status for r in results)),
        stats["calls"],
        stats["duplicates"],
        len(feedback),
        total_cost,
    )
