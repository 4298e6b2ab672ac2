"""Budget pacing of one chunk: the most quality whose expected cost fits an allowance.

A chunk's share of a batch budget (the router passes ``remaining budget × chunk length /
remaining prompts``) is a knapsack; its Lagrangian relaxation is the router's own utility,
``quality − λ·cost/scale``, with λ the price of a dollar. For a fixed draw of qualities, every
prompt's chosen cost falls as λ rises (the argmax of ``u − λc`` moves to cheaper models only),
so the smallest λ whose choices fit is found by bisection.
"""

from __future__ import annotations

from collections.abc import Callable

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
