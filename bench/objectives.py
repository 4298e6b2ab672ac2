"""bench.quality with one configuration and an objective instead of a λ sweep: a quality floor
(``--quality-floor``), a budget (``--budget-share``), a warm start (``--warm-start FILE``,
``--split-half``).

Figures count every prompt of the stream, learning included, against the catalog reference
(the file's strongest model): *quality retained* = mean quality / the reference's mean quality
on the same prompts; *cost saved* = 1 − spend / the reference's cost on them. The floor is
*held* when the retained quality is ≥ floor − 0.005 (over the whole stream; also printed per
quarter).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.baselines import mixture_frontier
from bench.datasets import OUT, Dataset, cached_embedder, load
from bench.streaming import RouterRun, Scenario, Stream, budgeted, featurize, run_engine
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.routing.warm_start import Outcome, Record, Summary, learn_records, read_records
from conduit_workers.settings import RouterSettings

log = logging.getLogger(__name__)

TOLERANCE = 0.005  # the floor is held at ≥ floor − this (bench/README.md)


@dataclass
class Outcomes:
    quality_retained: float
    cost_saved: float
    quarters: list[float]
    spend_usd: float
    reference_usd: float
    without_reference: int = 0  # prompts the file holds no reference answer for (sparse)


def outcomes(
    run: RouterRun, ds: Dataset, stream: Stream, part: np.ndarray | None = None
) -> Outcomes:
    """The figures of the stream, or of the positions ``part`` of it (quarters: of those)."""
    pos = np.arange(stream.n) if part is None else part
    rows = stream.order[pos]
    choice = run.choice[pos]
    answered = choice >= 0  # -1: left over_budget by the ledger (no answer, no cost)
    q = np.where(answered, ds.quality[rows, choice], 0.0)
    c = np.where(answered, ds.cost[rows, choice], 0.0)
    s = ds.strongest
    # Against the reference on the same prompts: where a sparse file lacks the reference's
    # answer there is nothing to compare with, and those prompts are left out of the ratios.
    known = ds.mask[rows, s]
    qr = np.where(known, ds.quality[rows, s], 0.0)
    cr = np.where(known, ds.cost[rows, s], 0.0)
    qk, ck = np.where(known, q, 0.0), np.where(known, c, 0.0)
    quarters = []
    for quarter in np.array_split(np.arange(len(pos)), 4):
        quarters.append(float(qk[quarter].sum() / max(qr[quarter].sum(), 1e-12)))
    return Outcomes(
        float(qk.sum() / max(qr.sum(), 1e-12)),
        float(1 - ck.sum() / max(cr.sum(), 1e-12)),
        quarters,
        float(c.sum()),
        reference_usd(ds, rows),
        int(len(pos) - known.sum()),
    )


def reference_usd(ds: Dataset, rows: np.ndarray) -> float:
    """What the reference would have cost on ``rows``: where a sparse file lacks its answer, at
    its mean cost on the prompts it answered."""
    s = ds.strongest
    known = ds.mask[rows, s]
    mean = float(ds.cost[ds.mask[:, s], s].mean()) if ds.mask[:, s].any() else 0.0
    return float(np.where(known, ds.cost[rows, s], mean).sum())


def records_of(ds: Dataset) -> list[Record]:
    """A data set's prompts as warm-start records (every model it holds for each prompt)."""
    out = []
    for i in range(ds.n):
        models = {
            m: Outcome(
                float(ds.quality[i, j]),
                int(ds.in_tokens[i, j]),
                int(ds.out_tokens[i, j]),
                float(ds.cost[i, j]),
            )
            for j, m in enumerate(ds.models)
            if ds.present[i, j]
        }
        out.append(Record(ds.ids[i], ds.prompts[i], models))
    return out


def warm_loader(records: list[Record], ds: Dataset, embedder: str, summary: list[Summary]) -> Any:
    """A function that loads ``records`` into the streaming engine's store, with
    ``conduit learn``'s code (``learn_records``) and an engine that can embed."""

    def load_into(engine: RoutingEngine) -> None:
        emb = cached_embedder(ds, embedder)
        loader = RoutingEngine(
            engine.catalog, engine.store, emb, engine.settings, floor_store=engine.floors.store
        )
        summary.append(learn_records(loader, records))
        emb.save()

    return load_into


