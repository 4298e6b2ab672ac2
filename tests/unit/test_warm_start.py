"""Warm start from labelled records: sparse records, weights, idempotent loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conduit_workers.domain import floor as fl
from conduit_workers.domain.catalog import Catalog, ModelSpec
from conduit_workers.learning.posterior_store import InMemoryPosteriorStore
from conduit_workers.routing.embedder import HashingEmbedder
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.routing.warm_start import learn_records, read_records
from conduit_workers.settings import RouterSettings

CAT = Catalog(
    models=(
        ModelSpec("cheap", "openai-compatible", 0.1, 0.1),
        ModelSpec("strong", "openai-compatible", 10.0, 30.0),
    ),
    reference="strong",
)


def _engine(store: InMemoryPosteriorStore) -> RoutingEngine:
    settings = RouterSettings(projection_dim=4, seed=0, decay=1.0)
    return RoutingEngine(CAT, store, HashingEmbedder(64), settings, np.random.default_rng(0))


def _write(path: Path, n: int) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            models = {
                "strong": {
                    "quality": 1.0,
                    "input_tokens": 10,
                    "output_tokens": 5,
                    "cost_usd": 0.001,
                }
            }
            if i % 3 == 0:  # sparse: the cheap model answered a third of the prompts
                models["cheap"] = {
                    "quality": 0.0,
                    "input_tokens": 10,
                    "output_tokens": 7,
                    "cost_usd": 0.00001,
                }
            if i % 5 == 0:
                models["elsewhere"] = {"quality": 0.5}
            fh.write(
                json.dumps({"id": f"p{i}", "prompt": f"question {i}?", "models": models}) + "\n"
            )
    return path


def test_sparse_records_load_once_with_capped_weight(tmp_path):
    path = _write(tmp_path / "labels.jsonl", 600)
    store = InMemoryPosteriorStore()
    eng = _engine(store)
    first = learn_records(eng, read_records(path), max_weight=100.0)
    assert first.records == 600
    assert first.ratings == {"strong": 600, "cheap": 200}
    assert first.unknown_models == {"elsewhere": 120}
    assert first.weights == {"strong": pytest.approx(1 / 6), "cheap": 0.5}
    stats = {m: st for m, (_, st) in store.read(["cheap", "strong"], eng.dim).items()}
    assert stats["strong"].counters["n"] == pytest.approx(100.0)  # capped evidence
    assert stats["cheap"].counters["n"] == pytest.approx(100.0)
    assert stats["cheap"].counters["r"] == 0.0 and stats["strong"].counters["r"] == pytest.approx(
        100.0
    )
    assert stats["cheap"].counters["calls"] == 200  # expected tokens and cost from every record
    assert stats["cheap"].counters["out_tokens"] == 7 * 200
    again = learn_records(eng, read_records(path), max_weight=100.0)
    assert again.updates_applied == 0 and again.updates_already_applied == first.updates_applied
    assert store.read(["strong"], eng.dim)["strong"][1].counters["n"] == pytest.approx(100.0)
    # The floor is told each model's offline weight, once.
    offline = eng.floors.store.read(fl.OFFLINE_STREAM)
    assert offline == {
        fl.OFFLINE_WEIGHT + "strong": pytest.approx(100.0),
        fl.OFFLINE_WEIGHT + "cheap": pytest.approx(100.0),
    }
    # The posterior now prefers the strong model, as the labels say.
    x, _ = eng.featurize(["question 7?"])
    posts, _, _ = eng.posteriors()
    assert posts[1].predict(x)[0][0] > posts[0].predict(x)[0][0] + 0.5


def test_a_bad_line_is_named_with_its_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"prompt": "ok", "models": {"strong": {"quality": 1}}})
        + "\n"
        + json.dumps({"prompt": "x", "models": {"strong": {"quality": 2}}})
        + "\n"
    )
    with pytest.raises(ValueError, match=r"bad.jsonl:2: models\['strong'\].quality must be in"):
        list(read_records(path))
