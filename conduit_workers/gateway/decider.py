"""In-process routing for the HTTP API, micro-batched: the requests that arrive while a batch is
being decided are decided together next, in one call of the engine (one forward pass of the
encoder, one read of the posteriors from Redis), in a worker thread so the event loop keeps
serving. Under light load a batch is one request and waits for nothing.

A lone request whose decision needs nothing from Redis (the posteriors and the floor counters
read within their refresh interval, ``gateway/routing_state.py``) is decided on the event loop
itself: ~0.6 ms of CPU with the static embedder, against ~1.5 ms through the thread (the hop
there and back, and the GIL passed between them; bench/README.md "HTTP API"). It never waits on
Redis there, so an outage cannot stall the loop; and where decisions turn slow (the MiniLM
embedder), they go back to the thread."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from conduit_workers.domain.constraints import Constraints
from conduit_workers.domain.records import DecisionRow
from conduit_workers.routing.engine import RoutingEngine

# A lone decision longer than this (CPU) goes to the worker thread, not the event loop.
INLINE_MAX_S = 0.002


@dataclass
class _Pending:
    query_id: str
    text: str
    constraints: Constraints
    future: asyncio.Future[DecisionRow]


class Decider:
    """Decisions by the same :class:`RoutingEngine` the router workers use. The engine is not
    thread-safe (its cache, its random generator): one batch at a time."""

    def __init__(
        self,
        engine: RoutingEngine,
        max_batch: int = 256,
        fresh: Callable[[], bool] | None = None,
        inline_max_s: float = INLINE_MAX_S,
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.fresh = fresh
        self.inline_max_s = inline_max_s
        self._lone_s = 0.0  # a lone decision's CPU time, smoothed over the last few
        self._pending: list[_Pending] = []
        self._running = False

    def _time_lone(self, seconds: float) -> None:
        self._lone_s = 0.8 * self._lone_s + 0.2 * seconds

    async def decide(self, query_id: str, text: str, constraints: Constraints) -> DecisionRow:
        if (
            self.fresh is not None
            and not self._running
            and self._lone_s <= self.inline_max_s
            and self.fresh()
        ):
            t0 = time.thread_time()
            row = self.engine.decide([query_id], [text], [constraints])[0]
            self._time_lone(time.thread_time() - t0)
            return row
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
                    rows, cpu_s = await asyncio.to_thread(self._decide, batch)
                    if len(batch) == 1:
                        self._time_lone(cpu_s)
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

    def _decide(self, batch: list[_Pending]) -> tuple[list[DecisionRow], float]:
        t0 = time.thread_time()
        rows = self.engine.decide(
            [p.query_id for p in batch],
            [p.text for p in batch],
            [p.constraints for p in batch],
        )
        return rows, time.thread_time() - t0
