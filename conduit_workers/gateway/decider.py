"""In-process routing for the HTTP API, micro-batched: the requests that arrive while a batch is
being decided are decided together next, in one call of the engine (one forward pass of the
encoder, one read of the posteriors from Redis), in a worker thread so the event loop keeps
serving. Under light load a batch is one request and waits for nothing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from conduit_workers.domain.constraints import Constraints
from conduit_workers.domain.records import DecisionRow
from conduit_workers.routing.engine import RoutingEngine


@dataclass
class _Pending:
    query_id: str
    text: str
    constraints: Constraints
    future: asyncio.Future[DecisionRow]


class Decider:
    """Decisions by the same :class:`RoutingEngine` the router workers use. The engine is not
    thread-safe (its cache, its random generator): one batch at a time."""

    def __init__(self, engine: RoutingEngine, max_batch: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._pending: list[_Pending] = []
        self._running = False

    async def decide(self, query_id: str, text: str, constraints: Constraints) -> DecisionRow:
        future: asyncio.Future[DecisionRow] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(query_id, text, constraints, future))
        if not self._running:
            self._running = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                try:
                    rows = await asyncio.to_thread(
                        self.engine.decide,
                        [p.query_id for p in batch],
                        [p.text for p in batch],
                        [p.constraints for p in batch],
                    )
                except Exception as exc:  # noqa: BLE001 - each waiting request gets it
                    for p in batch:
                        if not p.future.done():
                            p.future.set_exception(exc)
                    continue
                for p, row in zip(batch, rows, strict=True):
                    if not p.future.done():
                        p.future.set_result(row)
        finally:
            self._running = False
