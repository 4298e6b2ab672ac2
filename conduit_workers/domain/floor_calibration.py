"""The quality floor's calibration: the reference's quality where another model answered,
``q_ref ≈ a + b·(p − p̄)`` (plus the easiness term on ``u``), fitted on the stream's rated
reference answers. :mod:`conduit_workers.domain.floor` says why and how it is used."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conduit_workers.domain.floor import FloorCounts

# The calibration's sums over rated reference answers: count, Σp, Σp², Σr, Σpr, Σr².
CAL = ("c:n", "c:p", "c:pp", "c:r", "c:pr", "c:rr")
# The prompts' easiness beside the reference's own prediction: ``u``, the best predicted quality
# among the other models. Over the rated reference answers that carry it: count, Σp, Σr, Σu,
# Σu², Σpu, Σur.
CAL_U = ("c:un", "c:up", "c:ur0", "c:u", "c:uu", "c:pu", "c:ur")
CAL_LEVEL_PRIOR = 1.0  # pseudo-ratings of quality 1 behind the calibration's level
CAL_SLOPE_PRIOR = 0.05  # Σ(p − p̄)² worth of prior on a slope of 1
SLOPE_Z = 2.0  # standard errors by which the ratings must show a slope short of 1 to use it
PRIOR_RATINGS = 2.0  # pseudo-ratings behind every stratum's mean (and the fit's variance)
PRIOR_VARIANCE = 0.25  # of a quality in [0, 1]: the largest there is


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
    var_a = var / (n + ka)
    un, up, ur0, su, suu, spu, sur = (counts.fields.get(k, 0.0) for k in CAL_U)
    u_bar = su / un if un > 0 else 0.0
    p_bar_u = up / un if un > 0 else 0.0
    return Calibration(
        a,
        b,
        p_bar,
        var_a,
        var / (sxx + kb),
        var=var,
        u_bar=u_bar,
        suu=max(suu - un * u_bar * u_bar, 0.0),
        spu=spu - un * p_bar_u * u_bar,
        sur=sur - u_bar * ur0,
        has_u=un > 0,
    )


@dataclass(frozen=True)
class Calibration:
    a: float
    b: float
    p_bar: float
    var_a: float
    var_b: float
    # The easiness term: the calibration's residuals regressed on ``u`` (centred sums over the
    # rated reference answers that carry it) and the residuals' variance.
    var: float = PRIOR_VARIANCE
    u_bar: float = 0.0
    suu: float = 0.0
    spu: float = 0.0
    sur: float = 0.0
    has_u: bool = False

    def total(
        self, count: float, pred_sum: float, best_sum: float | None = None
    ) -> tuple[float, float]:
        """Σ q_ref over ``count`` prompts whose predictions sum to ``pred_sum`` (and the best
        other model's predictions to ``best_sum``), and its variance."""
        dev = pred_sum - count * self.p_bar
        # The slope on the side that cannot flatter the floor: where those prompts are predicted
        # easier for the reference than its rated ones, the posterior's own difference (slope 1)
        # unless the ratings show a flatter slope beyond SLOPE_Z standard errors, and then the
        # slope at that bound; the mirror image where they are predicted harder. (Held at ≥ 1
        # whatever the ratings said, the estimate stayed 1–5% of those prompts' quality on the
        # safe side: bench/README.md "Kept 3 December evening".)
        se = math.sqrt(self.var_b)
        if dev > 0:
            b = max(self.b, min(1.0, self.b + SLOPE_Z * se))
        else:
            b = min(self.b, max(1.0, self.b - SLOPE_Z * se))
        total = self.a * count + b * dev
        var = count * count * self.var_a + dev * dev * self.var_b
        if self.has_u and best_sum is not None:
            # Prompts go elsewhere where another model looks good, i.e. mostly easy ones: where
            # the reference's rated answers say its quality rises with that (beyond its own
            # prediction), count it, on the side that cannot flatter the floor.
            dev_u = best_sum - count * self.u_bar
            k = CAL_SLOPE_PRIOR
            c = (self.sur - b * self.spu) / (self.suu + k)
            c = max(c, 0.0) if dev_u > 0 else min(c, 0.0)
            total += c * dev_u
            var += dev_u * dev_u * self.var / (self.suu + k)
        return total, var
