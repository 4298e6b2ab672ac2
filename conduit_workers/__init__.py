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
# Conduit's matrices are small (a chunk of ≤ 256 contexts by ≤ 384 dimensions): OpenBLAS's
# threads cost more than they save, and a router process that spreads over both cores of a
# 2-core machine doubles its CPU per prompt at chunks of 256 (bench/README.md, "Routing stage").
# Read when numpy is first imported, so set here; OPENBLAS_NUM_THREADS=N restores threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from conduit_workers.celery_app import app

        return app
    raise AttributeError(f"module 'conduit_workers' has no attribute {name!r}")
