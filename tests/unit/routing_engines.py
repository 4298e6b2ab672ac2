"""A small routing engine for the unit tests of the floor and of budget pacing: two models,
a hashing embedder, in-memory stores, seeded."""

from __future__ import annotations

import numpy as np

from conduit_workers.domain.catalog import Catalog, ModelSpec
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore
from conduit_workers.routing.embedder import HashingEmbedder
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.routing.floor_store import InMemoryFloorStore
from conduit_workers.settings import RouterSettings

CHEAP = ModelSpec("cheap", "openai-compatible", 0.1, 0.1)
STRONG = ModelSpec("strong", "openai-compatible", 10.0, 30.0)


def floor_engine(floor: float | None, seed: int = 0) -> RoutingEngine:
    settings = RouterSettings(projection_dim=4, seed=seed, quality_floor=floor)
    cat = Catalog(models=(CHEAP, STRONG), reference="strong")
    return RoutingEngine(
        cat,
        InMemoryPosteriorStore(),
        HashingEmbedder(64),
        settings,
        np.random.default_rng(seed),
        InMemoryFloorStore(),
    )
