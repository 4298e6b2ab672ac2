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
  Prompts go elsewhere where another model looks good, mostly easy ones, and the reference's
  own prediction misses part of that easiness: the calibration's residuals are regressed on
  ``u``, the best predicted quality among the other models, and where the reference's rated
  answers say its quality rises with ``u``, the prompts sent elsewhere (higher ``u``) are
  counted that much better for the reference (the term is one-sided: it never flatters the
  floor). Without it the estimate ran 4–9% above the truth on warm-started streams where the
  posterior for the reference missed what the other models' posteriors knew.

The estimate's variance follows from the strata (each mean shrunk towards a prior with a few
pseudo-ratings of variance 1/4). Decisions (:func:`gate`):

* **conservative exploration** (Wu et al. 2016; Kazerouni et al. 2017): the router starts from
  the reference; a prompt may go elsewhere only while the pessimistic slack
  ``S − z·sd(S)``, with that prompt counted, stays ≥ 0. Each reference answer earns
  ``(1 − F)·q_ref`` of slack; a model without ratings is valued at the pessimistic prior, so
  trying one costs several reference answers' worth of slack and a dozen are not all tried;
* **a dual variable** on cost (primal–dual): the utility is ``q − λ·cost/reference cost``;
  ``log λ`` rises while the normalised pessimistic slack ``(S − z·sd)/(n·q_ref)`` is above
  ``target`` and falls below it (:func:`dual_step`), so the router spends slack once it has it;
  never below its start (``lambda_min`` = ``lambda_init`` = 0.1): where λ fell towards 0 the
  policy offered the gate dearer near-reference models (frugalgpt: text-davinci-002 at two
  thirds of GPT-4's price, an AI21 model at 0.69 tried on its price-blind samples) instead of
  the ones that save most per point of quality; keeping the floor is the gate's job.

**Offline evidence, once the stream confirms it.** A warm start (``conduit learn``) records per
model the weight of its offline ratings (:data:`OFFLINE_STREAM`). The posterior's predictions
then carry that evidence; the floor trusts them for a model only while this stream's own ratings
of that model's answers agree with them: its residuals ``q − p`` (``p``: the posterior's mean
prediction for the answering model at decision time) over at least :data:`TRUST_MIN_RATINGS`
ratings have a mean within :data:`TRUST_T` standard errors of 0. A trusted model's stratum mean
is then its mean prediction over the prompts decided there plus the residual mean shrunk by
``m / (m + w)`` (``m`` online ratings, ``w`` the offline weight ≤ 200), with variance
``s² / (m + w)``: the offline evidence counts as a prior that the posterior is right to within
about ``s/√w`` (≈ 0.02) on the prompts the router sends there. Where the residuals say the model
does *worse* than predicted, the shortfall counts in full (variance ``s²/m``): the router chose
those prompts for it because they looked good, a selection no offline rating vouches for. A
model whose online residuals disagree is estimated from its online ratings alone, as in a cold
start. The reference is never trusted this way: its posterior soon leans on this stream's many
reference ratings, so its residuals would confirm offline evidence from any domain (trusting
it, and auditing less, saved up to 10 more points on the split-half files but let a warm start
from MMLU end at 0.944 of the reference on routerbench).

**The winner's curse of short streams.** The router keeps sending prompts to the model whose
few ratings look best, so a stratum's mean from ``m`` ratings is biased up by about
``σ·√(2 ln K / m)`` (the best of ``K`` noisy means). That bias is counted as variance: the
variance of a model's stratum mean is widened by ``1 + 2 ln K / (m + 1)``
(:func:`selection_factor`), and a model's prior is pooled from the *other* models' ratings
only, so its first lucky ratings do not vouch for it twice. Without these, a 299-prompt stream
sent 20+ prompts each to two models on one good rating (truly 0.23 and 0.45) and ended at 0.927
of the reference.

**Models known by their prior err together.** A model with few ratings is valued at the pooled
prior: one guess, shared by every such model, of how good the other models are on this stream.
Where that guess is wrong it is wrong for all of them at once (on routerbench's MBPP code
prompts every other model was far below it, and a stream warm-started from MMLU sent two or
three prompts to each of eight untried models and ended at 0.941 of the reference), so the
parts of their estimates that rest on the prior add up in standard deviations, not in variances
(:attr:`Stratum.prior_var`); their own ratings' sampling errors stay independent. The prior's
variance is the spread of the rated models' means once two have three ratings each (shrunk
towards 1/4 by two pseudo-models, :func:`_between_models`): where the other models are alike, a
new one is likely alike too; that keeps most of the savings the shared errors would cost.

