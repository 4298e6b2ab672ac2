"""Baselines of the routing-quality benchmark: fixed policies, the oracle, the hindsight mixture
and LinUCB (a contextual learner that is not Thompson Sampling)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.datasets import Dataset
from conduit_workers.domain.bandit import Array


@dataclass
class Run:
    """What a policy chose on each prompt of the stream (indices into the dataset's models)."""

    name: str
    choice: np.ndarray  # (n,) model index per stream position
    lam: float | None = None


def oracle_choice(q: Array, c: Array) -> np.ndarray:
    """Per prompt, the cheapest model among those of the best quality."""
    best = q.max(axis=1, keepdims=True)
    masked = np.where(q >= best - 1e-12, c, np.inf)
    return np.argmin(masked, axis=1)


def fixed_runs(ds: Dataset, rng: np.random.Generator) -> list[Run]:
    n, m = ds.quality.shape
    return [
        Run("random", rng.integers(0, m, size=n)),
        Run("always-cheapest", np.full(n, ds.cheapest)),
        Run("always-strongest", np.full(n, ds.strongest)),
        Run("oracle", oracle_choice(ds.quality, ds.cost)),
    ]


def mixture_frontier(ds: Dataset) -> list[tuple[float, float, str]]:
    """(quality retained, cost saved, label) along the best random mix of two models, with each
    model's mean quality and cost known in hindsight (the upper hull of the models' points)."""
    q, c = ds.model_means()  # over the prompts each model answered (a sparse file lacks some)
    qs, cs = q[ds.strongest], c[ds.strongest]
    pts = []
    for a in range(len(q)):
        for b in range(len(q)):
            for p in np.linspace(0, 1, 101):
                qq = p * q[a] + (1 - p) * q[b]
                cc = p * c[a] + (1 - p) * c[b]
                label = (
                    f"always {ds.models[a if p > 0.5 else b]}"
                    if a == b or p in (0.0, 1.0)
                    else f"{p:.2f}×{ds.models[a]} + {1 - p:.2f}×{ds.models[b]}"
                )
                pts.append((qq / qs, 1 - cc / cs, label))
    # keep the Pareto-optimal points
    pts.sort(key=lambda t: (-t[1], -t[0]))
    front, best_q = [], -np.inf
    for t in pts:
        if t[0] > best_q + 1e-12:
            front.append(t)
            best_q = t[0]
    return front


def mixture_at(
    front: list[tuple[float, float, str]], min_qr: float
) -> tuple[float, float, str] | None:
    ok = [t for t in front if t[0] >= min_qr - 1e-12]
    return max(ok, key=lambda t: t[1]) if ok else None


class LinUCB:
    """Disjoint LinUCB (Li et al. 2010) on the router's contexts, trading off the same expected
    cost: picks argmax of ``θ·x + α·√(xᵀA⁻¹x) − λ·cost/reference``."""

    def __init__(self, m: int, dim: int, alpha: float = 0.5, ridge: float = 1.0) -> None:
        self.a_inv = np.stack([np.eye(dim) / ridge for _ in range(m)])
        self.b = np.zeros((m, dim))
        self.alpha = alpha

    def scores(self, x: Array) -> Array:
        theta = np.einsum("mij,mj->mi", self.a_inv, self.b)  # (m, d)
        mu = x @ theta.T  # (n, m)
        var = np.einsum("nd,mde,ne->nm", x, self.a_inv, x)
        return np.asarray(mu + self.alpha * np.sqrt(np.maximum(var, 0.0)))

    def update(self, j: int, x: Array, r: float) -> None:
        a = self.a_inv[j]
        ax = a @ x
        self.a_inv[j] = a - np.outer(ax, ax) / (1.0 + x @ ax)  # Sherman–Morrison
        self.b[j] += r * x
