"""``conduit dlq``: inspect and re-drive the dead-letter queue (tasks that could not finish)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click
import redis

from conduit_workers import names
from conduit_workers.infra.dead_letters import DeadLetter, RedisDeadLetters
from producers.api import ConduitClient


def _letters(client: ConduitClient) -> RedisDeadLetters:
    s = client.settings.redis
    client_ = redis.Redis.from_url(s.url, socket_timeout=s.socket_timeout_s)
    return RedisDeadLetters(client_, s.key_prefix)


_PROMPT_TASKS = (names.ROUTE_BATCH, names.EXECUTE_BATCH)


def _ids(d: DeadLetter) -> list[str]:
    arg = d.args[0] if d.args else None
    return [str(x) for x in arg] if isinstance(arg, list) else []


def _routable(client: ConduitClient) -> list[str]:
    """The catalog's models that can be called (key and SDK present where this runs)."""
    from conduit_workers.execution.model_check import uncallable_models
    from conduit_workers.settings import environ

    uncallable = uncallable_models(client.catalog, environ())
    for name, reason in sorted(uncallable.items()):
        click.echo(f"warning: model {name} cannot be called ({reason}); not routed to", err=True)
    return [m for m in client.catalog.names if m not in uncallable]


@click.group()
def dlq() -> None:
    """The dead-letter queue: tasks that failed for good or kept killing their worker."""


@dlq.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per dead letter.")
def list_(as_json: bool) -> None:
    """Show the dead letters (task, reason, deliveries, error; payloads are ids only)."""
    client = ConduitClient()
    try:
        letters = _letters(client).list()
        for d in letters:
            if as_json:
                click.echo(json.dumps(d.__dict__))
                continue
            at = datetime.fromtimestamp(d.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
            ids = len(d.args[0]) if d.args and isinstance(d.args[0], list) else "?"
            click.echo(
                f"{d.task_id}  {at}  {d.task}  {d.reason} after {d.deliveries} "
                f"deliveries, {d.retries} retries  ({ids} ids)  {d.error}"
            )
        if not as_json:
            click.echo(f"{len(letters)} dead letters", err=True)
    finally:
        client.close()


@dlq.command()
@click.argument("task_ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Re-drive every dead letter.")
@click.option(
    "--reroute",
    is_flag=True,
    help="Route again the unanswered prompts decided for a model the catalog no longer has "
    "(or that cannot be called here), instead of executing the old decision.",
)
def redrive(task_ids: tuple[str, ...], all_: bool, reroute: bool) -> None:
    """Send dead letters again (as new tasks, with the same payload) and remove them.

    Prompts already answered are skipped by the workers: no paid call is made twice."""
    if bool(task_ids) == all_:
        raise click.UsageError("give TASK_IDS or --all")
    client = ConduitClient()
    try:
        letters = _letters(client)
        todo: list[DeadLetter] = letters.list() if all_ else []
        for tid in task_ids:
            d = letters.get(tid)
            if d is None:
                raise click.ClickException(f"no dead letter {tid!r}; see `conduit dlq list`")
            todo.append(d)
        routable = _routable(client) if reroute else None
        for d in todo:
            task = d.task
            if routable is not None and task in _PROMPT_TASKS and _ids(d):
                stale = client.history.forget_stale_decisions(_ids(d), routable)
                if stale:
                    click.echo(f"{d.task_id}: {len(stale)} prompts to route again")
                task = names.ROUTE_BATCH  # it sends the execute tasks on
            queue = names.TASK_QUEUES.get(task, d.queue)
            new = client.app.send_task(task, args=d.args, queue=queue)
            letters.remove(d.task_id)
            click.echo(f"{d.task_id} re-driven as {new.id} on {queue}")
        click.echo(f"{len(todo)} dead letters re-driven", err=True)
    finally:
        client.close()