This module is pure arithmetic over counters; the counters live in a
:class:`~conduit_workers.routing.floor_store.FloorStore` shared by every router process.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from conduit_workers.domain.floor_calibration import (
    CAL,
    CAL_U,
    PRIOR_RATINGS,
    PRIOR_VARIANCE,
    calibration,
)

AUDIT = "ref:audit"  # the reference, chosen without looking at the prompt
POLICY = "ref:policy"  # the reference, chosen by the policy (or forced by the gate)
ALT = "alt:"  # prefix of every other model's stratum
LOG_LAMBDA = "log_lambda"  # the dual variable's field
ALT_PRED = "p:alt"  # Σ of the reference's predicted quality over the prompts sent elsewhere
# Σ of the best other model's predicted quality over the prompts sent elsewhere (the calibration's
# easiness term, :mod:`conduit_workers.domain.floor_calibration`).
ALT_BEST = "u:alt"

# Field prefixes of the counters: prompts decided, ratings received, their sum and squares.
DECIDED, RATED, SUM, SQUARES = "d:", "n:", "s:", "ss:"
# Per stratum: Σ of the answering model's predicted quality over the prompts decided, and the
# residuals (rating − that prediction) of the rated ones: their count, sum and squares.
PREDICTED, RESID_N, RESID, RESID_SQ = "e:", "rn:", "r:", "rr:"
# The stream holding each model's offline weight (field ``w:<model>``), written by a warm start.
OFFLINE_STREAM = "offline"
OFFLINE_WEIGHT = "w:"
TRUST_MIN_RATINGS = 10.0  # online ratings of a model before its offline evidence is trusted
TRUST_T = 2.0  # residual mean within this many standard errors of 0: confirmed
RESID_VAR_MIN = 0.01  # a floor on the residuals' variance (few ratings can look too tidy)


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
    lambda_min: float = 0.1  # = lambda_init: the dual raises λ, never below its start
    lambda_max: float = 5.0
    eta: float = 4.0  # step of log λ per chunk of 32 prompts, per unit of normalised slack
    target: float = 0.005  # normalised pessimistic slack the dual aims at

    def __post_init__(self) -> None:
        if not 0.0 < self.floor <= 1.0:
            raise ValueError(f"quality floor must be in (0, 1], got {self.floor}")


@dataclass
class FloorCounts:
    """The counters of one floor stream, as stored (field -> value); the offline weight of each
    model (model -> weight, from :data:`OFFLINE_STREAM`) and which model is the reference."""

    fields: dict[str, float]
    offline: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(
        cls, fields: Mapping[str, float], offline: Mapping[str, float] | None = None
    ) -> FloorCounts:
        weights = {
            k[len(OFFLINE_WEIGHT) :]: v
            for k, v in (offline or {}).items()
            if k.startswith(OFFLINE_WEIGHT) and v > 0
        }
        return cls(dict(fields), weights)

    def weight(self, stratum: str) -> float:
        """The offline weight of the model behind an ``alt:`` stratum (the reference's level
        is never taken from offline data: see the module docstring)."""
        if stratum.startswith(ALT):
            return self.offline.get(stratum[len(ALT) :], 0.0)
        return 0.0

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
    prior_var: float = 0.0  # the part of it that comes from the prior (shared across models)


def stratum_estimate(
    counts: FloorCounts, stratum: str, prior_mean: float, prior_variance: float = PRIOR_VARIANCE
) -> Stratum:
    m = counts.get(RATED, stratum)
    s = counts.get(SUM, stratum)
    ss = counts.get(SQUARES, stratum)
    k = PRIOR_RATINGS
    mean = (s + k * prior_mean) / (m + k)
    spread = max(ss - s * s / m, 0.0) if m > 0 else 0.0
    var = (spread + k * prior_variance) / (m + k)
    return Stratum(mean, var / (m + k), k * prior_variance / (m + k) ** 2)


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


def _confirmed(m: float, r1: float, r2: float, w: float) -> tuple[float, float] | None:
    """The residual correction of a model whose offline evidence (weight ``w``) this stream's
    ``m`` ratings confirm (residual sum ``r1``, squares ``r2``): the residual mean shrunk by
    ``m / (m + w)`` and its variance ``s² / (m + w)``; None while not confirmed."""
    if w <= 0 or m < TRUST_MIN_RATINGS:
        return None
    mean = r1 / m
    var = max(r2 / m - mean * mean, RESID_VAR_MIN)
    if abs(mean) > TRUST_T * math.sqrt(var / m):
        return None
    if mean < 0:
        # Below its predictions on the prompts the router chose for it (chosen because they
        # looked good there: a selection the offline ratings cannot vouch for): counted in full.
        return mean, var / m
    return mean * m / (m + w), var / (m + w)


