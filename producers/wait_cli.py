"""``conduit submit --wait``: wait for a batch, say at once when its prompts are dead-lettered,
stop when nothing else can come, and keep what was answered."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click
import redis

from conduit_workers.infra.dead_letters import RedisDeadLetters
from producers.api import ConduitClient


@dataclass
class Waited:
    rows: list[dict[str, Any]]  # answered prompts only, in input order
    total: int
    stopped: str | None = None  # why the wait ended before every prompt was answered
    dead: set[str] = field(default_factory=set)  # dead-lettered prompt ids


def _letter_ids(args: list[Any]) -> set[str]:
    first = args[0] if args else None
    return {str(x) for x in first} if isinstance(first, list) else set()


def wait_reporting(
    client: ConduitClient,
    batch_id: str,
    timeout_s: float | None,
    on_progress: Callable[[int, int], None],
    poll_s: float = 0.5,
) -> Waited:
    s = client.settings.redis
    letters = RedisDeadLetters(
        redis.Redis.from_url(s.url, socket_timeout=s.socket_timeout_s), s.key_prefix
    )
    ids = {r["id"] for r in client.results(batch_id)}
    seen: set[str] = set()
    dead: set[str] = set()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        total, done = client.progress(batch_id)
        on_progress(done, total)
        if done >= total:
            return Waited(client.results(batch_id), total, None, dead)
        for d in letters.list():
            mine = ids & _letter_ids(d.args)
            if d.task_id in seen or not mine:
                continue
            seen.add(d.task_id)
            dead |= mine
            click.echo(
                f"\n{len(mine)} prompts of this batch are in the dead-letter queue (task "
                f"{d.task_id}, {d.task}: {d.error[:200]}); once the cause is fixed, "
                f"`conduit dlq redrive {d.task_id}` sends them again",
                err=True,
            )
        stopped = None
        if dead and set(client.history.unanswered(sorted(ids))) <= dead:
            stopped = "every unanswered prompt is in the dead-letter queue"
        elif deadline is not None and time.monotonic() > deadline:
            stopped = f"timed out after {timeout_s:.0f} s; are workers running on the queues?"
        if stopped:
            rows = [r for r in client.results(batch_id) if r["status"] is not None]
            return Waited(rows, total, stopped, dead)
        time.sleep(poll_s)
