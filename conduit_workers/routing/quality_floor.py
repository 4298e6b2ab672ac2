"""The quality floor in the routing engine: which λ a floor stream routes at, which prompts go
to the reference (audits, the conservative gate), and the stream's counters.

The maths is :mod:`conduit_workers.domain.floor`; the counters live in a
:class:`~conduit_workers.routing.floor_store.FloorStore` (Redis in production, so every router
process holds one floor together).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from conduit_workers.domain import floor as fl
from conduit_workers.domain.constraints import Constraints
from conduit_workers.domain.ports import FloorStore
from conduit_workers.domain.rewards import EXPLICIT, FeedbackEvent
from conduit_workers.errors import StoreUnavailable
from conduit_workers.settings import RouterSettings

if TYPE_CHECKING:
    from conduit_workers.routing.floor_store import InMemoryFloorStore, RedisFloorStore

log = logging.getLogger(__name__)

DEFAULT_STREAM = "default"
OFFLINE_READ_S = 30.0  # how stale a router's copy of the offline weights may be


def stream_key(stream: str | None, floor: float) -> str:
    """The counters a prompt's floor is held in: a batch's own stream, or the default one;
    one stream per floor value (two floors are two constraints)."""
    return f"{stream or DEFAULT_STREAM}:{floor:g}"


def floor_of(c: Constraints, settings: RouterSettings) -> float | None:
    """The floor a prompt is routed under, or None to route it by ``lambda_cost``."""
    if c.quality_floor is not None:
        return c.quality_floor or None
    if c.lambda_cost is not None:
        return None  # an explicit λ for this prompt: the expert setting
    return settings.quality_floor or None


def params_for(floor: float, settings: RouterSettings) -> fl.FloorParams:
    return fl.FloorParams(
        floor=floor,
        z=settings.floor_pessimism,
        audit_min=settings.floor_audit_min,
        audit_scale=settings.floor_audit_scale,
        target=settings.floor_target,
        eta=settings.floor_eta,
        lambda_init=settings.floor_lambda_init,
        lambda_min=settings.floor_lambda_min,
    )


@dataclass(frozen=True)
class FloorMark:
    """Where a prompt's answer counts under a floor: its stream, its stratum, the reference's
    predicted quality on it when it was routed, and the answering model's (its residual tests
    the offline evidence behind that model). A rating of the answer is given back with it
    (:meth:`FloorKeeper.rate`)."""

    stream: str
    stratum: str
    ref_pred: float
    own_pred: float | None = None
    alt_best: float | None = None  # the best predicted quality among the other models

    def encode(self, model: str) -> str:
        extra = ",".join("" if v is None else repr(v) for v in (self.own_pred, self.alt_best))
        return f"{self.stream}|{self.stratum}|{self.ref_pred!r}|{extra}|{model}"

    @classmethod
    def decode(cls, raw: str) -> tuple[FloorMark, str]:
        """The mark and the model that answered (marks left before the answering model's
        predictions were kept have four fields)."""
        parts = raw.split("|", 4)
        if len(parts) == 5 and all(not v or _is_number(v) for v in parts[3].split(",")):
            stream, stratum, pred, extra, model = parts
            own, best = ([float(v) if v else None for v in extra.split(",")] + [None, None])[:2]
            return cls(stream, stratum, float(pred), own, best), model
        stream, stratum, pred, model = raw.split("|", 3)
        return cls(stream, stratum, float(pred)), model


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def rate_events(
    store: FloorStore,
    events: Sequence[FeedbackEvent],
    update_id: str,
    marks_of: Callable[[Sequence[str]], dict[str, str]],
) -> int:
    """Feed the explicit ratings among ``events`` to the floors their prompts were routed
    under (the marks the router kept with their decisions, read by ``marks_of``: the history's
    ``floor_marks``); once per ``update_id``. Returns the streams changed."""
    rated = [e for e in events if e.kind == EXPLICIT and e.weight > 0]
    if not rated:
        return 0
    marks = marks_of(sorted({e.query_id for e in rated}))
    ratings = []
    for e in rated:
        if e.query_id in marks:
            mark, model = FloorMark.decode(marks[e.query_id])
            if model == e.model:  # the floor counts the answer that was given
                ratings.append((mark, e.reward))
    return FloorKeeper(store, RouterSettings()).rate(ratings, update_id)


@dataclass
class FloorGroup:
    """The prompts of a chunk held to one floor stream, and what the stream reads now."""

    stream: str
    params: fl.FloorParams
    counts: fl.FloorCounts
    rows: list[int]

    @property
    def lam(self) -> float:
        return math.exp(self.counts.log_lambda(self.params))


class FloorKeeper:
    """The floors of one router process over a shared :class:`FloorStore`.

    While the store is unreachable the router keeps routing (as it does from cached
    posteriors): each stream from the counters it read last (none: every prompt to the
    reference, the safe side of the floor); decisions it cannot count are logged, not retried.
    """

    def __init__(self, store: FloorStore, settings: RouterSettings) -> None:
        self.store = store
        self.settings = settings
        self._last: dict[str, dict[str, float]] = {}
        self._offline_read_at = -math.inf

    def _offline(self) -> dict[str, float]:
        """The warm starts' offline weights: written once per ``conduit learn``, so read at most
        every :data:`OFFLINE_READ_S` rather than on every chunk."""
        now = time.monotonic()
        if now - self._offline_read_at >= OFFLINE_READ_S:
            self._offline_read_at = now
            return self._read(fl.OFFLINE_STREAM)
        return self._last.get(fl.OFFLINE_STREAM, {})

    def offline_due(self) -> bool:
        """Whether the next decision reads the offline weights from the store."""
        return time.monotonic() - self._offline_read_at >= OFFLINE_READ_S

    def _read(self, key: str) -> dict[str, float]:
        try:
            self._last[key] = self.store.read(key)
        except StoreUnavailable:
            log.warning("floor store unavailable: stream %s routed from its last counters", key)
        return self._last.get(key, {})

    def groups(
        self,
        constraints: Sequence[Constraints],
        stream: str | None,
    ) -> tuple[list[FloorGroup], list[float | None]]:
        """The floor groups of a chunk and each prompt's λ under its floor (None: not held)."""
        by_key: dict[str, FloorGroup] = {}
        offline: dict[str, float] | None = None
        lams: list[float | None] = []
        for i, c in enumerate(constraints):
            f = floor_of(c, self.settings)
            if f is None:
                lams.append(None)
                continue
            key = stream_key(stream, f)
            if key not in by_key:
                if offline is None:
                    offline = self._offline()
                by_key[key] = FloorGroup(
                    key,
                    params_for(f, self.settings),
                    fl.FloorCounts.of(self._read(key), offline),
                    [],
                )
            g = by_key[key]
            g.rows.append(i)
            lams.append(g.lam)
        return list(by_key.values()), lams

    def assign(
        self,
        group: FloorGroup,
        chosen: Sequence[str | None],
        reference: str,
        ref_pred: Sequence[float],
        advantage: Sequence[float],
        rng: np.random.Generator,
        alt_best: Sequence[float] | None = None,
    ) -> list[str]:
        """The stratum of each prompt of the group (audit draws, then the gate)."""
        p = fl.audit_share(group.counts, group.params)
        audited = [bool(rng.random() < p) for _ in group.rows]
        wanted = [
            fl.POLICY if chosen[i] in (None, reference) else fl.alt(str(chosen[i]))
            for i in group.rows
        ]
        preds = [float(ref_pred[i]) for i in group.rows]
        adv = [float(advantage[i]) for i in group.rows]
        best = [float(alt_best[i]) for i in group.rows] if alt_best is not None else None
        return fl.gate(group.counts, group.params, wanted, audited, preds, adv, best)

    def record(
        self,
        group: FloorGroup,
        query_ids: Sequence[str],
        strata: Sequence[str],
        ref_pred: Sequence[float],
        own_pred: Sequence[float] | None = None,
        alt_best: Sequence[float] | None = None,
    ) -> None:
        """Count a chunk's decisions and move the dual variable, once per chunk."""
        own = list(own_pred) if own_pred is not None else None
        best = list(alt_best) if alt_best is not None else None
        inc = fl.decision_increments(list(strata), list(ref_pred), own, best)
        step = fl.dual_step(group.counts, group.params, len(strata))
        if step:
            inc[fl.LOG_LAMBDA] = step
        ids = sorted(query_ids[i] for i in group.rows)
        uid = "decide:" + hashlib.sha256("\n".join(ids).encode()).hexdigest()[:40]
        try:
            self.store.apply(group.stream, uid, inc, *self._bounds(group.params))
        except StoreUnavailable:
            log.warning("floor store unavailable: %d decisions of %s not counted", len(ids), uid)

    def rate(self, ratings: Sequence[tuple[FloorMark, float]], update_id: str) -> int:
        """Apply ratings of answers given under a floor, with their marks; once per
        ``update_id``. Returns how many streams changed."""
        by_stream: dict[str, dict[str, float]] = {}
        for mark, rating in ratings:
            inc = by_stream.setdefault(mark.stream, {})
            incs = fl.rating_increments(
                mark.stratum, rating, mark.ref_pred, mark.own_pred, mark.alt_best
            )
            for k, v in incs.items():
                inc[k] = inc.get(k, 0.0) + v
        applied = 0
        for stream, inc in sorted(by_stream.items()):
            applied += self.store.apply(stream, f"rate:{update_id}:{stream}", inc)
        return applied

    def add_offline(self, weights: dict[str, float], update_id: str) -> bool:
        """Record the offline weight of each model's ratings a warm start loaded (once per
        ``update_id``): the floor may trust them where a stream's ratings confirm them."""
        inc = {fl.OFFLINE_WEIGHT + m: w for m, w in weights.items() if w > 0}
        return self.store.apply(fl.OFFLINE_STREAM, update_id, inc)

    def _bounds(self, params: fl.FloorParams) -> tuple[tuple[float, float], float]:
        return (
            (math.log(params.lambda_min), math.log(params.lambda_max)),
            math.log(params.lambda_init),
        )