def _alt_estimate(
    counts: FloorCounts,
    stratum: str,
    prior_mean: float,
    models: float,
    prior_variance: float = PRIOR_VARIANCE,
) -> Stratum:
    d, m = counts.get(DECIDED, stratum), counts.get(RESID_N, stratum)
    pred = counts.get(PREDICTED, stratum)
    ok = _confirmed(
        m, counts.get(RESID, stratum), counts.get(RESID_SQ, stratum), counts.weight(stratum)
    )
    if ok is None or d <= 0 or pred <= 0:
        est = stratum_estimate(counts, stratum, prior_mean, prior_variance)
        f = selection_factor(counts, stratum, models)
        return Stratum(est.mean, est.var_of_mean * f, est.prior_var * f)
    shift, var = ok
    return Stratum(min(1.0, max(0.0, pred / d + shift)), var)


def selection_factor(counts: FloorCounts, stratum: str, models: float | None = None) -> float:
    """The factor on the variance of a model's stratum mean that covers the winner's curse:
    the router keeps sending prompts to the model whose few ratings look best, and the best of
    ``K`` means of ``m`` ratings each is biased up by about ``σ·√(2 ln K / m)``; that bias is
    counted as variance, ``1 + 2 ln K / (m + 1)`` (``K``: the models this stream has sent
    prompts to, the reference included; ``models``, when the caller has counted them). It
    fades as the model's ratings accumulate."""
    k = models if models is not None else _models_tried(_alts(counts))
    return 1.0 + 2.0 * math.log(k) / (counts.get(RATED, stratum) + 1.0)


def _strata_estimates(counts: FloorCounts) -> dict[str, Stratum] | None:
    if counts.get(RATED, AUDIT) <= 0:
        return None  # nothing known of the reference on this stream yet
    ref = stratum_estimate(counts, AUDIT, 0.5)
    out = {AUDIT: ref, POLICY: stratum_estimate(counts, POLICY, ref.mean)}
    alts = _alts(counts)
    models = _models_tried(alts)
    alt_n = sum(counts.get(RATED, s) for s in alts)
    alt_s = sum(counts.get(SUM, s) for s in alts)
    spread = _between_models(counts, alts)
    for s in alts:
        # A model's own ratings are left out of its prior: counted there too, its first lucky
        # ratings would vouch for it twice.
        prior = _pooled_mean(alt_n - counts.get(RATED, s), alt_s - counts.get(SUM, s))
        out[s] = _alt_estimate(counts, s, prior, models, spread)
    return out


def _alts(counts: FloorCounts) -> list[str]:
    return [s for s in counts.strata if s.startswith(ALT)]


def _models_tried(alts: list[str]) -> float:
    """``K`` of :func:`selection_factor`: the models tried, the reference included (≥ 2)."""
    return max(2.0, 1.0 + len(alts))


def _pooled_mean(rated: float, total: float) -> float:
    return (total + PRIOR_RATINGS * 0.5) / (rated + PRIOR_RATINGS)


def _between_models(counts: FloorCounts, alts: list[str]) -> float:
    """The prior variance of a model's quality, the pooled prior being its mean: how far the
    rated models' means (3 ratings at least) lie from their own pooled mean, with two
    pseudo-models at the largest variance there is (1/4), so that a few models do not vouch
    for a tight prior; 1/4 until two models are rated."""
    rated = [counts.get(SUM, s) / counts.get(RATED, s) for s in alts if counts.get(RATED, s) >= 3]
    if len(rated) < 2:
        return PRIOR_VARIANCE
    pooled = sum(rated) / len(rated)
    spread = sum((x - pooled) ** 2 for x in rated)
    return (spread + PRIOR_RATINGS * PRIOR_VARIANCE) / (len(rated) + PRIOR_RATINGS)


def _alt_prior(counts: FloorCounts) -> Stratum:
    """A model never rated is valued at the pooled mean of the other models' ratings, itself
    shrunk towards 1/2: pessimistic while nothing is known, fair once something is (a rated
    model's prior leaves its own ratings out: :func:`_strata_estimates`)."""
    alts = _alts(counts)
    mean = _pooled_mean(
        sum(counts.get(RATED, s) for s in alts), sum(counts.get(SUM, s) for s in alts)
    )
    var = _between_models(counts, alts) / PRIOR_RATINGS / PRIOR_RATINGS
    return Stratum(mean, var, var)