def run(args: argparse.Namespace, base: RouterSettings) -> dict[str, Any]:
    """One run with the objective the arguments name; prints its figures, returns them."""
    full = load(args.data)
    ds = full
    warm_records: list[Record] | None = None
    warm_name = None
    if args.split_half:
        order = np.random.default_rng(args.seed + 100).permutation(full.n)
        half = full.n // 2
        warm_records = records_of(full.subset(order[:half]))
        ds = full.subset(order[half:])
        warm_name = f"the other half of {full.name} ({half} prompts)"
    elif args.warm_start is not None:
        warm_records = list(read_records(Path(args.warm_start)))
        warm_name = f"{args.warm_start} ({len(warm_records)} prompts)"
    stream = Stream.make(
        ds.n, args.seed, args.feedback_rate, args.feedback_delay, args.chunk, args.limit
    )
    scen = Scenario(ds.quality[stream.order].copy())
    sub = ds.subset(stream.order)
    front = mixture_frontier(sub)
    settings = base
    budget = None
    if args.budget_share is not None:
        share = args.budget_share
        if share == "mixture95":
            best = max((t for t in front if t[0] >= 0.95 - 1e-12), key=lambda t: t[1])
            share = 1 - best[1]
        rows = stream.order
        if args.mixed_budget:  # the budget is the budgeted batch's: the even chunks'
            rows = stream.order[_halves(stream)[0]]
        budget = float(share) * reference_usd(ds, rows)
    elif args.mixed_budget:
        raise SystemExit("--mixed-budget needs --budget-share")
    # The settings' floor unless --quality-floor says otherwise (0: none), as a batch gets it;
    # a budgeted batch too is held to the default floor (README, "A quality floor and a budget").
    floor_ = base.quality_floor if args.quality_floor is None else args.quality_floor
    settings = settings.model_copy(update={"quality_floor": floor_})
    contexts, analyses = featurize(ds, stream, settings, args.embedder)
    summaries: list[Summary] = []
    warm = None
    if warm_records is not None:
        warm = warm_loader(warm_records, ds, args.embedder, summaries)
    r = run_engine(
        "router",
        ds,
        stream,
        scen,
        contexts,
        analyses,
        settings,
        args.seed,
        budget_usd=budget,
        warm=warm,
        redis=not args.in_memory,
        mixed=args.mixed_budget,
    )
    o = outcomes(r, ds, stream)
    floor = settings.quality_floor
    print(
        f"# {ds.name}: {stream.n} prompts, {len(ds.models)} models, reference "
        f"{ds.models[ds.strongest]}, feedback {args.feedback_rate:.0%} after "
        f"{args.feedback_delay} prompts, seed {args.seed}"
        + (f", warm start from {warm_name}" if warm_name else "")
    )
    if summaries:
        s = summaries[0]
        print(
            f"# warm start: {s.records} records, ratings per model "
            + ", ".join(f"{m.split('/')[-1]} {n}" for m, n in s.ratings.items())
            + (f"; unknown models skipped {s.unknown_models}" if s.unknown_models else "")
        )
    out: dict[str, Any] = {
        "quality_retained": o.quality_retained,
        "cost_saved": o.cost_saved,
        "quarters": o.quarters,
        "shares": dict(
            zip(
                ds.models,
                (
                    np.bincount(r.choice[r.choice >= 0], minlength=len(ds.models)) / stream.n
                ).tolist(),
                strict=True,
            )
        ),
    }
    print(f"quality retained {o.quality_retained:.4f}, cost saved {o.cost_saved:.1%}")
    if o.without_reference:
        print(
            f"# {o.without_reference} prompts have no answer of the reference in the file: "
            "left out of quality retained and cost saved (their answers still count in spend)"
        )
        out["without_reference"] = o.without_reference
    if floor:
        held = o.quality_retained >= floor - TOLERANCE
        qheld = [q >= floor - TOLERANCE for q in o.quarters]
        est = r.estimates[-1][1] if r.estimates else None
        print(
            f"floor {floor}: {'held' if held else 'NOT held'} over the stream "
            f"(tolerance {TOLERANCE}); quarters "
            + " ".join(f"{q:.3f}{'' if h else '!'}" for q, h in zip(o.quarters, qheld, strict=True))
            + (f"; the router's own estimate at the end {est:.3f}" if est is not None else "")
        )
        out.update(floor=floor, floor_held=held, quarters_held=qheld, estimate=est)
        out["estimates"] = r.estimates
        tag = f"{ds.name}-floor{floor:g}" + ("-split" if args.split_half else "")
        tag += ("-warm" if args.warm_start else "") + ("-budget" if budget is not None else "")
        tag += f"-seed{args.seed}" if args.seed else ""
        print(f"plot: {plot_ratio(r, ds, stream, floor, tag)}")
    if budget is not None and args.mixed_budget:
        out["mixed"] = _print_mixed(r, ds, stream, budget, floor)
    elif budget is not None:
        m_at = _mixture_quality_at(front, o.cost_saved)
        print(
            f"budget {budget:.4f} USD ({float(budget) / o.reference_usd:.1%} of the reference's "
            f"cost): spent {o.spend_usd:.4f} = {o.spend_usd / budget:.1%} of it; "
            f"hindsight mixture at the same spend retains "
            + (f"{m_at:.4f}" if m_at is not None else "—")
            + f"; {r.over_budget} prompts over_budget"
        )
        out.update(
            budget_usd=budget,
            spend_usd=o.spend_usd,
            spend_over_budget=o.spend_usd / budget,
            mixture_quality_at_spend=m_at,
            over_budget=r.over_budget,
        )
    return out


