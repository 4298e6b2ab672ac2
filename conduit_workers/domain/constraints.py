"""Routing preferences and hard constraints, per batch or per query."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Constraints:
    """Weights of the utility and hard limits. ``None`` means: not set here.

    ``lambda_cost`` and ``lambda_latency`` weigh cost and latency relative to the dearest and the
    slowest model of the catalog, so the same weight means the same trade-off on any catalog.

    ``quality_floor`` (in [0, 1]) asks the router to keep that share of the catalog reference
    model's mean quality over the stream while spending as little as it can; 0 turns the
    settings' floor off for these prompts (``lambda_cost`` then weighs cost). A prompt that sets
    ``lambda_cost`` and no floor is routed by ``lambda_cost`` alone.
    """

    lambda_cost: float | None = None
    lambda_latency: float | None = None
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    min_quality: float | None = None
    # The share of the catalog reference model's quality to keep, in [0, 1].
    quality_floor: float | None = None
    allowed_models: tuple[str, ...] | None = None
    allowed_providers: tuple[str, ...] | None = None

    @property
    def restricts(self) -> bool:
        """Whether a hard limit is set: models, providers, cost, latency or quality."""
        return not (
            self.allowed_models is None
            and self.allowed_providers is None
            and self.max_cost_usd is None
            and self.max_latency_ms is None
            and self.min_quality is None
        )

    def merged_over(self, base: Constraints) -> Constraints:
        """These constraints, with unset fields taken from ``base`` (query over batch)."""
        # Most prompts set none, per query or per batch: the router merges two per prompt.
        if self is NOT_SET:
            return base
        if base is NOT_SET:
            return self
        updates = {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }
        return replace(base, **updates)

    def to_json(self) -> dict[str, Any]:
        # Shallow (every field is a number, None or a tuple of str): dataclasses.asdict's deep
        # copy was a third of `conduit submit`'s time on 10,000 prompts.
        out: dict[str, Any] = {}
        for name in _FIELDS:
            v = getattr(self, name)
            if v is not None:
                out[name] = list(v) if isinstance(v, tuple) else v
        return out


_FIELDS = tuple(f.name for f in fields(Constraints))
# Constraints that set nothing, shared (frozen): what a prompt without constraints parses to.
NOT_SET = Constraints()
_NUMBERS = (
    "lambda_cost",
    "lambda_latency",
    "max_cost_usd",
    "max_latency_ms",
    "min_quality",
    "quality_floor",
)
_LISTS = ("allowed_models", "allowed_providers")


def parse_constraints(obj: Any, known_models: frozenset[str] | None = None) -> Constraints:
    """Validate a constraints object; raise ``ValueError`` saying what is wrong."""
    if obj is None or (isinstance(obj, dict) and not obj):
        return NOT_SET
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")
    unknown = set(obj) - set(_NUMBERS) - set(_LISTS)
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)}; known: {sorted(_NUMBERS + _LISTS)}")
    values: dict[str, Any] = {}
    for name in _NUMBERS:
        if name in obj and obj[name] is not None:
            v = obj[name]
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or v < 0
            ):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
            values[name] = float(v)
    for name in ("min_quality", "quality_floor"):
        if values.get(name, 0.0) > 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {values[name]}")
    for name in _LISTS:
        if name in obj and obj[name] is not None:
            v = obj[name]
            if not isinstance(v, list) or not v or not all(isinstance(s, str) for s in v):
                raise ValueError(f"{name} must be a non-empty list of strings")
            values[name] = tuple(v)
    if known_models is not None and "allowed_models" in values:
        missing = sorted(set(values["allowed_models"]) - known_models)
        if missing:
            raise ValueError(f"unknown model(s) {missing}; the catalog has {sorted(known_models)}")
    return Constraints(**values) if values else NOT_SET
