"""Warm start from labelled data: records in the shared schema become posterior evidence.

A record is one prompt with the measured outcome of **any subset** of the models (most logs hold
one model per prompt)::

    {"id": "q1", "prompt": "…", "models": {"<model>": {"quality": 0.8, "input_tokens": 12,
     "output_tokens": 40, "cost_usd": 0.0004}}}

:func:`learn_records` featurises the prompts with the production engine and applies, per model
of the catalog, one explicit rating per record (the quality) and one call (tokens, cost: the
expected cost of that model) through :meth:`RoutingEngine.learn`, the same atomic, idempotent
update path as live feedback. Update ids are derived from the records' content, so loading a
file twice counts once.

Robust to shift (Zhang et al. 2019): offline evidence must not hold the router hostage when the
traffic differs. So each model's offline ratings count for at most ``max_weight`` observations
in total (each weighs ``min(1, max_weight / that model's records)``): a few hundred online
ratings outweigh them, and the decay forgets them as online evidence arrives. The quality floor
is told each model's offline weight (:meth:`FloorKeeper.add_offline`) and trusts the posterior's
predictions for a model only while a stream's own ratings of its answers confirm them
(:mod:`conduit_workers.domain.floor`): a warm start from another domain changes which models are
tried first, and narrows the floor's estimate only where the stream's ratings agree with it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from conduit_workers.domain.learning import updates_for
from conduit_workers.domain.rewards import EXPLICIT, FeedbackEvent

if TYPE_CHECKING:
    from conduit_workers.domain.catalog import Catalog
    from conduit_workers.routing.engine import RoutingEngine
    from conduit_workers.settings import Settings

DEFAULT_MAX_WEIGHT = 200.0  # offline observations per model, at most, in total
CHUNK = 256  # records per update


@dataclass(frozen=True)
class Outcome:
    quality: float
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Record:
    """One labelled prompt: the outcome of each model that answered it."""

    id: str
    prompt: str
    models: dict[str, Outcome]
    source: str = ""  # the file's ``source`` (a task or subject), when it names one


@dataclass
class Summary:
    """What a warm start loaded."""

    records: int = 0
    ratings: dict[str, int] = field(default_factory=dict)  # per catalog model
    weights: dict[str, float] = field(default_factory=dict)  # weight of each offline rating
    unknown_models: dict[str, int] = field(default_factory=dict)  # not in the catalog: skipped
    updates_applied: int = 0
    updates_already_applied: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "ratings": self.ratings,
            "weights": {k: round(v, 6) for k, v in self.weights.items()},
            "unknown_models": self.unknown_models,
            "updates_applied": self.updates_applied,
            "updates_already_applied": self.updates_already_applied,
        }


class WarmStartLog(Protocol):
    """Where a warm start's updates are kept (the history database's ``add_warm_start``)."""

    def add_warm_start(
        self, updates: Sequence[tuple[str, str, dict[str, float], float]]
    ) -> None: ...


class DataFileError(ValueError):
    """A line of a data file that is not a record of the shared schema (its place and what is
    wrong): what a caller shows its user, rather than a traceback."""


def parse_record(obj: Any, where: str) -> Record:
    """One record, validated; :class:`DataFileError` naming ``where`` and what is wrong."""
    if not isinstance(obj, dict):
        raise DataFileError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise DataFileError(f"{where}: 'prompt' must be a non-empty string")
    models = obj.get("models")
    if not isinstance(models, dict) or not models:
        raise DataFileError(f"{where}: 'models' must be an object of model -> outcome")
    out: dict[str, Outcome] = {}
    for name, rec in models.items():
        if not isinstance(rec, dict):
            raise DataFileError(f"{where}: models[{name!r}] must be an object")
        q = rec.get("quality")
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
            raise DataFileError(f"{where}: models[{name!r}].quality must be in [0, 1], got {q!r}")
        cost = rec.get("cost_usd", 0.0)
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost):
            raise DataFileError(f"{where}: models[{name!r}].cost_usd must be a number")
        tin, tout = rec.get("input_tokens", 0), rec.get("output_tokens", 0)
        if not all(isinstance(t, int) and t >= 0 for t in (tin, tout)):
            raise DataFileError(f"{where}: models[{name!r}] token counts must be integers >= 0")
        out[name] = Outcome(float(q), tin, tout, float(cost))
    rid = obj.get("id")
    source = obj.get("source")
    return Record(
        str(rid) if rid is not None else where,
        prompt,
        out,
        source if isinstance(source, str) else "",
    )


def read_records(path: Path) -> Iterator[Record]:
    """The records of a JSONL file; a bad line raises :class:`DataFileError` with its line
    number."""
    with open(path, encoding="utf-8") as fh:  # not splitlines(): prompts may hold U+2028
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataFileError(f"{where}: not JSON ({exc.msg})") from None
            yield parse_record(obj, where)


def _digest(records: Sequence[Record]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(r.id.encode())
        h.update(b"\0")
        h.update(r.prompt.encode())
        for name in sorted(r.models):
            o = r.models[name]
            h.update(f"\0{name}\0{o.quality!r}\0{o.input_tokens}\0{o.output_tokens}".encode())
    return h.hexdigest()[:40]


def learn_records(
    engine: RoutingEngine,
    records: Iterable[Record],
    max_weight: float = DEFAULT_MAX_WEIGHT,
    progress: Callable[[int], None] | None = None,
    log: WarmStartLog | None = None,
) -> Summary:
    """Apply labelled records as evidence to ``engine``'s posteriors (see the module docstring).

    Records in, summary out; ``progress`` is called with the records done after each chunk.
    ``log`` (the history database) keeps each update, so that ``conduit posteriors --rebuild``
    restores it after Redis lost the posteriors.
    """
    recs = list(records)
    known = set(engine.catalog.names)
    summary = Summary(records=len(recs))
    for r in recs:
        for name in r.models:
            if name in known:
                summary.ratings[name] = summary.ratings.get(name, 0) + 1
            else:
                summary.unknown_models[name] = summary.unknown_models.get(name, 0) + 1
    summary.weights = {m: min(1.0, max_weight / n) for m, n in summary.ratings.items()}
    for start in range(0, len(recs), CHUNK):
        chunk = recs[start : start + CHUNK]
        uid = "warm:" + _digest(chunk)
        qids = [f"{uid}:{k}" for k in range(len(chunk))]
        x, _ = engine.featurize([r.prompt for r in chunk])
        contexts = {q: x[k] for k, q in enumerate(qids)}
        events = []
        for q, r in zip(qids, chunk, strict=True):
            for name, o in r.models.items():
                if name not in known:
                    continue
                events.append(
                    FeedbackEvent(
                        f"{q}:{name}",
                        q,
                        name,
                        EXPLICIT,
                        o.quality,
                        summary.weights[name],
                        is_call=True,
                        in_tokens=o.input_tokens,
                        out_tokens=o.output_tokens,
                        cost_usd=o.cost_usd,
                    )
                )
        if events:
            offline: dict[str, float] = {}
            for e in events:
                offline[e.model] = offline.get(e.model, 0.0) + e.weight
            updates = updates_for(events, contexts, engine.dim, uid)
            if log is not None:  # kept first: what the posteriors hold, the history holds
                log.add_warm_start(
                    [(u.update_id, u.model, u.delta.to_fields(), offline[u.model]) for u in updates]
                )
            engine.floors.add_offline(offline, "floor:" + uid)
            applied = engine.store.apply(updates, engine.settings.decay)
            summary.updates_applied += applied
            summary.updates_already_applied += len(updates) - applied
        if progress is not None:
            progress(min(start + CHUNK, len(recs)))
    return summary


def learn_into(
    settings: Settings,
    catalog: Catalog,
    records: Sequence[Record],
    progress: Callable[[int], None] | None = None,
    log: WarmStartLog | None = None,
) -> Summary:
    """Warm-start the deployment ``settings`` name: its Redis posteriors, its embedder (what
    ``conduit learn`` and ``conduit learn --from-history`` call)."""
    from conduit_workers.learning.posterior_store import RedisPosteriorStore
    from conduit_workers.routing.embedder import make_embedder
    from conduit_workers.routing.engine import RoutingEngine
    from conduit_workers.routing.floor_store import RedisFloorStore

    r, rs = settings.redis, settings.router
    store = RedisPosteriorStore.from_url(r.url, r.key_prefix, r.applied_ttl_s, r.socket_timeout_s)
    floors = RedisFloorStore(store.client, r.key_prefix, r.applied_ttl_s)
    embedder = make_embedder(rs.embedder, rs.static_model_dir)
    engine = RoutingEngine(catalog, store, embedder, rs, floor_store=floors)
    return learn_records(engine, records, progress=progress, log=log)
