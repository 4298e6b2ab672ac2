import pkgutil
import subprocess
import sys

import pytest

from conduit_workers import names

INFRASTRUCTURE = ("celery", "kombu", "redis", "sqlalchemy", "pydantic_ai", "torch")


def _domain_modules() -> list[str]:
    import conduit_workers.domain as domain

    found = [m.name for m in pkgutil.walk_packages(domain.__path__, domain.__name__ + ".")]
    assert "conduit_workers.domain.ports" in found  # the walk sees the package's modules
    return sorted(found)


@pytest.mark.parametrize("module", _domain_modules())
def test_domain_imports_no_infrastructure(module: str) -> None:
    """Every module of the domain (walked, not listed) imports none of the infrastructure."""
    code = (
        f"import sys, {module}\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & {set(INFRASTRUCTURE)!r})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


def test_executor_and_feedback_modules_do_not_import_torch():
    code = (
        "import sys, conduit_workers.execution.executor, conduit_workers.learning.feedback, "
        "conduit_workers.routing.router\n"
        "print('torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_a_worker_imports_only_the_task_modules_of_its_queues():
    from conduit_workers.celery_app import task_modules

    router, executor = "conduit_workers.routing.router", "conduit_workers.execution.executor"
    feedback, reports = "conduit_workers.learning.feedback", "conduit_workers.reports.nightly"
    assert task_modules(["route"]) == [router]
    assert task_modules(["execute", "feedback"]) == [executor, feedback]
    everything = [router, executor, feedback, reports]
    assert task_modules(None) == everything  # no -Q: every queue
    assert task_modules(["route", "my-own-queue"]) == everything  # unknown queue: play safe
    assert task_modules(None, exclude=["reports"]) == everything[:3]


def test_router_and_feedback_workers_do_not_import_pydantic_ai():
    code = (
        "import sys\n"
        "from conduit_workers.celery_app import _import_role_tasks, app\n"
        "_import_role_tasks(options={'queues': ['route', 'feedback'], 'exclude_queues': None})\n"
        "names = sorted(t for t in app.tasks if t.startswith('conduit.'))\n"
        "print(','.join(names), 'pydantic_ai' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    tasks, pydantic_ai, torch = out.stdout.split()
    assert tasks.split(",") == sorted([names.APPLY_EVENTS, names.SWEEP, names.ROUTE_BATCH])
    assert (pydantic_ai, torch) == ("False", "False")


def test_every_task_has_the_one_retry_policy():
    """Celery retries StoreUnavailable with jittered exponential backoff, on every task (the
    base class's policy; a task only tunes its factor, cap or limit)."""
    code = (
        "from conduit_workers.celery_app import _import_role_tasks, app\n"
        "from conduit_workers.errors import StoreUnavailable\n"
        "_import_role_tasks(options={'queues': None, 'exclude_queues': None})\n"
        "for name, t in sorted(app.tasks.items()):\n"
        "    if name.startswith('conduit.'):\n"
        "        assert t.autoretry_for == (StoreUnavailable,), name\n"
        "        assert t.retry_jitter is True and t.retry_backoff >= 1, name\n"
        "        assert hasattr(t, '_orig_run'), name  # wrapped by Celery's autoretry\n"
        "        print(name, t.max_retries, t.retry_backoff, t.retry_backoff_max)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert set(lines) == set(names.TASK_QUEUES)
    assert lines[names.APPLY_EVENTS] == "None 1 30"  # feedback is never dropped
    assert lines[names.ROUTE_BATCH] == "20 1 30"
    assert lines[names.DAILY_COST] == "10 10 600"
