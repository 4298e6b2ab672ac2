"""Budget pacing of one chunk: the most quality whose expected cost fits an allowance.

A chunk's share of a batch budget (the router passes ``remaining budget × chunk length /
remaining prompts``) is a knapsack; its Lagrangian relaxation is the router's own utility,
``quality − λ·cost/scale``, with λ the price of a dollar. For a fixed draw of qualities, every
prompt's chosen cost falls as λ rises (the argmax of ``u − λc`` moves to cheaper models only),
so the smallest λ whose choices fit is found by bisection. What the choices leave of the
allowance when it does not bind is spent on upgrades (:func:`fill_allowance`).
"""

from __future__ import annotations

from collections.abc import Callable

from conduit_workers.domain.bandit import Array

LAMBDA_CEILING = 1e6  # beyond this, every prompt takes its cheapest feasible model anyway


def pace(total_cost: Callable[[float], float], allowance: float, iterations: int = 40) -> float:
    """The smallest λ ≥ 0 (within bisection precision) with ``total_cost(λ) ≤ allowance``, or
    :data:`LAMBDA_CEILING` when no λ fits (the caller then takes the cheapest models)."""
    if total_cost(0.0) <= allowance:
        return 0.0
    hi = 1.0
    while total_cost(hi) > allowance:
        hi *= 4.0
        if hi >= LAMBDA_CEILING:
            return LAMBDA_CEILING
    lo = 0.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if total_cost(mid) <= allowance:
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-6 * max(hi, 1e-9):
            break
    return hi


def fill_allowance(
    models: list[str | None],
    ranked: list[tuple[str, ...]],
    means: Array,
    costs: Array,
    names: list[str],
    reference: str | None,
    reference_upper: Array | None,
    allowance: float,
) -> dict[int, str]:
    """Upgrades that spend what a chunk's choices leave of its allowance: position → model.

    A chunk's choices are Thompson draws: while the posteriors are wide (a cold start) they
    scatter over cheap models, and with one rating the reference's below a cheap model's they
    can stay there, the budget unspent. Pro rata, later chunks get what is left, but the money
    never buys back the answers already given; a batch could end with most of its budget unspent
    and its quality where the cheap models put it. So what a chunk leaves buys, for each prompt,
    a dearer model it may route to: the one of the highest posterior mean above both its choice
    and the reference, else the reference, unless the reference's upper bound
    (``reference_upper``, mean + one standard deviation) is below the choice's mean: the
    reference is the catalog's strongest and what the budget is measured against, and its
    answers are also its ratings, so a reference that was unlucky in its first ratings is not
    given up while there is money for it. Upgrades go by expected quality gained per extra
    dollar (the reference's gain may be negative: it comes last) while the allowance lasts.
    """
    index = {m: j for j, m in enumerate(names)}
    spent = sum(float(costs[i, index[m]]) for i, m in enumerate(models) if m is not None)
    left = allowance - spent
    if left <= 0:
        return {}
    r = index.get(reference) if reference is not None else None
    offers = []
    for i, m in enumerate(models):
        if m is None:
            continue
        j = index[m]
        own = float(means[i, j])
        ref_ok = r is not None and reference in ranked[i] and costs[i, r] > costs[i, j]
        best, best_mean = None, max(own, float(means[i, r]) if ref_ok and r is not None else own)
        for cand in ranked[i]:
            k = index[cand]
            if cand != reference and costs[i, k] > costs[i, j] and means[i, k] > best_mean:
                best, best_mean = cand, float(means[i, k])
        if best is None and ref_ok and r is not None:
            upper = means[i, r] if reference_upper is None else reference_upper[i]
            if upper >= own:
                best, best_mean = reference, float(means[i, r])
        if best is None:
            continue
        extra = float(costs[i, index[best]] - costs[i, j])
        offers.append(((best_mean - own) / max(extra, 1e-12), i, best, extra))
    offers.sort(key=lambda o: (-o[0], o[1]))
    out: dict[int, str] = {}
    for _, i, best, extra in offers:
        if extra <= left:
            out[i] = best
            left -= extra
    return out
