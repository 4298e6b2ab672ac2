"""Conduit workers: ``celery -A conduit_workers worker -Q route,execute,feedback``.

The Celery app is created on first access of ``conduit_workers.app`` (or ``.celery``), so that
importing the pure domain (``conduit_workers.domain``) never imports Celery.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from conduit_workers.celery_app import app

        return app
    raise AttributeError(f"module 'conduit_workers' has no attribute {name!r}")
