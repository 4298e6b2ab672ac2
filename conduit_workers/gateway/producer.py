"""Tasks sent by name from the HTTP API (ids only), as the CLI's producers send them: the routing
of a batch's prompts, the feedback events of answered calls."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

import celeryconfig
from conduit_workers import names
from conduit_workers.settings import Settings

ROUTE = (names.ROUTE_BATCH, names.ROUTE)
FEEDBACK = (names.APPLY_EVENTS, names.FEEDBACK)


class TaskSender:
    def __init__(self, settings: Settings) -> None:
        self.app = Celery("conduit-gateway", set_as_current=False)
        self.app.conf.update(celeryconfig.build(settings))

    def send(self, task: tuple[str, str], ids: Sequence[str], chunk: int) -> None:
        """Send ``ids`` to ``task`` (name, queue) in chunks of ``chunk``, over one connection."""
        if not ids:
            return
        name, queue = task
        with self.app.producer_or_acquire() as producer:
            for i in range(0, len(ids), max(1, chunk)):
                self.app.send_task(
                    name, args=[list(ids[i : i + chunk])], queue=queue, producer=producer
                )

    def close(self) -> None:
        self.app.close()
