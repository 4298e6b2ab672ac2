"""The Celery app: ``celery -A conduit_workers worker -Q route,execute,feedback``."""

from __future__ import annotations

import logging

from celery import Celery

import celeryconfig
from conduit_workers.adapters.flower import apply_flower_defaults
from conduit_workers.settings import get_settings

# Every task counts its deliveries and ends in the dead-letter queue when it cannot finish.
app = Celery("conduit_workers", task_cls="conduit_workers.workers.delivery:ConduitTask")
app.conf.update(celeryconfig.build(get_settings()))
app.conf.include = [
    "conduit_workers.workers.router",
    "conduit_workers.workers.executor",
    "conduit_workers.workers.feedback",
    "conduit_workers.workers.reports",
]
logging.getLogger("conduit_workers").setLevel(get_settings().log_level)
apply_flower_defaults(get_settings().flower)  # only under `celery … flower`
# The HTTP clients log one INFO line per request; Conduit logs one line per task instead.
for _name in ("httpx", "httpx2", "httpcore", "openai", "anthropic", "alembic"):
    logging.getLogger(_name).setLevel(logging.WARNING)
