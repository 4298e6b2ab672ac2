"""``conduit dlq``: inspect and re-drive the dead-letter queue (tasks that could not finish)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click
import redis

import celeryconfig
from conduit_workers.adapters.dead_letters import DeadLetter, RedisDeadLetters
from producers.api import ConduitClient


def _letters(client: ConduitClient) -> RedisDeadLetters:
    s = client.settings.redis
    client_ = redis.Redis.from_url(s.url, socket_timeout=s.socket_timeout_s)
    return RedisDeadLetters(client_, s.key_prefix)


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
def redrive(task_ids: tuple[str, ...], all_: bool) -> None:
    """Send dead letters again (as new tasks, with the same payload) and remove them."""
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
        for d in todo:
            queue = celeryconfig.TASK_QUEUES.get(d.task, d.queue)
            new = client.app.send_task(d.task, args=d.args, queue=queue)
            letters.remove(d.task_id)
            click.echo(f"{d.task_id} re-driven as {new.id} on {queue}")
        click.echo(f"{len(todo)} dead letters re-driven", err=True)
    finally:
        client.close()
