"""Routing quality on real data: the production router against baselines, over a λ_cost sweep.

    python -m bench.quality --data ../shared/data/routellm_mmlu/routellm_mmlu.jsonl [--json]

The prompts of the file stream in a fixed shuffled order, in chunks, through the code production
runs: ``RoutingEngine.decide`` (contexts, Thompson samples, constraints), a ``RedisPosteriorStore``
(Lua updates) and ``learn`` (feedback aggregation). The LLM call is a look-up of the recorded
answer: its tokens and cost come back at once as the implicit (call) event; the dataset's quality
label of the chosen model comes back as explicit feedback for a share of the prompts, a number of
prompts later. Every figure counts every prompt of the stream, learning included.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.baselines import LinUCB, Run, fixed_runs, mixture_at, mixture_frontier, oracle_choice
from bench.datasets import OUT, Dataset, cached_embedder, catalog_for, load
from conduit_workers.adapters.posterior_store import RedisPosteriorStore
from conduit_workers.domain.bandit import Array
from conduit_workers.domain.constraints import Constraints
from conduit_workers.domain.policy import Expectations, expected_costs, reference_cost
from conduit_workers.domain.rewards import EXPLICIT, IMPLICIT, FeedbackEvent
from conduit_workers.engine import RoutingEngine, learn, update_id_for
from conduit_workers.settings import RouterSettings

log = logging.getLogger("bench.quality")

DEFAULT_LAMBDAS = (0.0, 0.02, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0)
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


def run_engine(
    name: str,
    ds: Dataset,
    stream: Stream,
    scen: Scenario,
    contexts: Array,
    analyses: list,  # type: ignore[type-arg]
    settings: RouterSettings,
    seed: int,
) -> RouterRun:
    """Stream the prompts through RoutingEngine.decide + RedisPosteriorStore + learn."""
    t0 = time.perf_counter()
    prefix = f"bench13:{uuid.uuid4().hex[:10]}"
    store = RedisPosteriorStore.from_url(REDIS_URL, prefix=prefix, applied_ttl_s=3600)
    full = catalog_for(ds)
    catalog = full
    if scen.cold is not None:
        catalog = catalog_for(ds, [m for j, m in enumerate(ds.models) if j != scen.cold])
    rng = np.random.default_rng(seed)
    engine = RoutingEngine(catalog, store, _NoEmbed(), settings, rng)
    dim = engine.dim
    model_index = {m: j for j, m in enumerate(ds.models)}
    choice = np.full(stream.n, -1)
    pending: list[tuple[int, FeedbackEvent]] = []  # (due position, explicit event)
    ctx_by_qid: dict[str, Array] = {}
    try:
        for k in range(0, stream.n, stream.chunk):
            if scen.cold is not None and k >= scen.at and catalog is not full:
                catalog = full
                engine = RoutingEngine(catalog, store, _NoEmbed(), settings, rng)
            pos = np.arange(k, min(k + stream.chunk, stream.n))
            rows = stream.order[pos]
            qids = [_qid(ds, i) for i in rows]
            texts = [ds.prompts[i] for i in rows]
            decisions = engine.decide(
                qids,
                texts,
                [Constraints()] * len(rows),
                contexts=contexts[pos],
                analyses=[analyses[p] for p in pos],
            )
            events = []
            for p, i, qid, d in zip(pos, rows, qids, decisions, strict=True):
                if d.model is None:
                    raise RuntimeError(f"unroutable without constraints: {d.reason}")
                j = model_index[d.model]
                choice[p] = j
                ctx_by_qid[qid] = contexts[p]
                events.append(
                    FeedbackEvent(
                        f"implicit:{qid}:{d.model}",
                        qid,
                        d.model,
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
                                d.model,
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
        keys = list(store.client.scan_iter(match=f"{prefix}:*", count=1000))
        for s in range(0, len(keys), 500):
            store.client.delete(*keys[s : s + 500])
    return RouterRun(name, choice, settings.lambda_cost, seconds=time.perf_counter() - t0)


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


@dataclass
class Figures:
    quality_retained: float
    cost_saved: float
    quality: float
    cost_usd: float
    shares: list[float]


def figures(run: Run, ds: Dataset, stream: Stream, scen: Scenario) -> Figures:
    pos = np.arange(stream.n)
    rows = stream.order
    q = scen.quality[pos, run.choice]
    c = ds.cost[rows, run.choice]
    s = ds.strongest
    q_ref = scen.quality[:, s].mean()
    c_ref = ds.cost[rows, s].sum()
    shares = np.bincount(run.choice, minlength=len(ds.models)) / stream.n
    return Figures(
        float(q.mean() / q_ref),
        float(1 - c.sum() / c_ref),
        float(q.mean()),
        float(c.sum()),
        shares.tolist(),
    )


def cs_at(points: Sequence[Figures], min_qr: float) -> float | None:
    ok = [f.cost_saved for f in points if f.quality_retained >= min_qr - 1e-12]
    return max(ok) if ok else None


def _pct(v: float | None) -> str:
    return "   —  " if v is None else f"{100 * v:5.1f}%"


def _short(name: str) -> str:
    return name.split("/")[-1][:14]


def plot(
    ds: Dataset,
    stream: Stream,
    scen: Scenario,
    default_runs: dict[str, Run],
    sweeps: dict[str, list[Figures]],
    fixed: dict[str, Figures],
    front: list[tuple[float, float, str]],
    tag: str,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    pos = np.arange(stream.n)
    rows = stream.order
    oracle = oracle_choice(scen.quality, ds.cost[rows])
    q_or = scen.quality[pos, oracle]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, run in default_runs.items():
        ax.plot(np.cumsum(q_or - scen.quality[pos, run.choice]), label=name)
    ax.set_xlabel("prompts streamed")
    ax.set_ylabel("cumulative quality regret vs per-prompt oracle")
    ax.set_title(f"{ds.name}: regret (default λ_cost)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p1 = OUT / f"{tag}-regret.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(
        [100 * t[1] for t in front],
        [100 * t[0] for t in front],
        "k--",
        lw=1,
        label="hindsight mixture",
    )
    for name, pts in sweeps.items():
        ax.plot(
            [100 * f.cost_saved for f in pts],
            [100 * f.quality_retained for f in pts],
            "o-",
            ms=4,
            label=f"{name} (λ sweep)",
        )
    for name, f in fixed.items():
        ax.plot(100 * f.cost_saved, 100 * f.quality_retained, "s", label=name)
    ax.axhline(95, color="grey", lw=0.5)
    ax.axhline(98, color="grey", lw=0.5)
    ax.set_xlabel("cost saved vs always-strongest (%)")
    ax.set_ylabel("quality retained (%)")
    ax.set_title(f"{ds.name}: quality–cost frontier")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p2 = OUT / f"{tag}-frontier.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


def _window_share(choice: np.ndarray, model: int, end: int, window: int) -> float:
    lo = max(0, end - window)
    return float((choice[lo:end] == model).mean()) if end > lo else 0.0


def scenario_report(
    run: Run, scen: Scenario, ds: Dataset, stream: Stream, window: int
) -> dict[str, object]:
    """Drift: prompts after the swap until the dropped model's share (trailing window) falls
    below half its share before. Cold start: prompts until the new model's share reaches half
    of the share it holds over the last quarter of the stream."""
    if scen.drift is not None:
        a = scen.drift[0]
        before = _window_share(run.choice, a, scen.at, window)
        until = None
        for t in range(scen.at + 1, stream.n + 1):
            if _window_share(
                run.choice[scen.at :], a, t - scen.at, window
            ) < before / 2 and t - scen.at >= min(window, 32):
                until = t - scen.at
                break
        after = float((run.choice[scen.at :] == a).mean())
        return {
            "model": ds.models[a],
            "share_before": before,
            "share_after": after,
            "prompts_until_share_halved": until,
        }
    if scen.cold is not None:
        c = scen.cold
        last = float((run.choice[stream.n - stream.n // 4 :] == c).mean())
        until = None
        for t in range(scen.at + 1, stream.n + 1):
            if (
                last > 0
                and _window_share(run.choice[scen.at :], c, t - scen.at, window) >= last / 2
                and t - scen.at >= min(window, 32)
            ):
                until = t - scen.at
                break
        return {
            "model": ds.models[c],
            "first_chosen_after": int(np.argmax(run.choice[scen.at :] == c))
            if (run.choice[scen.at :] == c).any()
            else None,
            "share_second_half": float((run.choice[scen.at :] == c).mean()),
            "share_last_quarter": last,
            "prompts_until_half_of_last_quarter_share": until,
        }
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.quality", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--data", required=True, type=Path, help="a JSONL file in the shared schema")
    ap.add_argument(
        "--lambda-cost",
        type=float,
        nargs="+",
        default=None,
        help=f"λ_cost values to sweep (default {' '.join(map(str, DEFAULT_LAMBDAS))} "
        "plus the router's default)",
    )
    ap.add_argument("--feedback-rate", type=float, default=0.3, help="share of prompts rated (0.3)")
    ap.add_argument(
        "--feedback-delay", type=int, default=64, help="prompts until a rating arrives (64)"
    )
    ap.add_argument("--chunk", type=int, default=32, help="prompts per routing decision call (32)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="stream only the first N prompts")
    ap.add_argument(
        "--drift",
        action="store_true",
        help="mid-stream, swap the labels of the favoured model with the worst model's",
    )
    ap.add_argument(
        "--cold-start",
        action="store_true",
        help="withhold the favoured cheaper model until mid-stream",
    )
    default_embedder = RouterSettings().embedder
    ap.add_argument(
        "--embedder",
        choices=("minilm", "static", "hashing"),
        default=default_embedder,
        help=f"prompt embedder (default {default_embedder!r}, the production RouterSettings "
        "default; outputs for other embedders get a -<embedder> suffix)",
    )
    ap.add_argument("--no-baselines", action="store_true", help="the router's sweep only")
    ap.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override RouterSettings fields (experiments)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    overrides: dict[str, object] = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        overrides[k] = json.loads(v)
    base = RouterSettings(embedder=args.embedder, **overrides)  # type: ignore[arg-type]
    default_lam = base.lambda_cost
    lambdas = sorted(set(args.lambda_cost or DEFAULT_LAMBDAS) | {default_lam})

    ds = load(args.data)
    stream = Stream.make(
        ds.n, args.seed, args.feedback_rate, args.feedback_delay, args.chunk, args.limit
    )
    quality = ds.quality[stream.order].copy()
    scen = Scenario(quality)
    at = (stream.n // 2 // stream.chunk) * stream.chunk
    catalog = catalog_for(ds)
    qm, cm = ds.quality.mean(axis=0), ds.cost.mean(axis=0)
    favoured = int(np.argmax(qm - default_lam * cm / cm[ds.strongest]))
    if args.drift:
        a = favoured
        worst = int(np.argmin(np.where(np.arange(len(qm)) == a, np.inf, qm)))
        if qm[worst] >= qm[a]:
            a, worst = ds.strongest, int(np.argmin(qm))
        quality[at:, [a, worst]] = quality[at:, [worst, a]]
        scen = Scenario(quality, drift=(a, worst), at=at)
    elif args.cold_start:
        cold = (
            favoured
            if favoured != ds.strongest
            else int(np.argsort(-(qm - default_lam * cm / cm[ds.strongest]))[1])
        )
        scen = Scenario(quality, cold=cold, at=at)

    contexts, analyses = featurize(ds, stream, base, args.embedder)
    noctx = np.zeros_like(contexts)
    noctx[:, 0] = contexts[:, 0]

    print(
        f"# {ds.name}: {stream.n} prompts, {len(ds.models)} models, "
        f"strongest {ds.models[ds.strongest]}, feedback {args.feedback_rate:.0%} "
        f"after {args.feedback_delay} prompts, chunk {args.chunk}, "
        f"seed {args.seed}, embedder {args.embedder}, context dim {contexts.shape[1]}"
    )
    print(
        "# catalog prices (USD/M in, out): "
        + ", ".join(
            f"{_short(s.name)} {s.input_price_per_mtok_usd:.3g}/{s.output_price_per_mtok_usd:.3g}"
            for s in catalog.models
        )
    )

    result: dict[str, dict[str, object]] = {}
    if args.drift or args.cold_start:
        kind = "drift" if args.drift else "cold-start"
        what = (
            f"labels of {ds.models[scen.drift[0]]} swapped with {ds.models[scen.drift[1]]}"  # type: ignore[index]
            if args.drift
            else f"{ds.models[scen.cold]} added"
        )  # type: ignore[index]
        print(f"# scenario {kind}: at prompt {at}, {what}; default λ_cost {default_lam}")
        window = max(stream.chunk * 4, 128)
        for name, ctx in (("router", contexts), ("thompson-noctx", noctx)):
            run = run_engine(name, ds, stream, scen, ctx, analyses, base, args.seed)
            f = figures(run, ds, stream, scen)
            rep = scenario_report(run, scen, ds, stream, window)
            print(f"{name:16s} QR {_pct(f.quality_retained)} CS {_pct(f.cost_saved)}  {rep}")
            result[name] = {
                "quality_retained": f.quality_retained,
                "cost_saved": f.cost_saved,
                "cs_at_95": None,
                "cs_at_98": None,
                kind: rep,
            }
        if args.json:
            print(json.dumps(result))
        return 0

    learners: dict[str, list[Figures]] = {}
    default_runs: dict[str, Run] = {}
    for name, ctx in (("router", contexts), ("thompson-noctx", noctx), ("linucb", contexts)):
        if args.no_baselines and name != "router":
            continue
        pts = []
        for lam in lambdas:
            settings = base.model_copy(update={"lambda_cost": lam})
            if name == "linucb":
                run = run_linucb(ds, stream, scen, ctx, lam, settings)
            else:
                run = run_engine(name, ds, stream, scen, ctx, analyses, settings, args.seed)
            f = figures(run, ds, stream, scen)
            pts.append(f)
            log.info("%s λ=%g: QR %.4f CS %.4f", name, lam, f.quality_retained, f.cost_saved)
            if lam == default_lam:
                default_runs[name] = run
        learners[name] = pts

    fixed: dict[str, Figures] = {}
    if not args.no_baselines:
        for run in fixed_runs(ds.subset(stream.order), np.random.default_rng(args.seed + 2)):
            fixed[run.name] = figures(run, ds, stream, scen)
            default_runs[run.name] = run
    front = mixture_frontier(ds.subset(stream.order))

    print("\n## λ_cost sweep (quality retained / cost saved)")
    print("λ_cost   " + "  ".join(f"{n:>22s}" for n in learners))
    for k, lam in enumerate(lambdas):
        mark = "*" if lam == default_lam else " "
        print(
            f"{lam:<7g}{mark} "
            + "  ".join(
                f"{_pct(pts[k].quality_retained):>10s} /{_pct(pts[k].cost_saved):>10s}"
                for pts in learners.values()
            )
        )

    print(f"\n## figures (learners at the default λ_cost {default_lam}; CS@x over the sweep)")
    print(
        f"{'policy':18s} {'quality':>8s} {'retained':>9s} {'cost saved':>10s} "
        f"{'CS@95':>7s} {'CS@98':>7s}"
    )
    rows_out: list[tuple[str, Figures, float | None, float | None]] = []
    for name, pts in learners.items():
        f = pts[lambdas.index(default_lam)]
        rows_out.append((name, f, cs_at(pts, 0.95), cs_at(pts, 0.98)))
    for name, f in fixed.items():
        rows_out.append((name, f, cs_at([f], 0.95), cs_at([f], 0.98)))
    for name, f, c95, c98 in rows_out:
        print(
            f"{name:18s} {f.quality:8.4f} {_pct(f.quality_retained):>9s} {_pct(f.cost_saved):>10s} "
            f"{_pct(c95):>7s} {_pct(c98):>7s}"
        )
        result[name] = {
            "quality_retained": f.quality_retained,
            "cost_saved": f.cost_saved,
            "cs_at_95": c95,
            "cs_at_98": c98,
            "shares": dict(zip(ds.models, f.shares, strict=True)),
        }
    m95, m98 = mixture_at(front, 0.95), mixture_at(front, 0.98)
    print(
        f"{'hindsight-mixture':18s} {'':8s} {'':9s} {'':10s} {_pct(m95[1] if m95 else None):>7s} "
        f"{_pct(m98[1] if m98 else None):>7s}   (95%: {m95[2] if m95 else '—'})"
    )
    result["hindsight-mixture"] = {
        "quality_retained": m95[0] if m95 else None,
        "cost_saved": m95[1] if m95 else None,
        "cs_at_95": m95[1] if m95 else None,
        "cs_at_98": m98[1] if m98 else None,
    }

    print("\n## routing distribution at the default λ_cost (share of prompts)")
    names = [n for n, *_ in rows_out]
    print(f"{'model':16s} " + " ".join(f"{n[:9]:>9s}" for n in names))
    for j, model in enumerate(ds.models):
        print(
            f"{_short(model):16s} "
            + " ".join(f"{100 * f.shares[j]:8.1f}%" for _, f, *_ in rows_out)
        )

    tag = (
        f"{ds.name}"
        + (f"-{args.embedder}" if args.embedder != default_embedder else "")
        + (f"-limit{args.limit}" if args.limit else "")
        + (f"-seed{args.seed}" if args.seed else "")
    )
    paths = plot(
        ds,
        stream,
        scen,
        {k: v for k, v in default_runs.items() if k != "oracle"},
        learners,
        fixed,
        front,
        tag,
    )
    print("\nplots: " + ", ".join(str(p) for p in paths))
    secs = sum(getattr(r, "seconds", 0.0) for r in default_runs.values())
    log.info("done (router run at default λ took %.1f s)", secs)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
