"""The quality bench's stream and the runs over it: prompt order and feedback schedule
(``Stream``), mid-stream changes (``Scenario``), contexts computed once by the production engine
(``featurize``), and the learners streamed over them: the production router
(``RoutingEngine.decide`` + ``RedisPosteriorStore`` + ``learn``, ``run_engine``) and LinUCB
(``run_linucb``). Used by ``bench.quality`` and ``bench.probe``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from bench.baselines import LinUCB, Run
from bench.datasets import Dataset, cached_embedder, catalog_for
from conduit_workers.domain import floor as fl
from conduit_workers.domain.bandit import Array
from conduit_workers.domain.budget import allowance_usd
from conduit_workers.domain.constraints import Constraints
from conduit_workers.domain.learning import learn, update_id_for
from conduit_workers.domain.policy import Expectations, expected_costs, reference_cost
from conduit_workers.domain.ports import FloorStore, PosteriorStore
from conduit_workers.domain.rewards import EXPLICIT, IMPLICIT, FeedbackEvent
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore, RedisPosteriorStore
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.routing.floor_store import InMemoryFloorStore, RedisFloorStore
from conduit_workers.routing.quality_floor import (
    FloorMark,
    params_for,
    quality_ratio,
    stream_key,
)
from conduit_workers.settings import RouterSettings

log = logging.getLogger(__name__)

REDIS_URL = "redis://127.0.0.1:6379/13"


@dataclass
class Stream:
    """The fixed order of the prompts and which of them get an explicit rating, and when."""

    order: np.ndarray  # stream position -> dataset row
    rated: np.ndarray  # (n,) bool per stream position
    delay: int  # prompts between a decision and its rating
    chunk: int

    @classmethod
    def make(
        cls, n: int, seed: int, rate: float, delay: int, chunk: int, limit: int | None
    ) -> Stream:
        order = np.random.default_rng(seed).permutation(n)
        if limit:
            order = order[:limit]
        rated = np.random.default_rng(seed + 1).random(len(order)) < rate
        return cls(order, rated, delay, chunk)

    @property
    def n(self) -> int:
        return len(self.order)


@dataclass
class Scenario:
    """Mid-stream changes: a model's labels swapped (drift) or a model added (cold start)."""

    quality: Array  # (n, m) labels per stream position, after any swap
    drift: tuple[int, int] | None = None  # (model whose quality drops, model it swaps with)
    cold: int | None = None  # model absent from the catalog until the midpoint
    at: int = 0  # stream position of the change


def _qid(ds: Dataset, row: int) -> str:
    return f"{ds.ids[row]}#{row}"


def featurize(
    ds: Dataset, stream: Stream, settings: RouterSettings, embedder_name: str
) -> tuple[Array, list]:  # type: ignore[type-arg]
    """Contexts of the stream, computed once by the production engine, chunk by chunk in order
    (the shared-prefix memory of the engine is built as production would build it)."""
    emb = cached_embedder(ds, embedder_name)
    # First pass: the texts the engine will embed; embed the missing ones in one call, sorted by
    # length (a 32-prompt chunk pads to its longest prompt: ten times slower on MMLU).
    probe = RoutingEngine(catalog_for(ds), _NullStore(), emb, settings)
    wanted = []
    for k in range(0, stream.n, stream.chunk):
        wanted.extend(
            probe.embedding_texts([ds.prompts[i] for i in stream.order[k : k + stream.chunk]])
        )
    for k in range(0, len(wanted), 4096):  # save now and then: a long first run can be resumed
        emb.embed(wanted[k : k + 4096])
        emb.save()
    eng = RoutingEngine(catalog_for(ds), _NullStore(), emb, settings)
    ctx, analyses = [], []
    t0 = time.perf_counter()
    for k in range(0, stream.n, stream.chunk):
        rows = stream.order[k : k + stream.chunk]
        x, an = eng.featurize([ds.prompts[i] for i in rows])
        ctx.append(x)
        analyses.extend(an)
    emb.save()
    log.info("featurized %d prompts in %.1f s", stream.n, time.perf_counter() - t0)
    return np.vstack(ctx), analyses


class _NullStore:
    def read(self, models, dim):  # type: ignore[no-untyped-def]
        raise AssertionError("featurize only")

    def apply(self, updates, decay=1.0):  # type: ignore[no-untyped-def]
        raise AssertionError("featurize only")

    def reset(self, models):  # type: ignore[no-untyped-def]
        pass


@dataclass
class RouterRun(Run):
    shares_by_chunk: list[Array] = field(default_factory=list)
    seconds: float = 0.0
    estimates: list[tuple[int, float]] = field(default_factory=list)
    spent_usd: float = 0.0
    over_budget: int = 0  # prompts the budget's ledger left unanswered (choice −1)