def quality_ratio(counts: fl.FloorCounts, params: fl.FloorParams) -> tuple[float, float] | None:
    """A stream's estimated quality as a share of the reference's, and its lower bound (the
    slack less ``z`` standard deviations: what the gate keeps at or above the floor); None while
    no audit answer of the reference has been rated."""
    now = fl.slack(counts, params.floor)
    if now is None or now.n <= 0:
        return None
    return params.floor + now.normalised(0.0), params.floor + now.normalised(params.z)


@dataclass(frozen=True)
class FloorState:
    """Where one floor stream stands, as its routers see it (``conduit status``, metrics)."""

    stream: str  # "default" (one stream per floor value), or the engine's ``floor_stream``
    floor: float
    prompts: int  # decided under it
    reference_share: float  # of those, sent to the reference (audits, policy, gate)
    ratings: int  # ratings received of its answers
    estimate: float | None  # its quality as a share of the reference's (None: none rated yet)
    lower_bound: float | None  # the estimate less the reserve; the gate keeps it ≥ the floor
    lambda_cost: float  # the dual variable it routes at
    state: str  # "learning" (nothing rated yet), "held", or "rebuilding" (all to the reference)


def floor_state(
    key: str, fields: dict[str, float], offline: dict[str, float], settings: RouterSettings
) -> FloorState:
    """One stream's :class:`FloorState` from its counters (``key``: ``<stream>:<floor>``)."""
    name, _, value = key.rpartition(":")
    params = params_for(float(value), settings)
    counts = fl.FloorCounts.of(fields, offline)
    decided = counts.decided
    to_ref = counts.get(fl.DECIDED, fl.AUDIT) + counts.get(fl.DECIDED, fl.POLICY)
    now = quality_ratio(counts, params)
    state = "learning" if now is None else "held" if now[1] >= params.floor else "rebuilding"
    return FloorState(
        stream=name,
        floor=params.floor,
        prompts=int(decided),
        reference_share=to_ref / decided if decided else 1.0,
        ratings=int(sum(v for k, v in fields.items() if k.startswith(fl.RATED))),
        estimate=None if now is None else now[0],
        lower_bound=None if now is None else now[1],
        lambda_cost=math.exp(counts.log_lambda(params)),
        state=state,
    )


def floor_states(
    store: RedisFloorStore | InMemoryFloorStore, settings: RouterSettings, only: str | None = None
) -> list[FloorState]:
    """Every floor stream with counters (``only``: those of one stream name, e.g. the default
    one), the default ones first, then by prompts decided."""
    offline = store.read(fl.OFFLINE_STREAM)
    keys = [k for k in store.streams() if only is None or k.rpartition(":")[0] == only]
    out = [floor_state(k, store.read(k), offline, settings) for k in keys]
    return sorted(out, key=lambda f: (f.stream != DEFAULT_STREAM, -f.prompts, f.stream))
