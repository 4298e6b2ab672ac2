"""The Celery app: ``celery -A conduit_workers worker -Q route,execute,feedback``.

A worker imports the task modules of the queues it consumes only (``-Q``; every role without
``-Q``): a router or feedback process never imports pydantic-ai and its providers' SDKs, and
starts about a third sooner (bench/README.md, "Worker start-up and memory"). Tasks of other
roles are sent by name (``app.send_task``), never imported.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Any

from celery import Celery
from celery.signals import (
    beat_init,
    celeryd_init,
    task_postrun,
    worker_init,
    worker_process_init,
    worker_ready,
)

import celeryconfig
from conduit_workers.infra import gc_tuning
from conduit_workers.infra.flower import apply_flower_defaults
from conduit_workers.names import EXECUTE, FEEDBACK, ROLE_MODULES, SWEEP
from conduit_workers.settings import get_settings

# Every task counts its deliveries and ends in the dead-letter queue when it cannot finish.
app = Celery("conduit_workers", task_cls="conduit_workers.infra.delivery:ConduitTask")
app.conf.update(celeryconfig.build(get_settings()))
logging.getLogger("conduit_workers").setLevel(get_settings().log_level)
apply_flower_defaults(get_settings().flower)  # only under `celery … flower`
# The HTTP clients log one INFO line per request; Conduit logs one line per task instead.
for _name in ("httpx", "httpx2", "httpcore", "openai", "anthropic", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def task_modules(queues: Iterable[str] | None, exclude: Iterable[str] | None = None) -> list[str]:
    """The task modules a worker consuming ``queues`` (all when None) needs, in role order.

    A queue Conduit does not know (a deployment's own routing) imports every role: a message
    for an unregistered task would be dropped.
    """
    wanted = set(queues or ROLE_MODULES) - set(exclude or ())
    if not wanted <= ROLE_MODULES.keys():
        wanted = set(ROLE_MODULES)
    return [m for q, m in ROLE_MODULES.items() if q in wanted]


def _import_role_tasks(options: dict[str, Any], **_: Any) -> None:
    # Sent by `celery worker` before it builds its pool, so prefork children inherit the tasks.
    for module in task_modules(options.get("queues"), options.get("exclude_queues")):
        importlib.import_module(module)


celeryd_init.connect(_import_role_tasks, weak=False)


def _executor_pool_size(options: dict[str, Any], conf: Any, **_: Any) -> None:
    # An executor-only worker started without -c (ops/worker executor) runs as many tasks at
    # once as its call slots need (executor.pool_tasks), not one per CPU.
    queues = options.get("queues") or ()
    if isinstance(queues, str):
        queues = queues.split(",")
    if not options.get("concurrency") and set(queues) == {EXECUTE}:
        conf.worker_concurrency = get_settings().executor.pool_tasks


celeryd_init.connect(_executor_pool_size, weak=False)


def _check_models(**_: Any) -> None:
    # Said once at start-up, before any prompt is routed to a model that cannot be called.
    from conduit_workers.domain.catalog import load_catalog
    from conduit_workers.errors import ConfigError
    from conduit_workers.execution.model_check import uncallable_models, warn_uncallable
    from conduit_workers.settings import environ

    try:
        catalog = load_catalog(get_settings().catalog.path, environ())
    except ConfigError as exc:
        logging.getLogger(__name__).error("the model catalog cannot be read: %s", exc)
        return
    warn_uncallable(uncallable_models(catalog, environ()), "worker")


worker_ready.connect(_check_models, weak=False)


def _one_beat(sender: Any, **_: Any) -> None:
    # Sent by beat before its first tick: a second beat waits here until the first is gone.
    import redis

    from conduit_workers.infra.beat_lock import BeatLock

    s = get_settings()
    client = redis.Redis.from_url(s.redis.url, socket_timeout=s.redis.socket_timeout_s)
    BeatLock(client, s.redis.key_prefix, s.beat.lock_ttl_s).wait_and_hold(on_lost=sender.stop)


beat_init.connect(_one_beat, weak=False)


def _watch_broker_epoch(**_: Any) -> None:
    # In the worker's main process: notice a Redis broker that restarted empty, and re-send
    # what it lost (infra/broker_epoch.py).
    import redis

    from conduit_workers.infra.broker_epoch import BrokerEpoch, is_redis_url, watch

    s = get_settings()
    if s.broker.epoch_check_s <= 0 or not is_redis_url(s.broker_url):
        return
    client = redis.Redis.from_url(s.broker_url, socket_timeout=s.redis.socket_timeout_s)

    def recover(_epoch: str) -> None:
        app.send_task(SWEEP, kwargs={"older_than_s": 0.0}, queue=FEEDBACK)

    watch(BrokerEpoch(client, s.redis.key_prefix), s.broker.epoch_check_s, recover)


worker_ready.connect(_watch_broker_epoch, weak=False)


# Fewer garbage collections (infra/gc_tuning.py): a larger young generation in every worker
# process (the main one runs the threads pool's tasks), and what a process holds after its
# first task (modules, the runtime) frozen out of every later collection.
def _tune_gc(**_: Any) -> None:
    gc_tuning.tune()


def _freeze_gc(**_: Any) -> None:
    gc_tuning.freeze_after_first_task()


worker_init.connect(_tune_gc, weak=False)
worker_process_init.connect(_tune_gc, weak=False)
task_postrun.connect(_freeze_gc, weak=False)
