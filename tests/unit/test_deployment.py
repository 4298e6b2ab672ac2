"""docker-compose.yml and the ops/ scripts agree with the code: services, commands, queues,
environment names. (No Docker engine here: the file is parsed, never run.)"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

import celeryconfig
from conduit_workers import names
from conduit_workers.domain.catalog import DEFAULT_KEY_ENV
from conduit_workers.settings import (
    DEFAULT_CATALOG,
    ExecutorSettings,
    FlowerSettings,
    MetricsSettings,
    Settings,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
ROLES = {"router": "route", "executor": "execute", "feedback": "feedback", "reports": "reports"}


def _setting_exists(name: str) -> bool:
    """CONDUIT_A__B names the field b of the section a of Settings."""
    parts = name.removeprefix("CONDUIT_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        ann = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
                return False
            model = ann
    return True


def _catalog_variables() -> set[str]:
    text = DEFAULT_CATALOG.read_text()
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text)) | {
        v for v in DEFAULT_KEY_ENV.values() if v
    }


def _queues(command: list[str]) -> set[str]:
    return set(command[command.index("-Q") + 1].split(","))


def test_every_role_is_a_service_on_its_queue():
    assert {"redis", "postgres", "migrate", "beat", "flower", "metrics", "replay", *ROLES} <= set(
        SERVICES
    )
    consumed: set[str] = set()
    for role, queue in ROLES.items():
        cmd = SERVICES[role]["command"]
        assert cmd[:5] == ["celery", "-A", "conduit_workers", "worker", "-Q"], role
        assert _queues(cmd) == {queue}, role
        consumed |= _queues(cmd)
    assert consumed == set(names.QUEUES)
    assert set(names.TASK_QUEUES.values()) <= consumed


def test_one_beat_flower_and_exporter_on_the_configured_ports():
    beats = [n for n, s in SERVICES.items() if "beat" in s.get("command", [])]
    assert beats == ["beat"] and SERVICES["beat"]["deploy"]["replicas"] == 1
    assert SERVICES["flower"]["command"] == ["celery", "-A", "conduit_workers", "flower"]
    assert SERVICES["flower"]["ports"] == [
        f"127.0.0.1:{FlowerSettings().port}:{FlowerSettings().port}"
    ]
    assert SERVICES["metrics"]["command"] == ["conduit", "metrics"]
    assert SERVICES["metrics"]["ports"] == [
        f"127.0.0.1:{MetricsSettings().port}:{MetricsSettings().port}"
    ]
    assert SERVICES["migrate"]["command"] == ["conduit", "db", "upgrade"]
    api = SERVICES["api"]
    assert api["command"][:2] == ["conduit", "serve"] and "/healthz" in " ".join(
        api["healthcheck"]["test"]
    )


def test_redis_persists_the_replay_server_is_a_demo_profile_and_dependencies_exist():
    assert "--appendonly" in SERVICES["redis"]["command"] and SERVICES["redis"]["volumes"]
    assert SERVICES["postgres"]["volumes"]
    profiled = {n: s["profiles"] for n, s in SERVICES.items() if "profiles" in s}
    assert profiled == {"replay": ["demo"]}
    for name, svc in SERVICES.items():
        for dep in svc.get("depends_on") or {}:
            assert dep in SERVICES, (name, dep)
        if name in ROLES or name in ("beat", "flower", "metrics", "api"):
            assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_environment_names_are_settings_or_catalog_variables():
    allowed = _catalog_variables()
    for name, svc in SERVICES.items():
        for var in svc.get("environment") or {}:
            if var.startswith("CONDUIT_") and var not in allowed:
                assert _setting_exists(var), f"{name}: {var} is no setting of Settings"
            elif not var.startswith("POSTGRES_"):
                assert var in allowed, f"{name}: {var} is neither a setting nor a catalog variable"
    env = SERVICES["router"]["environment"]
    assert env["CONDUIT_DATABASE__AUTO_MIGRATE"] == "false"
    assert Settings(**{"database": {"url": env["CONDUIT_DATABASE__URL"]}}).database.url.startswith(
        "postgresql+psycopg2://"
    )


@pytest.mark.parametrize(
    "script,args,expected",
    [
        ("worker", ["router"], "celery -A conduit_workers worker -Q route "),
        (
            "worker",
            ["executor", "-c", "8"],
            "celery -A conduit_workers worker -Q execute -P threads -n executor@%h "
            "--loglevel INFO -c 8",
        ),
        ("worker", ["feedback"], "-Q feedback "),
        ("worker", ["reports"], "-Q reports "),
        ("worker", ["all"], "-Q route,execute,feedback,reports "),
        ("beat", [], "celery -A conduit_workers beat -s "),
        ("flower", [], "celery -A conduit_workers flower"),
        ("metrics", [], "conduit metrics"),
        ("migrate", [], "conduit db upgrade"),
        ("serve", ["--port", "8001"], "conduit serve --port 8001"),
    ],
)
def test_ops_scripts_run_each_role(script, args, expected):
    out = subprocess.run(
        [str(ROOT / "ops" / script), *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, CONDUIT_OPS_DRY_RUN="1"),
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert expected in out.stdout + " "


def test_ops_worker_covers_every_queue():
    text = (ROOT / "ops" / "worker").read_text()
    for role, queue in ROLES.items():
        assert re.search(rf"^\s*{role}\)\s+queues={queue};", text, re.M), role


def test_beat_sends_the_nightly_report_to_the_reports_queue():
    from conduit_workers.settings import ReportSettings

    conf = celeryconfig.build(Settings(reports=ReportSettings(hour_utc=1, minute_utc=30)))
    entry = conf["beat_schedule"][names.DAILY_COST_ENTRY]
    assert entry["task"] == names.DAILY_COST
    assert entry["options"]["queue"] == names.TASK_QUEUES[entry["task"]] == "reports"
    assert entry["schedule"].hour == {1} and entry["schedule"].minute == {30}
    assert names.DAILY_COST_ENTRY not in celeryconfig.build(
        Settings(reports=ReportSettings(schedule=False))
    ).get("beat_schedule", {})


@pytest.mark.parametrize(
    "concurrency,chunk,tasks,expected",
    [
        (64, 64, 0, 4),
        (16, 64, 0, 4),
        (512, 64, 0, 16),
        (1024, 64, 0, 32),
        (100, 64, 0, 4),
        (512, 25, 0, 41),
        (512, 64, 6, 6),
        # chunk 0 (the default): half the concurrency per task, 64 to 256
        (16, 0, 0, 4),
        (64, 0, 0, 4),
        (256, 0, 0, 4),
        (512, 0, 0, 4),
        (1024, 0, 0, 8),
    ],
)
def test_executor_pool_size_follows_its_call_slots(
    concurrency: int, chunk: int, tasks: int, expected: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without -c, an executor-only worker holds twice its call slots' worth of chunks (at
    least 4 tasks), so the next chunks wait for slots while a chunk's last calls finish."""
    from types import SimpleNamespace

    from conduit_workers import celery_app

    ex = ExecutorSettings(concurrency=concurrency, chunk_size=chunk, tasks=tasks)
    assert ex.pool_tasks == expected
    if not tasks:
        assert ex.pool_tasks * ex.prompts_per_task >= 2 * concurrency
    assert ex.prompts_per_task == (chunk or max(64, min(256, concurrency // 2)))
    monkeypatch.setattr(celery_app, "get_settings", lambda: Settings(executor=ex))
    for options, size in [
        ({"queues": ["execute"], "concurrency": None}, expected),
        ({"queues": "execute", "concurrency": 0}, expected),
        ({"queues": ["execute"], "concurrency": 3}, None),  # -c wins
        ({"queues": ["route"], "concurrency": None}, None),  # other roles: Celery's default
        ({"queues": None, "concurrency": None}, None),
    ]:
        conf = SimpleNamespace(worker_concurrency=None)
        celery_app._executor_pool_size(options=options, conf=conf)
        assert conf.worker_concurrency == size, options


def test_route_chunks_hold_an_execute_chunk_unless_set() -> None:
    """Unset, a route task holds at least one execute task's prompts (fewer, larger tasks at
    high concurrency); set, it is left as set."""
    from conduit_workers.settings import RouterSettings

    assert Settings().router.chunk_size == 64
    assert Settings(executor=ExecutorSettings(concurrency=512)).router.chunk_size == 256
    assert Settings(executor=ExecutorSettings(chunk_size=100)).router.chunk_size == 100
    routed = Settings(
        executor=ExecutorSettings(concurrency=512), router=RouterSettings(chunk_size=32)
    )
    assert routed.router.chunk_size == 32
