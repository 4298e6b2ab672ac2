"""A quality floor held over a whole stream: "keep ``F`` of the reference model's quality".

The constraint is on the stream's totals, learning included::

    S = Σ_prompts q(chosen answer) − F · Σ_prompts q(reference's answer on that prompt) ≥ 0

Neither side is known; both are estimated from the ratings received (a random share of the
answers), never from labels the router has not seen, and never from the posteriors' predictions
(which lean on the peers' prior where the reference is rarely chosen, and on the winner's curse
where a model is chosen because its sample was high: the estimate then reads ≥ F while the
truth is far below).

* ``Σ q(chosen)`` is stratified by *why* each prompt went where it did (its **stratum**): the
  reference chosen without looking at the prompt (``ref:audit``: the opening prompts, while
  nothing is known, and a small random share afterwards), the reference chosen by the policy
  (``ref:policy``), or another model ``alt:<model>``. Per stratum, the mean of the ratings of
  its answers times the prompts decided in it. Stratifying keeps the estimate unbiased while
  the mix moves (recent prompts, not yet rated, went elsewhere than the old rated ones).
* ``Σ q(reference)`` is known where the reference answered (the reference strata); where another
  model answered it is a counterfactual, estimated by a *calibration* fitted on this stream's
  own ratings of reference answers only: ``q_ref ≈ a + b·p`` with ``p`` the posterior's
  prediction of the reference's quality on that prompt at decision time. So the posterior
  (whatever it leans on: the peers' prior, offline evidence) only ranks prompts; the level is
  this stream's, and the audits keep the calibration honest over every kind of prompt.

The estimate's variance follows from the strata (each mean shrunk towards a prior with a few
pseudo-ratings of variance 1/4). Decisions (:func:`gate`):

* **conservative exploration** (Wu et al. 2016; Kazerouni et al. 2017): the router starts from
  the reference; a prompt may go elsewhere only while the pessimistic slack
  ``S − z·sd(S)``, with that prompt counted, stays ≥ 0. Each reference answer earns
  ``(1 − F)·q_ref`` of slack; a model without ratings is valued at the pessimistic prior, so
  trying one costs several reference answers' worth of slack and a dozen are not all tried;
* **a dual variable** on cost (primal–dual): the utility is ``q − λ·cost/reference cost``;
  ``log λ`` rises while the normalised pessimistic slack ``(S − z·sd)/(n·q_ref)`` is above
  ``target`` and falls below it (:func:`dual_step`), so the router spends slack once it has it.

This module is pure arithmetic over counters; the counters live in a
:class:`~conduit_workers.routing.floor_store.FloorStore` shared by every router process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

AUDIT = "ref:audit"  # the reference, chosen without looking at the prompt
POLICY = "ref:policy"  # the reference, chosen by the policy (or forced by the gate)
ALT = "alt:"  # prefix of every other model's stratum
LOG_LAMBDA = "log_lambda"  # the dual variable's field
ALT_PRED = "p:alt"  # Σ of the reference's predicted quality over the prompts sent elsewhere
# The calibration's sums over rated reference answers: count, Σp, Σp², Σr, Σpr, Σr².
CAL = ("c:n", "c:p", "c:pp", "c:r", "c:pr", "c:rr")
CAL_LEVEL_PRIOR = 1.0  # pseudo-ratings of quality 1 behind the calibration's level
CAL_SLOPE_PRIOR = 0.05  # Σ(p − p̄)² worth of prior on a slope of 1

# Field prefixes of the counters: prompts decided, ratings received, their sum and squares.
DECIDED, RATED, SUM, SQUARES = "d:", "n:", "s:", "ss:"

PRIOR_RATINGS = 2.0  # pseudo-ratings behind every stratum's mean
PRIOR_VARIANCE = 0.25  # of a quality in [0, 1]: the largest there is


def alt(model: str) -> str:
    return ALT + model


def stratum_of(model: str, reference: str, audit: bool) -> str:
    if model == reference:
        return AUDIT if audit else POLICY
    return alt(model)


@dataclass(frozen=True)
class FloorParams:
    """How the floor is held (the defaults were measured on the shared files, bench/README.md)."""

    floor: float
    z: float = 1.5  # pessimism: standard deviations of the slack estimate held in reserve
    audit_min: float = 0.05  # random share of prompts sent to the reference, at least
    audit_scale: float = 1.0  # share = clip(scale / √(1 + reference ratings), audit_min, 1)
    lambda_init: float = 0.1
    lambda_min: float = 0.02
    lambda_max: float = 5.0
    eta: float = 4.0  # step of log λ per chunk of 32 prompts, per unit of normalised slack
    target: float = 0.005  # normalised pessimistic slack the dual aims at

    def __post_init__(self) -> None:
        if not 0.0 < self.floor <= 1.0:
            raise ValueError(f"quality floor must be in (0, 1], got {self.floor}")


@dataclass
class FloorCounts:
    """The counters of one floor stream, as stored (field -> value)."""

    fields: dict[str, float]

    @classmethod
    def of(cls, fields: Mapping[str, float]) -> FloorCounts:
        return cls(dict(fields))

    def get(self, prefix: str, stratum: str) -> float:
        return self.fields.get(prefix + stratum, 0.0)

    @property
    def strata(self) -> list[str]:
        out = {k.split(":", 1)[1] for k in self.fields if k.startswith(DECIDED)}
        return sorted(out | {AUDIT})

    @property
    def decided(self) -> float:
        return sum(v for k, v in self.fields.items() if k.startswith(DECIDED))

    def log_lambda(self, params: FloorParams) -> float:
        return self.fields.get(LOG_LAMBDA, math.log(params.lambda_init))


@dataclass(frozen=True)
class Stratum:
    mean: float
    var_of_mean: float  # variance of the estimate of the stratum's mean


def stratum_estimate(counts: FloorCounts, stratum: str, prior_mean: float) -> Stratum:
    m = counts.get(RATED, stratum)
    s = counts.get(SUM, stratum)
    ss = counts.get(SQUARES, stratum)
    k = PRIOR_RATINGS
    mean = (s + k * prior_mean) / (m + k)
    spread = max(ss - s * s / m, 0.0) if m > 0 else 0.0
    var = (spread + k * PRIOR_VARIANCE) / (m + k)
    return Stratum(mean, var / (m + k))


@dataclass(frozen=True)
class Slack:
    """``S`` and its standard deviation (quality units summed over prompts), the reference's
    estimated mean quality and the prompts decided."""

    total: float
    sd: float
    q_ref: float
    n: float

    def pessimistic(self, z: float) -> float:
        return self.total - z * self.sd

    def normalised(self, z: float) -> float:
        """Pessimistic slack per prompt, relative to the reference's quality (≈ ratio − F)."""
        return self.pessimistic(z) / max(self.n * self.q_ref, 1e-9)


