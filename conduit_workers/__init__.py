"""Conduit workers: ``celery -A conduit_workers worker -Q route,execute,feedback``.

The Celery app is created on first access of ``conduit_workers.app`` (or ``.celery``), so that
importing the pure domain (``conduit_workers.domain``) never imports Celery.
"""

from __future__ import annotations

import os
from typing import Any

# pydantic loads every installed pydantic plugin (entry points) when the first model is built;
# the one that pydantic-ai's logfire dependency installs imports OpenTelemetry, ~0.5 s of every
# `conduit` command and worker start-up (bench/README.md). Conduit uses no pydantic plugin;
# set PYDANTIC_DISABLE_PLUGINS="" to load them anyway.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "1")


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from conduit_workers.celery_app import app

        return app
    raise AttributeError(f"module 'conduit_workers' has no attribute {name!r}")
