"""Rebuilding the Redis posteriors and quality floors from the history database (``conduit
posteriors --rebuild``).

Redis holds the posteriors; the history database holds every feedback event and the update id
that applied it. Replaying the applied events, update by update in the order they were applied,
through the same aggregation and the same update arithmetic (decay included) gives back the
statistics Redis had. Events claimed but not yet marked applied are left out: their feedback
task is still owed and applies them when it runs (its update id is not marked applied, so Redis
takes it).

Run it with the feedback workers stopped (or idle), so that no update lands during the rebuild.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from conduit_workers.domain import floor as fl
from conduit_workers.domain.learning import learn
from conduit_workers.domain.rewards import FeedbackEvent
from conduit_workers.history.history import SqlHistory
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore, RedisPosteriorStore
from conduit_workers.routing.floor_store import RedisFloorStore
from conduit_workers.routing.quality_floor import FloorMark

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RebuildOutcome:
    events: int
    updates: int
    models: dict[str, int]  # model -> version after the rebuild


def replay_history(
    history: SqlHistory, dim: int, decay: float = 1.0
) -> tuple[InMemoryPosteriorStore, dict[str, list[str]], int]:
    """The posteriors implied by the applied feedback: (store, model -> update ids, events)."""
    events, contexts = history.applied_feedback_with_updates()
    groups: dict[str, list[FeedbackEvent]] = defaultdict(list)
    order: list[str] = []
    for update_id, ev in events:
        if update_id not in groups:
            order.append(update_id)
        groups[update_id].append(ev)
    store = InMemoryPosteriorStore()
    update_ids: dict[str, list[str]] = defaultdict(list)
    for uid in order:
        learn(store, groups[uid], contexts, dim, uid, decay)
        for model in sorted({e.model for e in groups[uid]}):
            update_ids[model].append(f"{uid}:{model}")
    return store, dict(update_ids), len(events)


def rebuild_posteriors(
    history: SqlHistory,
    store: RedisPosteriorStore,
    models: Sequence[str],
    dim: int,
    decay: float = 1.0,
) -> RebuildOutcome:
    """Overwrite the Redis posteriors of ``models`` with those replayed from the history."""
    replayed, update_ids, n_events = replay_history(history, dim, decay)
    read = replayed.read(list(models), dim)
    versions = {}
    for m in models:
        version, stats = read[m]
        # The applied markers written are those of updates whose aggregate was not empty;
        # the in-memory store counts the same updates, so versions match the lost ones.
        store.replace(m, version, stats, update_ids.get(m, []))
        versions[m] = version
    log.info("posteriors rebuilt from %d applied feedback events", n_events)
    return RebuildOutcome(n_events, sum(versions.values()), versions)


def rebuild_floors(history: SqlHistory, floors: RedisFloorStore) -> dict[str, int]:
    """Overwrite the quality floors' counters with those the history implies; returns the
    prompts decided per stream.

    Each decision made under a floor keeps its mark (stream, stratum, predictions) in the
    history, and each applied rating of its answer is there too: the counters are their sums,
    as the routers and feedback workers added them. The dual variable (λ) is path-dependent and
    not rebuilt: each stream starts again from ``floor_lambda_init``, and the router moves it
    from there. A warm start's offline weights are not in the history: run ``conduit learn``
    again to restore them.
    """
    per_stream: dict[str, dict[str, float]] = defaultdict(dict)
    decided: dict[str, int] = defaultdict(int)
    for raw, _qid, rating in history.floor_history():
        mark, _model = FloorMark.decode(raw)
        if mark.stratum.endswith(":None"):
            continue  # not counted when decided (no model)
        own = [mark.own_pred] if mark.own_pred is not None else None
        best = [mark.alt_best] if mark.alt_best is not None else None
        incs = [fl.decision_increments([mark.stratum], [mark.ref_pred], own, best)]
        if rating is not None:
            incs.append(
                fl.rating_increments(
                    mark.stratum, rating, mark.ref_pred, mark.own_pred, mark.alt_best
                )
            )
        counters = per_stream[mark.stream]
        for inc in incs:
            for k, v in inc.items():
                counters[k] = counters.get(k, 0.0) + v
        decided[mark.stream] += 1
    for stream, counters in per_stream.items():
        floors.reset(stream)
        floors.apply(stream, f"rebuild:{uuid.uuid4().hex}", counters)
    log.info("quality floors rebuilt: %s", dict(decided))
    return dict(decided)