def _strata_estimates(counts: FloorCounts) -> dict[str, Stratum] | None:
    if counts.get(RATED, AUDIT) <= 0:
        return None  # nothing known of the reference on this stream yet
    ref = stratum_estimate(counts, AUDIT, 0.5)
    out = {AUDIT: ref, POLICY: stratum_estimate(counts, POLICY, ref.mean)}
    prior = _alt_prior(counts)
    for s in counts.strata:
        if s.startswith(ALT):
            out[s] = stratum_estimate(counts, s, prior.mean)
    return out


def _alt_prior(counts: FloorCounts) -> Stratum:
    """A model never rated is valued at the pooled mean of the other models' ratings, itself
    shrunk towards 1/2: pessimistic while nothing is known, fair once something is."""
    alts = [s for s in counts.strata if s.startswith(ALT)]
    alt_n = sum(counts.get(RATED, s) for s in alts)
    alt_s = sum(counts.get(SUM, s) for s in alts)
    mean = (alt_s + PRIOR_RATINGS * 0.5) / (alt_n + PRIOR_RATINGS)
    return Stratum(mean, PRIOR_VARIANCE / PRIOR_RATINGS / PRIOR_RATINGS)


def calibration(counts: FloorCounts) -> Calibration:
    """``q_ref ≈ a + b·(p − p̄)`` over the rated reference answers of the stream, centred on
    their mean prediction ``p̄``: the level ``a`` is the mean of those ratings (shrunk towards
    1, pessimistic, by one pseudo-rating), the slope ``b`` starts at 1 (the posterior's
    *relative* predictions taken at their word) and follows the ratings as they spread."""
    n, sp, spp, sr, spr, srr = (counts.fields.get(k, 0.0) for k in CAL)
    p_bar = sp / n if n > 0 else 0.0
    sxx = max(spp - n * p_bar * p_bar, 0.0)
    sxr = spr - p_bar * sr
    ka, kb = CAL_LEVEL_PRIOR, CAL_SLOPE_PRIOR
    a = (sr + ka * 1.0) / (n + ka)
    b = (sxr + kb * 1.0) / (sxx + kb)
    # Residuals of the fit, the prior's pseudo-observations counted as residuals too.
    rss = srr - 2 * (a * sr + b * (spr - p_bar * sr)) + n * a * a + b * b * sxx
    rss += ka * (a - 1.0) ** 2 + kb * (b - 1.0) ** 2
    var = (max(rss, 0.0) + PRIOR_RATINGS * PRIOR_VARIANCE) / (n + PRIOR_RATINGS)
    return Calibration(a, b, p_bar, var / (n + ka), var / (sxx + kb))


