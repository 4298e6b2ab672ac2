"""Bayesian linear regression per model, and Thompson samples from it.

A model's quality on a prompt with context ``x`` (whose first coordinate is a constant 1) is
``θ·x + noise`` with noise of standard deviation ``σ``. The prior is ``θ ~ N(m0, σ² Λ0⁻¹)`` with
``m0 = (prior_quality, 0, …)`` and ``Λ0 = diag(prior_strength, context_prior_strength, …)``,
both strengths counted in pseudo-observations. The evidence is kept as sufficient statistics
(:class:`ArmStats`): ``Σ w x xᵀ``, ``Σ w r x``, ``Σ w``, plus call counters for expected cost and
latency. Then the posterior precision is ``(Λ0 + Σ w x xᵀ)/σ²`` and its mean solves
``(Λ0 + Σ w x xᵀ) θ = Λ0 m0 + Σ w r x``.

Thompson Sampling draws, for each prompt and model, the quality ``θ̃·x`` from its posterior
predictive ``N(θ·x, σ² xᵀ(Λ0 + Σ w x xᵀ)⁻¹ x)``; the marginal is all a single decision needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

# Counters kept beside the regression statistics, in the order they are stored.
COUNTERS = ("n", "r", "rr", "calls", "errors", "latency_ms", "in_tokens", "out_tokens", "cost_usd")


@dataclass
class ArmStats:
    """Sufficient statistics of one model's evidence (or of a change to it)."""

    xx: Array  # Σ w x xᵀ, (d, d)
    xr: Array  # Σ w r x, (d,)
    counters: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0.0))

    @classmethod
    def zeros(cls, dim: int) -> ArmStats:
        return cls(np.zeros((dim, dim)), np.zeros(dim))

    @property
    def dim(self) -> int:
        return int(self.xr.shape[0])

    def add_observation(self, x: Array, reward: float, weight: float) -> None:
        if weight == 0.0:
            return
        self.xx += weight * np.outer(x, x)
        self.xr += weight * reward * x
        self.counters["n"] += weight
        self.counters["r"] += weight * reward
        self.counters["rr"] += weight * reward * reward

    def add_call(
        self, *, error: bool, latency_ms: float, in_tokens: int, out_tokens: int, cost_usd: float
    ) -> None:
        c = self.counters
        c["calls"] += 1
        c["errors"] += 1.0 if error else 0.0
        c["latency_ms"] += latency_ms
        c["in_tokens"] += in_tokens
        c["out_tokens"] += out_tokens
        c["cost_usd"] += cost_usd

    def merge(self, other: ArmStats) -> None:
        self.xx += other.xx
        self.xr += other.xr
        for k, v in other.counters.items():
            self.counters[k] = self.counters.get(k, 0.0) + v

    def is_empty(self) -> bool:
        return not any(self.counters.values())

    # The flat form that the store writes: the upper triangle of xx, then xr, then counters.
    def to_fields(self) -> dict[str, float]:
        d = self.dim
        out: dict[str, float] = {}
        iu = np.triu_indices(d)
        for i, j, v in zip(iu[0], iu[1], self.xx[iu], strict=True):
            out[f"xx:{i}:{j}"] = float(v)
        for k, v in enumerate(self.xr):
            out[f"xr:{k}"] = float(v)
        out.update(self.counters)
        return out

    @classmethod
    def from_fields(cls, fields: dict[str, float], dim: int) -> ArmStats:
        stats = cls.zeros(dim)
        for key, v in fields.items():
            if key.startswith("xx:"):
                _, i, j = key.split(":")
                stats.xx[int(i), int(j)] = stats.xx[int(j), int(i)] = v
            elif key.startswith("xr:"):
                stats.xr[int(key[3:])] = v
            elif key in stats.counters:
                stats.counters[key] = v
        return stats


@dataclass(frozen=True)
class Prior:
    prior_quality: float = 0.5
    prior_strength: float = 2.0
    context_prior_strength: float = 4.0
    noise_sd: float = 0.5

    def precision(self, dim: int) -> Array:
        diag = np.full(dim, self.context_prior_strength)
        diag[0] = self.prior_strength
        return np.diag(diag)

    def mean(self, dim: int, quality: float | None = None) -> Array:
        m0 = np.zeros(dim)
        m0[0] = self.prior_quality if quality is None else quality
        return m0


@dataclass(frozen=True)
class Posterior:
    """A model's posterior over θ: mean and the inverse of the (unscaled) precision."""

    mean: Array  # (d,)
    cov_unscaled: Array  # (Λ0 + Σ w x xᵀ)⁻¹, (d, d)
    noise_sd: float
    stats: ArmStats

    @classmethod
    def from_stats(
        cls,
        stats: ArmStats,
        prior: Prior,
        quality_prior: float | None = None,
        *,
        prior_mean: Array | None = None,
        noise_sd: float | None = None,
    ) -> Posterior:
        """The posterior of one model. ``prior_mean`` replaces ``m0`` (e.g. the peers' pooled
        estimate); ``quality_prior``, when given, still sets its first coordinate."""
        d = stats.dim
        lam0 = prior.precision(d)
        m0 = prior.mean(d) if prior_mean is None else np.array(prior_mean, dtype=float)
        if quality_prior is not None:
            m0[0] = quality_prior
        precision = lam0 + stats.xx
        rhs = lam0 @ m0 + stats.xr
        cov = np.linalg.inv(precision)
        cov = (cov + cov.T) / 2  # keep it symmetric against round-off
        sd = prior.noise_sd if noise_sd is None else noise_sd
        return cls(mean=cov @ rhs, cov_unscaled=cov, noise_sd=sd, stats=stats)

    def predict(self, contexts: Array) -> tuple[Array, Array]:
        """Mean and standard deviation of θ·x for each row of ``contexts`` (n, d)."""
        mu = contexts @ self.mean
        var = np.einsum("ij,jk,ik->i", contexts, self.cov_unscaled, contexts)
        return mu, self.noise_sd * np.sqrt(np.maximum(var, 0.0))


