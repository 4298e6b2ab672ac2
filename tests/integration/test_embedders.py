"""The two real encoders a router can run: all-MiniLM-L6-v2 under sentence-transformers (from the
shipped weights, offline) and the static vectors distilled from it (the default). Both must put
a paraphrase nearer than any unrelated prompt, and the static vectors, trained on WordNet's
glosses, must reproduce MiniLM's embeddings of prompts they never saw."""

from __future__ import annotations

import json
from importlib.resources import files

import numpy as np
import pytest

from conduit_workers.errors import ConfigError
from conduit_workers.routing.embedder import make_embedder
from conduit_workers.routing.static_embedder import read_meta
from conduit_workers.settings import RouterSettings

pytestmark = pytest.mark.integration

TEXTS = [
    "How do I reverse a list in Python?",
    "What is the way to reverse a Python list?",
    "Which river flows through the city of Cairo?",
    "Name the river that runs through Cairo, Egypt.",
    "Prove that the square root of two is irrational.",
]


def _similarities(name: str) -> np.ndarray:
    emb = make_embedder(name)
    x = emb.embed(TEXTS)
    assert x.shape == (len(TEXTS), emb.dim)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-6)
    assert emb.embed([]).shape == (0, emb.dim)
    return x @ x.T


@pytest.mark.parametrize("name", ["minilm", "static"])
def test_paraphrases_are_nearer_than_unrelated_prompts(name: str) -> None:
    if name == "static" and not (RouterSettings().static_model_dir / "vectors.npy").exists():
        pytest.skip("static embedder not distilled here (the install step distils it)")
    sim = _similarities(name)
    for a, b in ((0, 1), (2, 3)):
        unrelated = [sim[a, k] for k in range(len(TEXTS)) if k not in (a, b)]
        assert sim[a, b] > max(unrelated), (name, a, b, sim.round(2))


def test_unknown_embedder_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="'minilm', 'static' or 'hashing'"):
        make_embedder("word2vec")


def test_trained_static_vectors_reproduce_minilm_on_unseen_prompts() -> None:
    """The shipped MMLU sample is not in the training corpus. Untrained (model2vec alone) the
    static embedding's cosine to MiniLM's is ~0.26 on MMLU; trained, ~0.6."""
    meta = read_meta(RouterSettings().static_model_dir)
    if meta is None or meta.get("corpus") is None:
        pytest.skip("static embedder not trained here (no WordNet glosses at install time)")
    lines = files("conduit_workers").joinpath("data/mmlu_sample.jsonl").read_text().splitlines()
    prompts = [json.loads(line)["prompt"] for line in lines[:200]]
    static, minilm = make_embedder("static"), make_embedder("minilm")
    assert static.dim == minilm.dim == 384  # the same space: the same context projection
    cos = np.sum(static.embed(prompts) * minilm.embed(prompts), axis=1)
    assert cos.mean() > 0.5, cos.mean()
    assert meta["holdout_cos_after"] > meta["holdout_cos_before"] + 0.2, meta
