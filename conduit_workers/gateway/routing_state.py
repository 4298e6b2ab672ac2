"""The routing state of the HTTP API's in-process decisions, read and written around the request
rather than in it.

A router worker decides a chunk of 64 prompts per read of the posteriors' versions and of its
floor stream's counters, and per write of the chunk's decision counts. The HTTP API decides
what has arrived, often one request: those Redis round trips were about half of a lone
request's decision (bench/README.md "HTTP API"). Here:

- :class:`RecentPosteriors` reads the posteriors (their versions, and the statistics of the
  models whose version moved) at most every ``max_age_s``;
- :class:`WriteBehindFloors` reads a floor stream's counters at most every ``max_age_s``, and
  queues the decision counts that the engine writes (counting them at once in what it read, as
  a read after the write would) for :meth:`flush`, which the history writer's thread runs each
  time it wakes (``gateway/recorder.py``).

So a decision is at most ``max_age_s`` behind what the feedback workers and the other processes
wrote (a router worker's chunk is behind by as much as its 64 prompts take), and a process's
decisions are counted in Redis about one history write after their answers (each prompt's
floor mark goes with its decision row, as everywhere). Counts not written because Redis is
unreachable are logged and dropped, as the engine does when it writes them itself.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from conduit_workers.domain.bandit import ArmStats
from conduit_workers.domain.floor import LOG_LAMBDA
from conduit_workers.domain.ports import FloorStore, PosteriorStore
from conduit_workers.domain.records import Update
from conduit_workers.errors import StoreUnavailable

if TYPE_CHECKING:
    from conduit_workers.routing.quality_floor import FloorKeeper

log = logging.getLogger(__name__)

# A floor's decision counts: (stream, update id, increments, log λ bounds, log λ start).
_Apply = tuple[str, str, dict[str, float], tuple[float, float], float]


class RecentPosteriors:
    """A :class:`PosteriorStore` whose reads are at most ``max_age_s`` old (0: every read goes
    to the store). Updates go straight through."""

    def __init__(self, inner: PosteriorStore, max_age_s: float) -> None:
        self.inner = inner
        self.max_age_s = max_age_s
        self._read: tuple[float, list[str], int, dict[str, tuple[int, ArmStats]]] | None = None

    def read(self, models: list[str], dim: int) -> dict[str, tuple[int, ArmStats]]:
        now = time.monotonic()
        last = self._read
        if last is not None and now < last[0] and last[1] == models and last[2] == dim:
            return last[3]
        out = self.inner.read(models, dim)
        self._read = (now + self.max_age_s, list(models), dim, out)
        return out

    def fresh(self) -> bool:
        """Whether a read now would be answered from memory (no Redis round trip)."""
        last = self._read
        return last is not None and time.monotonic() < last[0]

    def apply(self, updates: list[Update], decay: float = 1.0) -> int:
        return self.inner.apply(updates, decay)

    def reset(self, models: list[str]) -> None:
        self._read = None
        self.inner.reset(models)


class WriteBehindFloors:
    """A :class:`FloorStore` whose stream reads are at most ``max_age_s`` old and whose
    decision counts wait for :meth:`flush` (see the module docstring)."""

    def __init__(self, inner: FloorStore, max_age_s: float) -> None:
        self.inner = inner
        self.max_age_s = max_age_s
        self._reads: dict[str, tuple[float, dict[str, float]]] = {}
        self._applies: list[_Apply] = []
        self._lock = threading.Lock()

    def read(self, stream: str) -> dict[str, float]:
        now = time.monotonic()
        cached = self._reads.get(stream)
        if cached is not None and now < cached[0]:
            return cached[1]
        counts = self.inner.read(stream)
        self._reads[stream] = (now + self.max_age_s, counts)
        return counts

    def fresh(self, stream: str) -> bool:
        """Whether a read of ``stream`` now would be answered from memory."""
        cached = self._reads.get(stream)
        return cached is not None and time.monotonic() < cached[0]

    def apply(
        self,
        stream: str,
        update_id: str,
        increments: dict[str, float],
        log_lambda_bounds: tuple[float, float] = (-math.inf, math.inf),
        log_lambda_init: float = 0.0,
    ) -> bool:
        """Queued: True when there is something to count (whether it is new is known when
        :meth:`flush` writes it)."""
        if not increments:
            return False
        with self._lock:
            self._applies.append(
                (stream, update_id, dict(increments), log_lambda_bounds, log_lambda_init)
            )
        cached = self._reads.get(stream)
        if cached is not None:  # the next decisions see these counts, as after a write
            counts = dict(cached[1])
            for field, inc in increments.items():
                if field == LOG_LAMBDA:
                    lo, hi = log_lambda_bounds
                    counts[field] = max(lo, min(hi, counts.get(field, log_lambda_init) + inc))
                else:
                    counts[field] = counts.get(field, 0.0) + inc
            self._reads[stream] = (cached[0], counts)
        return True

    def pending(self) -> bool:
        return bool(self._applies)

    def flush(self) -> None:
        """Write the decision counts that wait, each stream's once per update id (by the
        store's script). Never raises: what Redis refuses is logged and dropped."""
        with self._lock:
            applies, self._applies = self._applies, []
        for stream, update_id, inc, bounds, start in applies:
            try:
                self.inner.apply(stream, update_id, inc, bounds, start)
            except StoreUnavailable:
                log.warning("floor store unavailable: %s of %s not counted", update_id, stream)


def decision_needs_no_redis(
    posteriors: RecentPosteriors,
    floors: WriteBehindFloors,
    keeper: FloorKeeper,
    default_floor: str | None,
) -> Callable[[], bool]:
    """Whether a decision made now is answered from memory: the posteriors fresh, and under a
    default floor its stream fresh and the warm starts' offline weights not due (a request with
    a floor of its own may still read its stream once). The HTTP API then decides a lone
    request on the event loop (``gateway/decider.py``)."""

    def fresh() -> bool:
        if not posteriors.fresh():
            return False
        if default_floor is None:
            return True
        return floors.fresh(default_floor) and not keeper.offline_due()

    return fresh
