"""The quality bench's plots: cumulative regret against the per-prompt oracle, and the
quality–cost frontier of the λ_cost sweeps, fixed policies and the hindsight mixture
(PNG files under ``bench/out``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.baselines import Run, oracle_choice
from bench.datasets import OUT, Dataset
from bench.scoring import Figures
from bench.streaming import Scenario, Stream


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
