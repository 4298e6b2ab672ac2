"""Learning from feedback, in one place: events aggregated per model, one idempotent update
per model and update id, and the decay arithmetic that every posterior store applies.

The path of a feedback event: the executor (implicit, one per call), the router's re-ask
detector (a user asking again: reward 0 to the earlier answer) and ratings (explicit) store
events in the history; the feedback task claims them under :func:`update_id_for` their ids,
and :func:`learn` aggregates them (:func:`aggregate`) into one :class:`Update` per model that
the :class:`PosteriorStore` applies at most once. Forgetting: before an update of weight ``w``
the old quality evidence is multiplied by ``decay ** w`` (:func:`decay_factor`); the call
counters (calls, errors, latency, tokens, cost) are exact sums, never decayed
(:func:`decayed_sum`). The Redis store's Lua script is the reference implementation of that
arithmetic; :func:`decayed_sum` computes the same numbers, operation for operation, and the
contract tests hold the two to it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from conduit_workers.domain.bandit import COUNTERS, ArmStats, Array
from conduit_workers.domain.ports import PosteriorStore
from conduit_workers.domain.records import Update
from conduit_workers.domain.rewards import FeedbackEvent

# Forgetting is for quality evidence only: these counters lead COUNTERS, the rest never decay.
DECAYED_COUNTERS = ("n", "r", "rr")
assert COUNTERS[: len(DECAYED_COUNTERS)] == DECAYED_COUNTERS


def aggregate(
    events: Iterable[FeedbackEvent], contexts: Mapping[str, Array], dim: int
) -> dict[str, ArmStats]:
    """Sum the events into one :class:`ArmStats` change per model.

    ``contexts`` maps each query id to the context its decision used. An event whose query has
    no context (never routed) still counts as a call but teaches the regression nothing.
    """
    by_model: dict[str, list[FeedbackEvent]] = {}
    for ev in events:
        by_model.setdefault(ev.model, []).append(ev)
    out: dict[str, ArmStats] = {}
    for model, evs in by_model.items():
        # Vectorised per model: the feedback stage aggregates tens of thousands of events/s.
        stats = out[model] = ArmStats.zeros(dim)
        seen = [
            (x, ev)
            for ev in evs
            if ev.weight != 0.0 and (x := contexts.get(ev.query_id)) is not None
        ]
        if seen:
            x = np.asarray([s[0] for s in seen], dtype=np.float64).reshape(len(seen), dim)
            w = np.fromiter((s[1].weight for s in seen), dtype=np.float64, count=len(seen))
            r = np.fromiter((s[1].reward for s in seen), dtype=np.float64, count=len(seen))
            xw = x * w[:, None]
            xx = xw.T @ x
            stats.xx += np.triu(xx) + np.triu(xx, 1).T  # exactly symmetric, as stored
            stats.xr += xw.T @ r
            c = stats.counters
            c["n"] += float(w.sum())
            c["r"] += float(w @ r)
            c["rr"] += float(w @ (r * r))
        for ev in evs:
            if ev.is_call:
                stats.add_call(
                    error=ev.error,
                    latency_ms=ev.latency_ms,
                    in_tokens=ev.in_tokens,
                    out_tokens=ev.out_tokens,
                    cost_usd=ev.cost_usd,
                )
    return out


def decay_factor(decay: float, delta: ArmStats) -> float:
    """What the old quality evidence is multiplied by before ``delta`` is added: ``decay`` to
    the power of the change's weight (1: no forgetting)."""
    weight = delta.counters.get("n", 0.0)
    return float(decay**weight) if decay < 1.0 and weight > 0 else 1.0


def decayed_values(dim: int) -> int:
    """How many leading numbers of the stored statistics decay: Σ w x xᵀ's upper triangle,
    Σ w r x, then n, r, rr (the Lua script's ``ARGV[5]``)."""
    return dim * (dim + 1) // 2 + dim + len(DECAYED_COUNTERS)


def decayed_sum(old: ArmStats, delta: ArmStats, factor: float) -> ArmStats:
    """``old`` with ``delta`` applied: quality evidence ``old * factor + delta``, counters
    ``old + delta`` (the Lua script's arithmetic, element for element)."""
    out = ArmStats(old.xx * factor + delta.xx, old.xr * factor + delta.xr)
    out.counters = {
        k: (
            old.counters.get(k, 0.0) * factor + delta.counters.get(k, 0.0)
            if k in DECAYED_COUNTERS
            else old.counters.get(k, 0.0) + delta.counters.get(k, 0.0)
        )
        for k in COUNTERS
    }
    return out


def updates_for(
    events: Sequence[FeedbackEvent], contexts: dict[str, Array], dim: int, update_id: str
) -> list[Update]:
    """The events as one update per model (none for a model whose change is empty), each under
    ``<update_id>:<model>``."""
    deltas = aggregate(events, contexts, dim)
    return [
        Update(f"{update_id}:{model}", model, delta)
        for model, delta in sorted(deltas.items())
        if not delta.is_empty()
    ]


def learn(
    store: PosteriorStore,
    events: Sequence[FeedbackEvent],
    contexts: dict[str, Array],
    dim: int,
    update_id: str,
    decay: float = 1.0,
) -> int:
    """Apply feedback events to the posteriors: one atomic, idempotent update per model."""
    return store.apply(updates_for(events, contexts, dim, update_id), decay)


def update_id_for(event_ids: Sequence[str]) -> str:
    """A deterministic id for a set of events: a redelivered task gets the same id."""
    h = hashlib.sha256("\n".join(sorted(event_ids)).encode()).hexdigest()
    return f"u{h[:40]}"
