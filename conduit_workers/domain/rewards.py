"""Feedback events, the rewards they carry, and their aggregation per model.

Implicit events come from every call (error, latency, tokens, cost); explicit ones from ratings.
A failed call is evidence of poor quality (reward 0). A successful call says nothing certain about
its quality, so by default it carries no weight; the latency and tokens it reports feed the
expected latency and cost instead, which the utility weighs apart from quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

IMPLICIT = "implicit"
EXPLICIT = "explicit"
# A user re-asking: reward 0 to the earlier answer. The stored kind keeps its first name.
REASK = "retry"


@dataclass(frozen=True)
class FeedbackEvent:
    id: str
    query_id: str
    model: str
    kind: str
    reward: float
    weight: float
    is_call: bool = False
    error: bool = False
    latency_ms: float = 0.0
    in_tokens: int = 0
    out_tokens: int = 0
    cost_usd: float = 0.0


def implicit_event_id(query_id: str, model: str) -> str:
    return f"implicit:{query_id}:{model}"


def explicit_event_id(query_id: str) -> str:
    # One explicit rating per prompt: a second rating of the same prompt is a duplicate.
    return f"explicit:{query_id}"


def implicit_reward(
    error: bool, success_reward: float, success_weight: float, error_weight: float
) -> tuple[float, float]:
    """(reward, weight) of one call's outcome."""
    if error:
        return 0.0, error_weight
    return success_reward, success_weight


@dataclass(frozen=True)
class CallWeights:
    """How a call's outcome counts as quality evidence: reward and weight of a success, weight
    of a failure (whose reward is 0)."""

    success_reward: float = 1.0
    success_weight: float = 0.0
    error_weight: float = 0.0


def call_event(
    query_id: str,
    model: str,
    weights: CallWeights,
    *,
    error: bool,
    latency_ms: float,
    in_tokens: int = 0,
    out_tokens: int = 0,
    cost_usd: float = 0.0,
) -> FeedbackEvent:
    """The implicit feedback event of a model's call(s) for a prompt (one per prompt and model:
    its id makes a repeat a no-op)."""
    reward, weight = implicit_reward(
        error, weights.success_reward, weights.success_weight, weights.error_weight
    )
    return FeedbackEvent(
        implicit_event_id(query_id, model),
        query_id,
        model,
        IMPLICIT,
        reward,
        weight,
        is_call=True,
        error=error,
        latency_ms=latency_ms,
        in_tokens=in_tokens,
        out_tokens=out_tokens,
        cost_usd=cost_usd,
    )


def validate_rating(rating: float) -> float:
    if (
        isinstance(rating, bool)
        or not isinstance(rating, (int, float))
        or not math.isfinite(rating)
    ):
        raise ValueError(f"a rating must be a number in [0, 1], got {rating!r}")
    if not 0.0 <= rating <= 1.0:
        raise ValueError(f"a rating must be in [0, 1], got {rating}")
    return float(rating)
