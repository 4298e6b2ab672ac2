"""From sampled qualities to a decision: utility, constraints, ranking.

The utility maximised for a prompt is
``sampled quality − λ_cost · cost / dearest cost − λ_latency · latency / slowest latency``,
with cost and latency *expected* from the catalog price and what each model has been seen to do
(tokens, latency), so the bandit learns quality alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from conduit_workers.domain.bandit import ArmStats, Array
from conduit_workers.domain.catalog import ModelSpec
from conduit_workers.domain.constraints import Constraints

CHARS_PER_TOKEN = 4.0
SUCCESS_PSEUDO_CALLS = 2.0  # rough tokens of a prompt before any call has been seen


@dataclass(frozen=True)
class Expectations:
    """Expected output tokens, latency and success rate of one model, from its observed calls.

    A failed call yields nothing, so the quality a prompt can expect from a model is its
    sampled quality times ``success_rate``: errors steer traffic away without being mistaken
    for (and pooled with) evidence of answer quality.
    """

    out_tokens: float
    latency_ms: float
    success_rate: float = 1.0

    @classmethod
    def from_stats(
        cls, stats: ArmStats, spec: ModelSpec, default_out_tokens: float, default_latency_ms: float
    ) -> Expectations:
        calls = stats.counters.get("calls", 0.0)
        prior_latency = spec.expected_latency_ms or default_latency_ms
        if calls <= 0:
            return cls(default_out_tokens, prior_latency)
        # Shrink towards the prior with one pseudo-call, so one odd call does not decide.
        out = (stats.counters["out_tokens"] + default_out_tokens) / (calls + 1)
        lat = (stats.counters["latency_ms"] + prior_latency) / (calls + 1)
        # Two pseudo-calls that succeeded: a new model is trusted, a failing one loses traffic
        # within a few calls, and decay lets it back once it recovers.
        ok = max(0.0, calls - stats.counters.get("errors", 0.0))
        return cls(out, lat, (ok + SUCCESS_PSEUDO_CALLS) / (calls + SUCCESS_PSEUDO_CALLS))


def expected_input_tokens(prompt_chars: Array) -> Array:
    return np.ceil(prompt_chars / CHARS_PER_TOKEN) + 8  # a few tokens of chat framing


def expected_costs(prompt_chars: Array, specs: list[ModelSpec], exp: list[Expectations]) -> Array:
    """Expected USD cost (n, m) of sending each prompt to each model."""
    tin = expected_input_tokens(prompt_chars)[:, None]
    pin = np.array([s.input_price_per_mtok_usd for s in specs])[None, :]
    pout = np.array([s.output_price_per_mtok_usd for s in specs])[None, :]
    tout = np.array([e.out_tokens for e in exp])[None, :]
    return np.asarray((tin * pin + tout * pout) / 1e6)


def reference_cost(
    typical_in_tokens: float,
    specs: list[ModelSpec],
    exp: list[Expectations],
    reference: str | None = None,
) -> float:
    """The unit that ``λ_cost`` weighs: the expected cost of the catalog's reference model
    ("always the strongest", what savings are measured against) on a typical prompt, or of the
    dearest model when there is no reference.

    One scale for every prompt of the stream (not each prompt's own dearest cost), so that a
    long prompt, where the cheap model saves more dollars, leans further to it: the utility
    then maximises quality for the total spend. The reference rather than the dearest, so that
    one odd price (a model billed per request, a model never called whose output length is
    still a guess) does not flatten every other cost difference.
    """
    costs = {
        s.name: (
            typical_in_tokens * s.input_price_per_mtok_usd
            + e.out_tokens * s.output_price_per_mtok_usd
        )
        / 1e6
        for s, e in zip(specs, exp, strict=True)
    }
    scale = costs[reference] if reference in costs else max(costs.values())
    return max(scale, 1e-12)


@dataclass(frozen=True)
class Choice:
    """The decision for one prompt: the model, and the feasible rest by falling utility."""

    model: str | None
    ranked: tuple[str, ...]
    utility: dict[str, float]
    reason: str | None = None  # why no model could take it, when ``model`` is None


def choose(
    samples: Array,
    means: Array,
    costs: Array,
    latencies: Array,
    specs: list[ModelSpec],
    constraints: list[Constraints],
    default_lambda_cost: float,
    default_lambda_latency: float,
    cost_scale: float | None = None,
) -> list[Choice]:
    """One :class:`Choice` per prompt (rows of ``samples``, shape (n, m)).

    Cost is weighed relative to ``cost_scale`` (see :func:`reference_cost`); without one, relative
    to each prompt's dearest expected cost.
    """
    names = [s.name for s in specs]
    providers = [s.provider for s in specs]
    if cost_scale is None:
        scale = np.maximum(costs.max(axis=1, keepdims=True), 1e-12)
    else:
        scale = np.full((costs.shape[0], 1), max(cost_scale, 1e-12))
    lat_scale = max(float(latencies.max()), 1e-9)
    n = samples.shape[0]
    # The utilities of the whole chunk at once (the same operations, in the same order, as
    # one prompt at a time: the same floats), and each row's ranking by one stable argsort.
    lcs = np.array(
        [default_lambda_cost if c.lambda_cost is None else c.lambda_cost for c in constraints],
        dtype=float,
    )[:, None]
    lls = np.array(
        [
            default_lambda_latency if c.lambda_latency is None else c.lambda_latency
            for c in constraints
        ],
        dtype=float,
    )[:, None]
    utils = samples - lcs * costs / scale - lls * latencies[None, :] / lat_scale
    orders = np.argsort(-utils, axis=1, kind="stable").tolist()
    util_rows = utils.tolist()
    out: list[Choice] = []
    for i in range(n):
        c = constraints[i]
        utilities = dict(zip(names, util_rows[i], strict=True))
        if not c.restricts and names:
            order = orders[i]
            out.append(Choice(names[order[0]], tuple(names[j] for j in order), utilities))
            continue
        feasible = np.ones(len(names), dtype=bool)
        reasons = []
        if c.allowed_models is not None:
            feasible &= np.array([n in c.allowed_models for n in names])
            reasons.append(f"allowed_models={list(c.allowed_models)}")
        if c.allowed_providers is not None:
            feasible &= np.array([p in c.allowed_providers for p in providers])
            reasons.append(f"allowed_providers={list(c.allowed_providers)}")
        if c.max_cost_usd is not None:
            feasible &= costs[i] <= c.max_cost_usd
            reasons.append(
                f"max_cost_usd={c.max_cost_usd:g} (cheapest expected {costs[i].min():.6f})"
            )
        if c.max_latency_ms is not None:
            feasible &= latencies <= c.max_latency_ms
            reasons.append(
                f"max_latency_ms={c.max_latency_ms:g} (fastest expected {latencies.min():.0f})"
            )
        if c.min_quality is not None:
            feasible &= means[i] >= c.min_quality
            reasons.append(f"min_quality={c.min_quality:g} (best expected {means[i].max():.2f})")
        if not feasible.any():
            out.append(Choice(None, (), utilities, "no model satisfies " + ", ".join(reasons)))
            continue
        order = [j for j in orders[i] if feasible[j]]
        out.append(Choice(names[order[0]], tuple(names[j] for j in order), utilities))
    return out
