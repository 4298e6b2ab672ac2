"""The Celery app: ``celery -A conduit_workers worker -Q route,execute,feedback``."""

from __future__ import annotations

import logging

from celery import Celery

import celeryconfig
from conduit_workers.settings import get_settings

app = Celery("conduit_workers")
app.conf.update(celeryconfig.build(get_settings()))
app.conf.include = [
    "conduit_workers.workers.router",
    "conduit_workers.workers.executor",
    "conduit_workers.workers.feedback",
]
logging.getLogger("conduit_workers").setLevel(get_settings().log_level)
# The HTTP clients log one INFO line per request; Conduit logs one line per task instead.
for _name in ("httpx", "httpx2", "httpcore", "openai", "anthropic"):
    logging.getLogger(_name).setLevel(logging.WARNING)