def run_engine(
    name: str,
    ds: Dataset,
    stream: Stream,
    scen: Scenario,
    contexts: Array,
    analyses: list,  # type: ignore[type-arg]
    settings: RouterSettings,
    seed: int,
    budget_usd: float | None = None,
    warm: Callable[[RoutingEngine], object] | None = None,
    redis: bool = True,
    mixed: bool = False,
) -> RouterRun:
    """Stream the prompts through RoutingEngine.decide + RedisPosteriorStore + learn.

    Under a quality floor (``settings.quality_floor``) the floor's counters live in a
    ``RedisFloorStore`` beside the posteriors, and the ratings of answers given under the floor
    feed it as they arrive. With ``budget_usd``, every chunk gets the allowance the router
    worker passes: what remains of the budget (spent = the recorded costs so far) × the chunk's
    share of the prompts still to route. ``warm`` is applied to the engine before the stream
    (a warm start). ``redis=False`` keeps both stores in memory (same code paths, faster).
    ``mixed``: two batches share the router, chunk by chunk; the even chunks (:func:`budgeted`)
    are a batch with the budget, the odd ones a batch without one.
    """
    t0 = time.perf_counter()
    prefix = f"bench13:{uuid.uuid4().hex[:10]}"
    store: PosteriorStore
    floors: FloorStore
    if redis:
        store = RedisPosteriorStore.from_url(REDIS_URL, prefix=prefix, applied_ttl_s=3600)
        floors = RedisFloorStore(store.client, prefix, 3600)  # type: ignore[attr-defined]
    else:
        store, floors = InMemoryPosteriorStore(), InMemoryFloorStore()
    full = catalog_for(ds)
    catalog = full
    if scen.cold is not None:
        catalog = catalog_for(ds, [m for j, m in enumerate(ds.models) if j != scen.cold])
    rng = np.random.default_rng(seed)
    engine = RoutingEngine(catalog, store, _NoEmbed(), settings, rng, floors)
    if warm is not None:
        warm(engine)
    dim = engine.dim
    spent = 0.0
    over_budget = 0
    estimates: list[tuple[int, float]] = []  # (prompts decided, the floor's estimated ratio)
    model_index = {m: j for j, m in enumerate(ds.models)}
    choice = np.full(stream.n, -1)
    pays = budgeted(stream.n, stream.chunk) if mixed else np.ones(stream.n, dtype=bool)
    pending: list[tuple[int, FeedbackEvent]] = []  # (due position, explicit event)
    floor_pending: list[tuple[int, tuple[FloorMark, float]]] = []  # ratings for the floor
    ctx_by_qid: dict[str, Array] = {}
    try:
        for k in range(0, stream.n, stream.chunk):
            if scen.cold is not None and k >= scen.at and catalog is not full:
                catalog = full
                engine = RoutingEngine(catalog, store, _NoEmbed(), settings, rng, floors)
            pos = np.arange(k, min(k + stream.chunk, stream.n))
            rows = stream.order[pos]
            qids = [_qid(ds, i) for i in rows]
            texts = [ds.prompts[i] for i in rows]
            allowance = None
            paying = budget_usd is not None and bool(pays[k])
            if paying and budget_usd is not None:  # the budgeted prompts still to route:
                allowance = allowance_usd(budget_usd - spent, len(pos), int(pays[k:].sum()))
            cons = [Constraints()] * len(rows)
            if ds.sparse:  # a prompt cannot go to a model the file has no answer of
                cons = [
                    Constraints(
                        allowed_models=tuple(
                            m for m, ok in zip(ds.models, ds.mask[i], strict=True) if ok
                        )
                    )
                    for i in rows
                ]
            decisions = engine.decide(
                qids,
                texts,
                cons,
                contexts=contexts[pos],
                analyses=[analyses[p] for p in pos],
                allowance_usd=allowance,
            )
            events = []
            floor_due: list[tuple[int, tuple[FloorMark, float]]] = []
            for p, i, qid, d in zip(pos, rows, qids, decisions, strict=True):
                if d.model is None:
                    raise RuntimeError(f"unroutable without constraints: {d.reason}")
                j = model_index[d.model]
                if paying and budget_usd is not None and spent + ds.cost[i, j] > budget_usd:
                    # The executor's ledger: the best model of the ranking that still fits,
                    # else the prompt ends over_budget (no call, no answer).
                    fits = [
                        model_index[m]
                        for m in d.ranked
                        if spent + ds.cost[i, model_index[m]] <= budget_usd
                    ]
                    if not fits:
                        over_budget += 1
                        continue
                    j = fits[0]
                choice[p] = j
                if pays[k]:  # under mixed traffic, what the budget paid
                    spent += float(ds.cost[i, j])
                if d.floor is not None and stream.rated[p] and ds.models[j] == d.model:
                    floor_due.append((p + stream.delay, (d.floor, float(scen.quality[p, j]))))
                ctx_by_qid[qid] = contexts[p]
                events.append(
                    FeedbackEvent(
                        f"implicit:{qid}:{ds.models[j]}",
                        qid,
                        ds.models[j],
                        IMPLICIT,
                        1.0,
                        0.0,
                        is_call=True,
                        in_tokens=int(ds.in_tokens[i, j]),
                        out_tokens=int(ds.out_tokens[i, j]),
                        cost_usd=float(ds.cost[i, j]),
                    )
                )
                if stream.rated[p]:
                    pending.append(
                        (
                            p + stream.delay,
                            FeedbackEvent(
                                f"explicit:{qid}",
                                qid,
                                ds.models[j],
                                EXPLICIT,
                                float(scen.quality[p, j]),
                                1.0,
                            ),
                        )
                    )
            now = pos[-1] + 1
            due = [e for t, e in pending if t < now]
            pending = [(t, e) for t, e in pending if t >= now]
            events.extend(due)
            floor_pending.extend(floor_due)
            rated_now = [r for t, r in floor_pending if t < now]
            floor_pending = [(t, r) for t, r in floor_pending if t >= now]
            if rated_now:
                engine.rate_floors(rated_now, f"c{k}")
            est = _floor_estimate(engine, settings)
            if est is not None:
                estimates.append((int(now), est))
            learn(
                store,
                events,
                ctx_by_qid,
                dim,
                update_id_for([e.id for e in events]),
                settings.decay,
            )
            for e in due:  # a rated prompt's context is needed no more
                ctx_by_qid.pop(e.query_id, None)
            for p, qid in zip(pos, qids, strict=True):
                if not stream.rated[p]:
                    ctx_by_qid.pop(qid, None)
    finally:
        if isinstance(store, RedisPosteriorStore):
            keys = list(store.client.scan_iter(match=f"{prefix}:*", count=1000))
            for s in range(0, len(keys), 500):
                store.client.delete(*keys[s : s + 500])
    return RouterRun(
        name,
        choice,
        settings.lambda_cost,
        seconds=time.perf_counter() - t0,
        estimates=estimates,
        spent_usd=spent,
        over_budget=over_budget,
    )