@dataclass(frozen=True)
class Calibration:
    a: float
    b: float
    p_bar: float
    var_a: float
    var_b: float

    def total(self, count: float, pred_sum: float) -> tuple[float, float]:
        """Σ q_ref over ``count`` prompts whose predictions sum to ``pred_sum``, and its
        variance."""
        dev = pred_sum - count * self.p_bar
        # The slope on the side that cannot flatter the floor: where those prompts are predicted
        # easier for the reference than its rated ones, at least the posterior's own difference
        # (a fitted slope below 1 would shrink it), and at most it where they are predicted harder.
        b = max(self.b, 1.0) if dev > 0 else min(self.b, 1.0)
        return (
            self.a * count + b * dev,
            count * count * self.var_a + dev * dev * self.var_b,
        )


def slack(
    counts: FloorCounts,
    floor: float,
    extra: Mapping[str, float] | None = None,
    extra_pred: float = 0.0,
) -> Slack | None:
    """The estimated slack of the stream, counting ``extra`` prompts (stratum -> count) as
    decided too, with ``extra_pred`` the reference's predicted quality summed over those sent
    elsewhere; None while no audit answer of the reference has been rated."""
    strata = _strata_estimates(counts)
    if strata is None:
        return None
    decided = {s: counts.get(DECIDED, s) for s in strata}
    for s, k in (extra or {}).items():
        decided[s] = decided.get(s, 0.0) + k
        if s not in strata:
            strata[s] = _alt_prior(counts)
    n = sum(decided.values())
    refs = (AUDIT, POLICY)
    n_alt = sum(d for s, d in decided.items() if s not in refs)
    p_alt = counts.fields.get(ALT_PRED, 0.0) + extra_pred
    ref_given = sum(decided[s] * strata[s].mean for s in refs)
    ref_elsewhere, var_elsewhere = calibration(counts).total(n_alt, p_alt)
    chosen = ref_given + sum(decided[s] * strata[s].mean for s in strata if s not in refs)
    total = chosen - floor * (ref_given + ref_elsewhere)
    var = sum(
        (1.0 - floor if s in refs else 1.0) ** 2 * decided[s] ** 2 * strata[s].var_of_mean
        for s in strata
    )
    var += floor**2 * var_elsewhere
    q_ref = (ref_given + ref_elsewhere) / max(n, 1e-9)
    return Slack(total, math.sqrt(var), q_ref, n)