def _halves(stream: Stream) -> tuple[np.ndarray, np.ndarray]:
    """Under mixed traffic, the budgeted batch's stream positions and the other batch's."""
    pos, paying = np.arange(stream.n), budgeted(stream.n, stream.chunk)
    return pos[paying], pos[~paying]


def _print_mixed(
    run: RouterRun, ds: Dataset, stream: Stream, budget: float, floor: float | None
) -> dict[str, Any]:
    """Each batch's figures under mixed traffic: the budgeted one against its budget, the other
    against the floor they share."""
    paying, free = (outcomes(run, ds, stream, part) for part in _halves(stream))
    held = None if not floor else free.quality_retained >= floor - TOLERANCE
    print(
        f"mixed traffic, chunk by chunk: the budgeted batch retains {paying.quality_retained:.4f},"
        f" spent {paying.spend_usd / budget:.1%} of its {budget:.4f} USD; the other retains "
        f"{free.quality_retained:.4f} and saves {free.cost_saved:.1%}"
        + (f", floor {floor} {'held' if held else 'NOT held'}" if floor else "")
    )
    return {
        "budgeted": {
            "quality_retained": paying.quality_retained,
            "spend_over_budget": paying.spend_usd / budget,
        },
        "unbudgeted": {
            "quality_retained": free.quality_retained,
            "cost_saved": free.cost_saved,
            "floor_held": held,
        },
    }


def plot_ratio(run: RouterRun, ds: Dataset, stream: Stream, floor: float, tag: str) -> Path:
    """The running ratio of the stream's quality to the reference's on the same prompts (the
    truth, from every label), the router's own estimate of it (from the ratings it received),
    and the floor, against the prompts streamed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = stream.order
    known = ds.mask[rows, ds.strongest]
    q = np.cumsum(np.where((run.choice >= 0) & known, ds.quality[rows, run.choice], 0.0))
    ref = np.cumsum(np.where(known, ds.quality[rows, ds.strongest], 0.0))
    x = np.arange(1, stream.n + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(x, q / np.maximum(ref, 1e-12), label="quality / reference's (truth)")
    if run.estimates:
        ex, ey = zip(*run.estimates, strict=True)
        ax.plot(ex, ey, label="the router's estimate", linestyle="--")
    ax.axhline(floor, color="k", linewidth=0.8, label=f"floor {floor:g}")
    ax.set_ylim(max(0.0, floor - 0.15), 1.05)
    ax.set_xlabel("prompts streamed")
    ax.set_ylabel("running quality ratio")
    ax.set_title(f"{ds.name}: quality floor {floor:g} ({stream.n} prompts)")
    ax.legend(loc="lower right")
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{tag}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mixture_quality_at(front: list[tuple[float, float, str]], saved: float) -> float | None:
    ok = [t[0] for t in front if t[1] >= saved - 1e-12]
    return max(ok) if ok else None
