"""Day-two commands: ``conduit report``, ``conduit status``, ``conduit db``, ``conduit metrics``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy import Engine

import json
import os
import socket
from datetime import date
from pathlib import Path

import click

from conduit_workers.errors import ConduitError
from producers.api import ConduitClient


@click.command()
@click.option(
    "--date",
    "day",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="The UTC day to report (default: yesterday).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Folder of the reports (default CONDUIT_REPORTS__OUT_DIR, var/reports).",
)
def report(day: object, out_dir: Path | None) -> None:
    """Build the cost report of one day by hand (what beat runs nightly); replaces that day's."""
    from conduit_workers.reports.reporting import build_daily_report, yesterday_utc

    the_day: date = day.date() if day is not None else yesterday_utc()  # type: ignore[attr-defined]
    client = ConduitClient()
    try:
        out = build_daily_report(
            the_day,
            client.history,
            client.catalog,
            out_dir or client.settings.reports.out_dir,
            owner=f"cli:{socket.gethostname()}:{os.getpid()}",
            dead_letters=_dead_letter_ids(client),
        )
        assert out is not None
        t = out.report.total
        click.echo(
            f"{the_day}: {t.prompts} prompts, spend ${t.spend_usd:.6f}, always "
            f"{out.report.reference_model} ${t.reference_cost_usd:.6f}, savings "
            f"${t.savings_usd:.6f}, waste ${t.waste_usd:.6f}"
        )
        click.echo(f"written to {out.folder}/report.html (and report.md, report.csv)")
    except ConduitError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()


def _dead_letter_ids(client: ConduitClient) -> set[str]:
    """The prompt ids in the dead-letter queue; none (with a warning) when Redis is down."""
    import redis

    from producers.dlq_cli import _letters

    try:
        return _letters(client).query_ids()
    except redis.RedisError as exc:
        click.echo(
            f"warning: Redis unreachable ({exc}); dead-lettered prompts not counted", err=True
        )
        return set()


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--timeout", "timeout_s", type=float, default=1.0, help="Seconds to wait for workers."
)
def status(as_json: bool, timeout_s: float) -> None:
    """Workers up, queue depths, what the router has learned per model, spend today, budgets
    against spend, and where each quality floor stands."""
    from conduit_workers.reports.report_sql import SqlReports
    from producers.status import collect, render

    client = ConduitClient()
    try:
        s = collect(
            client.settings, client.catalog, client.app, SqlReports(client.history), timeout_s
        )
        if as_json:
            click.echo(json.dumps(s.to_json(), indent=1))
        else:
            for line in render(s):
                click.echo(line)
        _warn_uncallable(client)
        if s.errors:
            parts = ", ".join(e.split(":", 1)[0] for e in s.errors)
            raise click.ClickException(
                f"could not read {parts}: check that Redis (CONDUIT_REDIS__URL), the broker "
                "(CONDUIT_BROKER__URL) and the history database (CONDUIT_DATABASE__URL) run"
            )
    finally:
        client.close()


def _warn_uncallable(client: ConduitClient) -> None:
    """Models that cannot be called with this environment (no key, no SDK): workers started
    with the same one leave them out of routing."""
    from conduit_workers.execution.model_check import uncallable_models
    from conduit_workers.settings import environ

    for name, reason in sorted(uncallable_models(client.catalog, environ()).items()):
        click.echo(
            f"warning: model {name} cannot be called here ({reason}); workers without it "
            "leave it out of routing",
            err=True,
        )


@click.group()
def db() -> None:
    """The history database's schema (Alembic migrations)."""


def _engine() -> Engine:
    from sqlalchemy import create_engine

    from conduit_workers.settings import get_settings

    return create_engine(get_settings().database.url)


@db.command()
@click.option("--to", "revision", default="head", help="Target revision (default: the newest).")
def upgrade(revision: str) -> None:
    """Migrate the history database (CONDUIT_DATABASE__URL) to the newest schema."""
    from conduit_workers.history import migrate

    before, after = migrate.upgrade(_engine(), revision)
    click.echo(f"history schema: {before or 'empty'} -> {after}")


@db.command()
def current() -> None:
    """Show the database's revision and the code's newest."""
    from conduit_workers.history import migrate

    click.echo(f"database {migrate.current(_engine()) or 'empty'}, code {migrate.head()}")


@db.command()
@click.option("-m", "--message", required=True, help="What the migration changes.")
def revision(message: str) -> None:
    """Draft a migration from history_schema.py against an up-to-date database (review it!)."""
    from conduit_workers.history import migrate

    migrate.revision(_engine(), message)


@click.command()
@click.option("--port", type=int, default=None, help="Default CONDUIT_METRICS__PORT (9808).")
def metrics(port: int | None) -> None:
    """Serve Prometheus metrics (routing decisions, tokens, cost, latency, errors, queues)."""
    from producers.metrics import serve

    serve(ConduitClient(), port)


COMMANDS = (report, status, db, metrics)