def budgeted(n: int, chunk: int) -> Array:
    """Under ``mixed`` traffic, which of ``n`` stream positions belong to the budgeted batch:
    the even chunks."""
    return np.asarray((np.arange(n) // chunk) % 2 == 0)


def _floor_estimate(engine: RoutingEngine, settings: RouterSettings) -> float | None:
    """The default floor stream's own estimate of its quality ratio to the reference."""
    if not settings.quality_floor:
        return None
    key = stream_key(None, settings.quality_floor)
    counts = fl.FloorCounts.of(engine.floors.store.read(key))
    now = quality_ratio(counts, params_for(settings.quality_floor, settings))
    return None if now is None else now[0]


class _NoEmbed:
    """The benchmark hands the engine precomputed contexts; it never embeds during a run."""

    dim = 384

    def embed(self, texts: list[str]) -> Array:
        raise AssertionError("contexts are precomputed")


def run_linucb(
    ds: Dataset,
    stream: Stream,
    scen: Scenario,
    contexts: Array,
    lam: float,
    settings: RouterSettings,
) -> Run:
    """LinUCB on the same contexts, feedback schedule and expected costs as the router."""
    catalog = catalog_for(ds)
    specs = list(catalog.models)
    m = len(specs)
    agent = LinUCB(m, contexts.shape[1])
    out_tok = np.zeros(m)
    calls = np.zeros(m)
    in_tok_total = 0.0
    choice = np.full(stream.n, -1)
    pending: list[tuple[int, int, int]] = []
    for k in range(0, stream.n, stream.chunk):
        pos = np.arange(k, min(k + stream.chunk, stream.n))
        rows = stream.order[pos]
        exps = [
            Expectations((out_tok[j] + settings.default_output_tokens) / (calls[j] + 1), 0.0)
            for j in range(m)
        ]
        chars = np.array([len(ds.prompts[i]) for i in rows], dtype=float)
        costs = expected_costs(chars, specs, exps)
        typical = (
            in_tok_total / calls.sum() if calls.sum() else float(np.ceil(chars / 4).mean() + 8)
        )
        ref = reference_cost(typical, specs, exps, catalog.reference)
        util = agent.scores(contexts[pos]) - lam * costs / ref
        picks = np.argmax(util, axis=1)
        for p, i, j in zip(pos, rows, picks, strict=True):
            choice[p] = j
            out_tok[j] += ds.out_tokens[i, j]
            in_tok_total += ds.in_tokens[i, j]
            calls[j] += 1
            if stream.rated[p]:
                pending.append((p + stream.delay, p, int(j)))
        now = pos[-1] + 1
        for _, p, j in [t for t in pending if t[0] < now]:
            agent.update(j, contexts[p], float(scen.quality[p, j]))
        pending = [t for t in pending if t[0] >= now]
    return Run("linucb", choice, lam)