def pooled(stats: list[ArmStats], dim: int) -> ArmStats:
    """All models' evidence summed, as if one model had answered every prompt."""
    total = ArmStats.zeros(dim)
    for st in stats:
        total.merge(st)
    return total


def peer_prior_mean(stats: list[ArmStats], prior: Prior, dim: int) -> Array:
    """Prior mean of every model: one regression fitted to the evidence of all models together.

    This shares strength across models: a model with little evidence (new, or rarely chosen)
    starts where its peers stand on that kind of prompt instead of at a flat guess, and its own
    evidence then corrects the overall level and the contextual weights. Before any evidence at
    all it is ``m0`` of ``prior``.
    """
    return Posterior.from_stats(pooled(stats, dim), prior).mean


def price_tier_offsets(
    stats: list[ArmStats],
    log_prices: Array,
    min_models: int = 3,
    pseudo_obs: float = 5.0,
    slope_prior: float = 2.0,
) -> Array:
    """How much better than its peers each model is expected to be, from its price alone.

    A weighted least-squares line of each model's mean reward on its log price, fitted over the
    models with evidence (weight ``n/(n + pseudo_obs)``; the slope shrunk towards 0 by
    ``slope_prior`` pseudo-models), evaluated at each model's price minus the observed models'
    weighted mean. All zeros until ``min_models`` models have evidence. Where price says
    nothing about quality the fitted slope is small and so are the offsets; where it does, a
    model still unexplored starts where its price tier stands, and exploring a cheap model of a
    tier that disappoints costs less.
    """
    m = len(stats)
    n = np.array([st.counters["n"] for st in stats])
    seen = n > 1e-9
    if seen.sum() < min_models:
        return np.zeros(m)
    means = np.where(seen, np.array([st.counters["r"] for st in stats]) / np.maximum(n, 1e-9), 0.0)
    w = np.where(seen, n / (n + pseudo_obs), 0.0)
    lp_bar = float((w * log_prices).sum() / w.sum())
    y_bar = float((w * means).sum() / w.sum())
    dx = np.where(seen, log_prices - lp_bar, 0.0)
    sxx = float((w * dx * dx).sum())
    sxy = float((w * dx * (means - y_bar)).sum())
    slope = sxy / (sxx + slope_prior)
    return np.asarray(slope * (log_prices - lp_bar))


def pooled_noise_sd(
    stats: list[ArmStats], prior: Prior, pseudo_obs: float = 20.0, floor: float = 0.05
) -> float:
    """Observation noise of a quality, estimated from the spread of each model's rewards.

    The within-model variance ``Σ(rr − r²/n)/Σn`` (an upper bound on the noise of the
    regression, which explains part of it) is shrunk towards ``prior.noise_sd`` with
    ``pseudo_obs`` pseudo-observations. Mostly-correct models (quality ≈ 0.9) have a noise near
    0.3, not the 0.5 of a fair coin; a prior that assumes 0.5 explores for longer than it needs.
    """
    n = var = 0.0
    for st in stats:
        c = st.counters
        if c["n"] > 1e-9:
            var += max(c["rr"] - c["r"] ** 2 / c["n"], 0.0)
            n += c["n"]
    est = (pseudo_obs * prior.noise_sd**2 + var) / (pseudo_obs + n)
    return float(np.clip(np.sqrt(est), floor, prior.noise_sd))


def arm_noise_sd(
    stats: ArmStats, pooled_sd: float, pseudo_obs: float = 10.0, floor: float = 0.05
) -> float:
    """One model's noise: its own rewards' spread, shrunk towards the pooled estimate.

    Rewards in [0, 1] are heteroscedastic: a model right 95% of the time has a Bernoulli sd of
    0.22, one right half the time 0.5. Using each model's own spread narrows the posteriors of
    the reliable models, which are the ones the decisions hinge on.
    """
    c = stats.counters
    n = c["n"]
    var = max(c["rr"] - c["r"] ** 2 / n, 0.0) if n > 1e-9 else 0.0
    est = (pseudo_obs * pooled_sd**2 + var) / (pseudo_obs + max(n, 0.0))
    return float(np.clip(np.sqrt(est), floor, pooled_sd if n <= 1e-9 else 0.5))


def thompson_samples(
    contexts: Array,
    posteriors: list[Posterior],
    rng: np.random.Generator,
    exploration: float = 1.0,
) -> tuple[Array, Array]:
    """Sampled qualities (n, m) for n prompts and m models, and the posterior means (n, m)."""
    n = contexts.shape[0]
    means = np.empty((n, len(posteriors)))
    sds = np.empty((n, len(posteriors)))
    for j, post in enumerate(posteriors):
        means[:, j], sds[:, j] = post.predict(contexts)
    samples = means + exploration * sds * rng.standard_normal(means.shape)
    return samples, means