def slack(
    counts: FloorCounts,
    floor: float,
    extra: Mapping[str, float] | None = None,
    extra_pred: float = 0.0,
    extra_best: float = 0.0,
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
    best = counts.fields.get(ALT_BEST)
    u_alt = best + extra_best if best is not None else None
    ref_elsewhere, var_elsewhere = calibration(counts).total(n_alt, p_alt, u_alt)
    chosen = ref_given + sum(decided[s] * strata[s].mean for s in strata if s not in refs)
    total = chosen - floor * (ref_given + ref_elsewhere)
    # The models' priors are one guess shared by all of them (how good the other models are on
    # this stream): the parts of their estimates that rest on it err together, so they add up
    # in standard deviations, not in variances.
    var = sum(
        (1.0 - floor if s in refs else 1.0) ** 2
        * decided[s] ** 2
        * (strata[s].var_of_mean - (0.0 if s in refs else strata[s].prior_var))
        for s in strata
    )
    var += sum(decided[s] * math.sqrt(strata[s].prior_var) for s in strata if s not in refs) ** 2
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
    alt_best: list[float] | None = None,
) -> list[str]:
    """The stratum of each prompt of a chunk, given the stratum the policy wants for it
    (``ref:policy`` or ``alt:<model>``), whether it was drawn for an audit, the reference's
    predicted quality on it and the best other model's (``alt_best``).

    Every prompt goes to the reference (stratum ``ref:audit``) while the slack is unknown or
    its pessimistic estimate is negative; otherwise a prompt keeps the policy's model only if
    the pessimistic slack, with it and the chunk's earlier prompts counted, stays ≥ 0.
    """
    preds = ref_pred if ref_pred is not None else [0.5] * len(wanted)
    now = slack(counts, params.floor)
    if now is None or now.pessimistic(params.z) < 0:
        return [AUDIT] * len(wanted)
    extra: dict[str, float] = {}
    extra_pred = extra_best = 0.0
    best = alt_best if alt_best is not None else [0.0] * len(wanted)
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
            after = slack(counts, params.floor, trial, extra_pred + p, extra_best + best[k])
            s = want if after is not None and after.pessimistic(params.z) >= 0 else POLICY
        extra[s] = extra.get(s, 0.0) + 1
        if s not in (AUDIT, POLICY):
            extra_pred += p
            extra_best += best[k]
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


def decision_increments(
    strata: list[str],
    ref_pred: list[float],
    own_pred: list[float] | None = None,
    alt_best: list[float] | None = None,
) -> dict[str, float]:
    """The counters a chunk's decisions add: prompts per stratum, the reference's predicted
    quality summed over those sent elsewhere (and the best other model's, ``alt_best``), and
    per stratum the answering model's predicted quality (``own_pred``; the reference's for the
    reference strata)."""
    inc: dict[str, float] = {}
    own = own_pred if own_pred is not None else ref_pred
    best = alt_best if alt_best is not None else [0.0] * len(strata)
    for s, p, q, u in zip(strata, ref_pred, own, best, strict=True):
        inc[DECIDED + s] = inc.get(DECIDED + s, 0.0) + 1.0
        inc[PREDICTED + s] = inc.get(PREDICTED + s, 0.0) + q
        if not s.startswith("ref:"):
            inc[ALT_PRED] = inc.get(ALT_PRED, 0.0) + p
            if alt_best is not None:
                inc[ALT_BEST] = inc.get(ALT_BEST, 0.0) + u
    return inc


def rating_increments(
    stratum: str,
    rating: float,
    ref_pred: float,
    own_pred: float | None = None,
    alt_best: float | None = None,
) -> dict[str, float]:
    """The counters a rating adds (a rated reference answer also feeds the calibration; an
    answer of another model, its residual against its own prediction)."""
    inc = {RATED + stratum: 1.0, SUM + stratum: rating, SQUARES + stratum: rating * rating}
    if stratum in (AUDIT, POLICY):
        p, r = ref_pred, rating
        inc.update(zip(CAL, (1.0, p, p * p, r, p * r, r * r), strict=True))
        if alt_best is not None:
            u = alt_best
            inc.update(zip(CAL_U, (1.0, p, r, u, u * u, p * u, u * r), strict=True))
    elif own_pred is not None:
        e = rating - own_pred
        inc.update({RESID_N + stratum: 1.0, RESID + stratum: e, RESID_SQ + stratum: e * e})
    return inc
