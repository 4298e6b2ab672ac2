"""Conduit as a library: one routing decision in-process, without Celery, a broker or a database.

::

    from conduit_workers.library import Query, Router

    router = Router()                                   # posteriors in memory
    decision = await router.route(Query(text="What is 2+2?"))
    print(decision.selected_model, decision.confidence)
    await router.feedback(decision, rating=1.0)         # explicit: quality in [0, 1]
    await router.record_call(decision, error=False, latency_ms=420, input_tokens=12,
                             output_tokens=3)           # implicit: what the call did

It is the same :class:`~conduit_workers.routing.engine.RoutingEngine` that the router workers use;
``Router(store="redis://…")`` shares the posteriors (and the quality floor's counters) with a
running Conduit deployment. By default it holds the settings' quality floor (0.95 of the
catalog reference model's quality, spending as little as it can); ``Router(quality_floor=0.9)``
sets another, ``Router(quality_floor=None)`` routes by ``lambda_cost``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from conduit_workers.domain.bandit import Array
from conduit_workers.domain.catalog import Catalog, load_catalog
from conduit_workers.domain.constraints import Constraints, parse_constraints
from conduit_workers.domain.learning import update_id_for
from conduit_workers.domain.ports import Embedder, FloorStore, PosteriorStore
from conduit_workers.domain.rewards import (
    EXPLICIT,
    FeedbackEvent,
    call_event,
    explicit_event_id,
    validate_rating,
)
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore, RedisPosteriorStore
from conduit_workers.routing.embedder import make_embedder
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.routing.floor_store import RedisFloorStore
from conduit_workers.routing.quality_floor import FloorMark
from conduit_workers.settings import Settings, environ, get_settings

CONFIDENCE_DRAWS = 64  # posterior draws behind ``Decision.confidence``
REMEMBERED = 10_000  # decisions kept for feedback (their contexts), oldest forgotten first


@dataclass(frozen=True)
class Query:
    """One prompt to route. ``constraints`` as in a JSONL line (``lambda_cost``, ``max_cost_usd``,
    ``allowed_models`` …)."""

    text: str
    constraints: Mapping[str, Any] | Constraints | None = None
    id: str | None = None


@dataclass(frozen=True)
class Decision:
    query_id: str
    selected_model: str | None  # None: no model satisfies the constraints (see ``reason``)
    # Share of posterior draws under which the selected model wins: near 1 the router is
    # sure, near 1/models it is still exploring.
    confidence: float
    ranked: tuple[str, ...]  # the feasible models by falling utility (fallback order)
    expected_cost_usd: float | None
    reason: str | None = None
    utilities: dict[str, float] = field(default_factory=dict)


class Router:
    """In-process routing over the catalog; see the module docstring."""

    def __init__(
        self,
        catalog: Catalog | str | Path | None = None,
        store: PosteriorStore | str | None = None,
        embedder: Embedder | str | None = None,
        settings: Settings | None = None,
        seed: int | None = None,
        quality_floor: float | None | Literal["settings"] = "settings",
    ) -> None:
        """``quality_floor``: keep this share of the catalog reference model's quality over the
        prompts routed (e.g. 0.95), spending as little as possible; None or 0 routes by
        ``lambda_cost`` instead; by default the settings' floor (0.95 unless configured)."""
        s = settings or get_settings()
        if quality_floor != "settings":
            floor = quality_floor or None
            if floor is not None and not 0.0 < floor <= 1.0:
                raise ValueError(f"quality_floor must be in [0, 1], got {floor!r}")
            s = s.model_copy(
                update={"router": s.router.model_copy(update={"quality_floor": floor})}
            )
        self.settings = s
        floors: FloorStore | None = None
        if catalog is None or isinstance(catalog, (str, Path)):
            catalog = load_catalog(Path(catalog or s.catalog.path), environ())
        if store is None:
            store = InMemoryPosteriorStore()
        elif isinstance(store, str):
            store = RedisPosteriorStore.from_url(
                store, s.redis.key_prefix, s.redis.applied_ttl_s, s.redis.socket_timeout_s
            )
            floors = RedisFloorStore(store.client, s.redis.key_prefix, s.redis.applied_ttl_s)
        if embedder is None or isinstance(embedder, str):
            embedder = make_embedder(embedder or s.router.embedder)
        rng = np.random.default_rng(seed if seed is not None else s.router.seed)
        self.catalog = catalog
        self.engine = RoutingEngine(catalog, store, embedder, s.router, rng=rng, floor_store=floors)
        # Per routed prompt: its context, the model chosen, its floor stream and stratum.
        self._contexts: OrderedDict[str, tuple[Array, str | None, FloorMark | None]] = OrderedDict()
        self._lock = asyncio.Lock()

    async def route(self, query: Query | str) -> Decision:
        """Choose a model for one prompt."""
        return (await self.route_many([query]))[0]

    async def route_many(self, queries: Sequence[Query | str]) -> list[Decision]:
        """Choose a model for each prompt (one forward pass of the encoder for all)."""
        qs = [Query(text=q) if isinstance(q, str) else q for q in queries]
        async with self._lock:  # the engine's cache and random generator are not shared safely
            return await asyncio.to_thread(self._decide, qs)

    def _decide(self, qs: list[Query]) -> list[Decision]:
        known = frozenset(self.catalog.names)
        cons = [
            q.constraints
            if isinstance(q.constraints, Constraints)
            else parse_constraints(dict(q.constraints or {}), known)
            for q in qs
        ]
        ids = [q.id or uuid.uuid4().hex for q in qs]
        texts = [q.text for q in qs]
        contexts, analyses = self.engine.featurize(texts)
        rows = self.engine.decide(ids, texts, cons, contexts, analyses)
        # Confidence: how often the chosen model wins over fresh posterior draws.
        k = CONFIDENCE_DRAWS
        rep = np.repeat(contexts, k, axis=0)
        draws = self.engine.decide(
            [f"{i}:{j}" for i in ids for j in range(k)],
            [t for t in texts for _ in range(k)],
            [c for c in cons for _ in range(k)],
            rep,
            [a for a in analyses for _ in range(k)],
            hold_floor=False,
        )
        out = []
        for n, (qid, row) in enumerate(zip(ids, rows, strict=True)):
            wins = sum(d.model == row.model for d in draws[n * k : (n + 1) * k])
            self._remember(qid, contexts[n], row.model, row.floor)
            out.append(
                Decision(
                    qid,
                    row.model,
                    wins / k if row.model else 0.0,
                    tuple(row.ranked),
                    row.expected_cost_usd,
                    row.reason,
                    dict(row.utilities),
                )
            )
        return out

    def _remember(
        self, qid: str, context: Array, model: str | None, floor: FloorMark | None
    ) -> None:
        self._contexts[qid] = (context, model, floor)
        self._contexts.move_to_end(qid)
        while len(self._contexts) > REMEMBERED:
            self._contexts.popitem(last=False)

    async def feedback(
        self, decision: Decision | str, rating: float, model: str | None = None
    ) -> bool:
        """An explicit rating in [0, 1] of the answer to a routed prompt; once per prompt.
        Returns False when this prompt was rated already."""
        qid, chosen = self._target(decision, model)
        value = validate_rating(rating)
        event = FeedbackEvent(explicit_event_id(qid), qid, chosen, EXPLICIT, value, 1.0)
        applied = await self._learn([event], qid)
        remembered = self._contexts.get(qid)
        if applied and remembered is not None and remembered[2] is not None:
            if model is None or model == remembered[1]:  # the floor counts the answer given
                async with self._lock:
                    await asyncio.to_thread(
                        self.engine.rate_floors, [(remembered[2], value)], event.id
                    )
        return applied

    async def record_call(
        self,
        decision: Decision | str,
        *,
        error: bool,
        latency_ms: float = 0.0,
        input_tokens: int = 0,
        output_tokens: int = 0,
        model: str | None = None,
    ) -> bool:
        """What calling the model did (implicit feedback): an error counts as poor quality;
        latency and tokens feed the expected latency and cost."""
        qid, chosen = self._target(decision, model)
        cost = 0.0 if error else self.catalog.get(chosen).cost_usd(input_tokens, output_tokens)
        event = call_event(
            qid,
            chosen,
            self.settings.feedback.call_weights,
            error=error,
            latency_ms=latency_ms,
            in_tokens=input_tokens,
            out_tokens=output_tokens,
            cost_usd=cost,
        )
        return await self._learn([event], qid)

    def _target(self, decision: Decision | str, model: str | None) -> tuple[str, str]:
        qid = decision.query_id if isinstance(decision, Decision) else decision
        remembered = self._contexts.get(qid)
        chosen = model or (remembered[1] if remembered else None)
        if chosen is None:
            raise ValueError(f"no routed prompt {qid!r} with a model; pass model=")
        self.catalog.get(chosen)
        return qid, chosen

    async def _learn(self, events: list[FeedbackEvent], qid: str) -> bool:
        remembered = self._contexts.get(qid)
        contexts = {qid: remembered[0]} if remembered else {}
        async with self._lock:
            applied = await asyncio.to_thread(
                self.engine.learn, events, contexts, update_id_for([e.id for e in events])
            )
        return applied > 0


__all__ = ["Router", "Query", "Decision"]
