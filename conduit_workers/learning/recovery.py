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
from datetime import datetime

from conduit_workers.domain import floor as fl
from conduit_workers.domain.bandit import ArmStats
from conduit_workers.domain.learning import learn
from conduit_workers.domain.records import Update
from conduit_workers.domain.rewards import FeedbackEvent
from conduit_workers.errors import ConfigError
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
    warm_updates: int = 0  # of them, the warm starts' (``conduit learn``)


def replay_history(
    history: SqlHistory, dim: int, decay: float = 1.0
) -> tuple[InMemoryPosteriorStore, dict[str, list[str]], int, int]:
    """The posteriors implied by the applied feedback and the warm starts' evidence, each
    update in the order applied: (store, model -> update ids, feedback events, warm starts'
    updates)."""
    events, contexts = history.applied_feedback_with_updates()
    groups: dict[str, list[FeedbackEvent]] = defaultdict(list)
    order: list[tuple[datetime, int, str]] = []  # (applied at, 0: feedback / 1: warm, id)
    for at, update_id, ev in events:
        if update_id not in groups:
            order.append((at, 0, update_id))
        groups[update_id].append(ev)
    warm: dict[str, Update] = {}
    n_fields = len(ArmStats.zeros(dim).to_fields())
    for at, uid, model, fields in history.warm_start_updates():
        if len(fields) != n_fields:
            raise ConfigError(
                f"the warm start's update {uid} was made with another context dimension than "
                f"{dim}: load its file again with `conduit learn` instead"
            )
        warm[uid] = Update(uid, model, ArmStats.from_fields(fields, dim))
        order.append((at, 1, uid))
    order.sort(key=lambda o: (o[0], o[1]))  # stable: each kind keeps its own order
    store = InMemoryPosteriorStore()
    update_ids: dict[str, list[str]] = defaultdict(list)
    for _at, kind, uid in order:
        if kind == 1:
            up = warm[uid]
            store.apply([up], decay)
            update_ids[up.model].append(uid)
            continue
        learn(store, groups[uid], contexts, dim, uid, decay)
        for model in sorted({e.model for e in groups[uid]}):
            update_ids[model].append(f"{uid}:{model}")
    return store, dict(update_ids), len(events), len(warm)


def rebuild_posteriors(
    history: SqlHistory,
    store: RedisPosteriorStore,
    models: Sequence[str],
    dim: int,
    decay: float = 1.0,
) -> RebuildOutcome:
    """Overwrite the Redis posteriors of ``models`` with those replayed from the history."""
    replayed, update_ids, n_events, n_warm = replay_history(history, dim, decay)
    read = replayed.read(list(models), dim)
    versions = {}
    for m in models:
        version, stats = read[m]
        # The applied markers written are those of updates whose aggregate was not empty;
        # the in-memory store counts the same updates, so versions match the lost ones.
        store.replace(m, version, stats, update_ids.get(m, []))
        versions[m] = version
    log.info(
        "posteriors rebuilt from %d applied feedback events and %d warm-start updates",
        n_events,
        n_warm,
    )
    return RebuildOutcome(n_events, sum(versions.values()), versions, n_warm)


def rebuild_floors(history: SqlHistory, floors: RedisFloorStore) -> dict[str, int]:
    """Overwrite the quality floors' counters with those the history implies; returns the
    prompts decided per stream.

    Each decision made under a floor keeps its mark (stream, stratum, predictions) in the
    history, and each applied rating of its answer is there too: the counters are their sums,
    as the routers and feedback workers added them. The dual variable (λ) is path-dependent and
    not rebuilt: each stream starts again from ``floor_lambda_init``, and the router moves it
    from there. The warm starts' offline weights are summed again from the evidence they kept
    (``warm_start_updates``).
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
    offline = {fl.OFFLINE_WEIGHT + m: w for m, w in history.offline_weights().items() if w > 0}
    if offline:
        per_stream[fl.OFFLINE_STREAM] = offline
    for stream, counters in per_stream.items():
        floors.reset(stream)
        floors.apply(stream, f"rebuild:{uuid.uuid4().hex}", counters)
    log.info("quality floors rebuilt: %s", dict(decided))
    return dict(decided)
