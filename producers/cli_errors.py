"""Errors for people: what the ``conduit`` command prints when a service or a file is wrong.

Every command runs under :class:`FriendlyGroup`, which turns the errors a command can expect
(the broker, Redis or the history database unreachable, a bad catalog or settings file) into
one line saying what happened and what to do, and a non-zero exit. Anything else is a bug and
keeps its traceback. URLs are shown without their passwords.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import click

from conduit_workers.errors import ConduitError, ConfigError, InputError, StoreUnavailable


def version() -> str:
    try:
        return metadata.version("conduit")
    except metadata.PackageNotFoundError:
        return "unknown"


def _safe(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(url))


def _settings() -> Any:
    from conduit_workers.settings import get_settings

    try:
        return get_settings()
    except Exception:  # noqa: BLE001 - the settings themselves may be what is wrong
        return None


def explain(exc: BaseException) -> str | None:
    """One line for an error a command can expect; None for anything else (a bug)."""
    import redis
    import sqlalchemy.exc
    from kombu.exceptions import OperationalError as BrokerError
    from pydantic import ValidationError

    s = _settings()
    if isinstance(exc, (ConfigError, InputError)):
        return str(exc)
    if isinstance(exc, BrokerError):
        where = _safe(s.broker_url) if s else "the broker"
        return (
            f"cannot reach the broker at {where} ({exc}): start it, or point "
            "CONDUIT_BROKER__URL (or CONDUIT_REDIS__URL, the default broker) at it"
        )
    if isinstance(exc, redis.RedisError):
        where = _safe(s.redis.url) if s else "Redis"
        return (
            f"cannot reach Redis at {where} ({type(exc).__name__}: {exc}): start it, or point "
            "CONDUIT_REDIS__URL at it"
        )
    if isinstance(exc, (StoreUnavailable, sqlalchemy.exc.OperationalError)):
        db = _safe(s.database.url) if s else "the history database"
        return (
            f"a store is unavailable ({str(exc).splitlines()[0][:200]}): check that Redis "
            f"(CONDUIT_REDIS__URL) and the history database ({db}, CONDUIT_DATABASE__URL) run"
        )
    if isinstance(exc, ValidationError):
        return f"invalid settings: {str(exc).splitlines()[0]} (check the CONDUIT_* variables)"
    if isinstance(exc, ConduitError):
        return str(exc)
    return None


class FriendlyGroup(click.Group):
    """A click group whose commands end with one clear line on an expected error."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            message = explain(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


def check_broker(app: Any, url: str, timeout_s: float = 5.0) -> None:
    """Fail fast, before anything is recorded, when the broker cannot be reached."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
    except Exception as exc:  # noqa: BLE001 - kombu raises its own or the transport's errors
        raise click.ClickException(
            f"cannot reach the broker at {_safe(url)} ({type(exc).__name__}): nothing was "
            "submitted; start it, or point CONDUIT_BROKER__URL (or CONDUIT_REDIS__URL) at it"
        ) from None