def audit_share(counts: FloorCounts, params: FloorParams) -> float:
    """Share of prompts sent to the reference at random: decays as its ratings accumulate."""
    m = counts.fields.get(CAL[0], 0.0)
    return min(1.0, max(params.audit_min, params.audit_scale / math.sqrt(1.0 + m)))


def gate(
    counts: FloorCounts,
    params: FloorParams,
    wanted: list[str],
    audited: list[bool],
    ref_pred: list[float] | None = None,
    advantage: list[float] | None = None,
) -> list[str]:
    """The stratum of each prompt of a chunk, given the stratum the policy wants for it
    (``ref:policy`` or ``alt:<model>``), whether it was drawn for an audit, and the
    reference's predicted quality on it.

    Every prompt goes to the reference (stratum ``ref:audit``) while the slack is unknown or
    its pessimistic estimate is negative; otherwise a prompt keeps the policy's model only if
    the pessimistic slack, with it and the chunk's earlier prompts counted, stays ≥ 0.
    """
    preds = ref_pred if ref_pred is not None else [0.5] * len(wanted)
    now = slack(counts, params.floor)
    if now is None or now.pessimistic(params.z) < 0:
        return [AUDIT] * len(wanted)
    extra: dict[str, float] = {}
    extra_pred = 0.0
    out = [""] * len(wanted)
    # The prompts whose move away from the reference gives up the least go first, so the
    # slack is spent where it buys the most (``advantage``: the policy's own view of it).
    adv = advantage if advantage is not None else [0.0] * len(wanted)
    for k in sorted(range(len(wanted)), key=lambda i: -adv[i]):
        want, audit, p = wanted[k], audited[k], preds[k]
        if audit:
            s = AUDIT
        elif want == POLICY:
            s = POLICY
        else:
            trial = dict(extra)
            trial[want] = trial.get(want, 0.0) + 1
            after = slack(counts, params.floor, trial, extra_pred + p)
            s = want if after is not None and after.pessimistic(params.z) >= 0 else POLICY
        extra[s] = extra.get(s, 0.0) + 1
        if s not in (AUDIT, POLICY):
            extra_pred += p
        out[k] = s
    return out


def dual_step(counts: FloorCounts, params: FloorParams, prompts: int) -> float:
    """The change of ``log λ`` after a chunk of ``prompts``: up while the normalised
    pessimistic slack is above ``target``, down below (bounded per chunk, so one noisy
    estimate moves λ by a limited factor)."""
    now = slack(counts, params.floor)
    if now is None:
        return 0.0
    gap = max(-0.05, min(0.05, now.normalised(params.z) - params.target))
    return params.eta * gap * prompts / 32.0


def clamp_log_lambda(value: float, params: FloorParams) -> float:
    return max(math.log(params.lambda_min), min(math.log(params.lambda_max), value))


def decision_increments(strata: list[str], ref_pred: list[float]) -> dict[str, float]:
    """The counters a chunk's decisions add: prompts per stratum, and the reference's predicted
    quality summed over those sent elsewhere."""
    inc: dict[str, float] = {}
    for s, p in zip(strata, ref_pred, strict=True):
        inc[DECIDED + s] = inc.get(DECIDED + s, 0.0) + 1.0
        if not s.startswith("ref:"):
            inc[ALT_PRED] = inc.get(ALT_PRED, 0.0) + p
    return inc


def rating_increments(stratum: str, rating: float, ref_pred: float) -> dict[str, float]:
    """The counters a rating adds (a rated reference answer also feeds the calibration)."""
    inc = {RATED + stratum: 1.0, SUM + stratum: rating, SQUARES + stratum: rating * rating}
    if stratum in (AUDIT, POLICY):
        p, r = ref_pred, rating
        inc.update(zip(CAL, (1.0, p, p * p, r, p * r, r * r), strict=True))
    return inc
