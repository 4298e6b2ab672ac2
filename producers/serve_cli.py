"""``conduit serve`` and ``conduit keys``: the OpenAI-compatible HTTP API and its API keys."""

from __future__ import annotations

import json
import re

import click

from conduit_workers.errors import InputError
from conduit_workers.history.history_gateway import GatewayHistory

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")


@click.command()
@click.option("--host", help="Listen address (CONDUIT_GATEWAY__HOST, default 127.0.0.1).")
@click.option("--port", type=int, help="Port (CONDUIT_GATEWAY__PORT, default 8000).")
@click.option("--workers", type=int, help="Server processes (CONDUIT_GATEWAY__WORKERS, default 1).")
@click.option("--access-log", is_flag=True, help="One log line per request (method, path, status).")
def serve(host: str | None, port: int | None, workers: int | None, access_log: bool) -> None:
    """Serve the OpenAI-compatible API: POST /v1/chat/completions (model "conduit" is routed),
    GET /v1/models, POST /v1/feedback. Clients send `Authorization: Bearer KEY`
    (`conduit keys create`)."""
    from conduit_workers.gateway.server import serve as run
    from conduit_workers.settings import get_settings

    s = get_settings()
    gw = s.gateway.model_copy(
        update={
            k: v
            for k, v in {"host": host, "port": port, "workers": workers}.items()
            if v is not None
        }
    )
    run(s.model_copy(update={"gateway": gw}), access_log=access_log)


@click.group()
def keys() -> None:
    """API keys of `conduit serve` (stored hashed in the history database)."""


def _history() -> GatewayHistory:
    from conduit_workers.settings import get_settings

    db = get_settings().database
    h = GatewayHistory(db.url, retry_for_s=db.retry_for_s, pool_size=1)
    h.create_schema(auto_migrate=db.auto_migrate)
    return h


@keys.command("create")
@click.option("--name", required=True, help="Who the key is for, e.g. team-a (unique).")
@click.option("--budget-usd-per-day", type=float, help="Spend limit per UTC day, in USD.")
@click.option(
    "--allowed-models",
    help="Comma-separated catalog models this key may name (routing stays among them).",
)
@click.option("--json", "as_json", is_flag=True, help='Print {"name": …, "key": …}.')
def create(
    name: str, budget_usd_per_day: float | None, allowed_models: str | None, as_json: bool
) -> None:
    """Create an API key; it is printed once and cannot be shown again."""
    from conduit_workers.domain.catalog import load_catalog
    from conduit_workers.settings import environ, get_settings

    if not _NAME.match(name):
        raise click.UsageError(
            "--name: 1 to 40 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if budget_usd_per_day is not None and not 0 <= budget_usd_per_day < 1e9:
        raise click.UsageError("--budget-usd-per-day must be a number >= 0")
    models = None
    if allowed_models:
        models = [m.strip() for m in allowed_models.split(",") if m.strip()]
        known = set(load_catalog(get_settings().catalog.path, environ()).names)
        unknown = sorted(set(models) - known)
        if unknown:
            raise click.UsageError(
                f"--allowed-models: unknown model(s) {unknown}; the catalog has {sorted(known)}"
            )
    h = _history()
    try:
        row, key = h.create_key(name, budget_usd_per_day=budget_usd_per_day, allowed_models=models)
    except InputError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        h.dispose()
    if as_json:
        click.echo(json.dumps({"name": row.name, "key": key}))
        return
    click.echo(key)
    click.echo(
        f"API key {row.name!r} created; it is shown once: keep it now. Clients send it as "
        "'Authorization: Bearer KEY' (the OpenAI SDK's api_key).",
        err=True,
    )


@keys.command("list")
def list_keys() -> None:
    """The keys by name: hint, budget, allowed models, created, revoked."""
    h = _history()
    try:
        rows = h.list_keys()
    finally:
        h.dispose()
    click.echo(f"{'name':40} {'key':12} {'USD/day':>9} {'created (UTC)':17} {'status':8} models")
    for r in rows:
        budget = f"{r.budget_usd_per_day:.2f}" if r.budget_usd_per_day is not None else "-"
        status = "revoked" if r.revoked_at is not None else "live"
        models = ",".join(r.allowed_models) if r.allowed_models else "all"
        created = r.created_at.strftime("%Y-%m-%d %H:%M") if r.created_at else ""
        click.echo(
            f"{r.name:40} {r.key_hint + '…':12} {budget:>9} {created:17} {status:8} {models}"
        )


@keys.command("revoke")
@click.argument("name")
def revoke(name: str) -> None:
    """Revoke a key: servers refuse it within CONDUIT_GATEWAY__KEY_CACHE_S (10 s), and its
    Batch API batches still running are cancelled (requests in flight finish)."""
    h = _history()
    try:
        ended = h.revoke_key(name)
    finally:
        h.dispose()
    if ended is None:
        raise click.ClickException(f"no live API key named {name!r} (conduit keys list)")
    click.echo(
        f"API key {name!r} revoked; {ended} requests of its running batches cancelled"
        if ended
        else f"API key {name!r} revoked"
    )


COMMANDS = (serve, keys)
