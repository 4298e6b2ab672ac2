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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.baselines import Run, fixed_runs, mixture_at, mixture_frontier
from bench.datasets import catalog_for, load
from bench.plots import plot
from bench.scoring import Figures, cs_at, figures, scenario_report
from bench.streaming import Scenario, Stream, featurize, run_engine, run_linucb
from conduit_workers.routing.warm_start import DataFileError
from conduit_workers.settings import RouterSettings

log = logging.getLogger("bench.quality")

DEFAULT_LAMBDAS = (0.0, 0.02, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0)


def _pct(v: float | None) -> str:
    return "   —  " if v is None else f"{100 * v:5.1f}%"


def _short(name: str) -> str:
    return name.split("/")[-1][:14]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except DataFileError as exc:  # a bad line of --data or --warm-start: say which, no traceback
        print(f"python -m bench.quality: {exc}", file=sys.stderr)
        return 2


def _main(argv: Sequence[str] | None = None) -> int:
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
    ap.add_argument(
        "--quality-floor",
        type=float,
        default=None,
        metavar="F",
        help="one run under this quality floor (relative to the reference), no sweep",
    )
    ap.add_argument(
        "--budget-share",
        default=None,
        metavar="S",
        help="one run under a budget of S × the reference's cost on the stream ('mixture95': "
        "the hindsight mixture's spend at 95%% quality); held to the settings' floor too, as a "
        "budgeted batch is, unless --quality-floor (0: none)",
    )
    ap.add_argument(
        "--mixed-budget",
        action="store_true",
        help="with --budget-share: two batches share the router chunk by chunk, one with the "
        "budget (S × the reference's cost on its prompts), one without; each one's figures",
    )
    ap.add_argument(
        "--warm-start",
        type=Path,
        default=None,
        metavar="FILE",
        help="load FILE with `conduit learn`'s code first, then one run at the settings' "
        "floor (or --quality-floor, or under --budget-share)",
    )
    ap.add_argument(
        "--split-half",
        action="store_true",
        help="warm start from one half of --data, stream the other half",
    )
    ap.add_argument(
        "--in-memory",
        action="store_true",
        help="objective runs: posteriors and floor counters in memory instead of Redis "
        "(same code paths, faster)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    overrides: dict[str, object] = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        overrides[k] = json.loads(v)
    base = RouterSettings(embedder=args.embedder, **overrides)  # type: ignore[arg-type]
    if (
        args.quality_floor is not None
        or args.budget_share is not None
        or args.warm_start is not None
        or args.split_half
    ):
        from bench.objectives import run

        figures_ = run(args, base)
        if args.json:
            print(json.dumps({"router": figures_}))
        return 0
    # The sweep weighs cost by λ_cost: no floor.
    base = base.model_copy(update={"quality_floor": None})
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
