"""The static embedder's distillation: the corpus reader, the training step, model currency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conduit_workers.routing import static_embedder as se
from conduit_workers.tools import static_distill as sd

# Two lines in the shape of WordNet 3.0's data.* files, behind the licence header.
_HEADER = "  1 This software and database is being provided to you, the LICENSEE, by\n"
_NOUN = (
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived or known or "
    "inferred to have its own distinct existence (living or nonliving)  \n"
    "00002137 03 n 02 abstraction 0 abstract_entity 0 | a general concept formed by extracting "
    'common features from specific examples; "an abstraction of the mind"  \n'
)
_VERB = "00001740 29 v 04 breathe 0 take_a_breath 0 | draw air into, and expel out of, the lungs\n"


def _corpus(tmp_path: Path) -> Path:
    (tmp_path / "data.noun").write_text(_HEADER + _NOUN)
    (tmp_path / "data.verb").write_text(_HEADER + _VERB)
    (tmp_path / "data.adj").write_text(_HEADER)
    (tmp_path / "data.adv").write_text(_HEADER)
    return tmp_path


def test_wordnet_glosses_are_read_without_the_licence_header(tmp_path: Path) -> None:
    corpus = _corpus(tmp_path)
    assert se.has_corpus(corpus)
    glosses = sd.wordnet_glosses(corpus)
    assert glosses == [
        "that which is perceived or known or inferred to have its own distinct existence "
        "(living or nonliving)",
        'a general concept formed by extracting common features from specific examples; "an '
        'abstraction of the mind"',
        "draw air into, and expel out of, the lungs",
    ]
    sample = sd.corpus_sample(corpus, 2)
    assert len(sample) == 2 and set(sample) <= set(glosses)
    assert sd.corpus_sample(corpus, 2) == sample  # a fixed sample: the same model every build
    (corpus / "data.adv").unlink()
    assert not se.has_corpus(corpus)


def test_training_makes_summed_vectors_reproduce_the_targets() -> None:
    """Targets made by hidden piece vectors; training from a noisy start must recover them well
    enough to match held-out texts it never saw."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    vocab, dim = 60, 8
    hidden = rng.standard_normal((vocab, dim))
    texts = [list(rng.integers(1, vocab, rng.integers(3, 12))) for _ in range(3000)]
    texts[5] = []  # a text without pieces is left out, not a NaN
    targets = np.array([hidden[t].sum(axis=0) if t else np.ones(dim) for t in texts])
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    init = hidden + 1.5 * rng.standard_normal((vocab, dim))
    init[0] = 0.0  # a piece no text holds keeps its vector
    vectors, stats = sd.train(init, texts, targets, epochs=6, lr=3e-2, batch_size=64)
    assert vectors.shape == init.shape and vectors.dtype == np.float32
    assert stats["holdout_cos_before"] < 0.8
    assert stats["holdout_cos_after"] > 0.97
    np.testing.assert_array_equal(vectors[0], 0.0)


def test_a_model_is_current_only_in_this_format_and_trained_when_the_corpus_is_there(
    tmp_path: Path,
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    assert not se.is_current(model)  # nothing there
    np.save(model / "vectors.npy", np.zeros((3, 2), dtype=np.float32))
    (model / "meta.json").write_text(json.dumps({"format": se.FORMAT - 1}))
    assert not se.is_current(model)
    (model / "meta.json").write_text(json.dumps({"format": se.FORMAT, "corpus": None}))
    assert se.is_current(model)
    (tmp_path / "wn").mkdir()
    corpus = _corpus(tmp_path / "wn")
    assert se.is_current(model, tmp_path / "absent")
    assert not se.is_current(model, corpus)  # built without a corpus that is there now
    (model / "meta.json").write_text(json.dumps({"format": se.FORMAT, "corpus": {"texts": 2}}))
    assert se.is_current(model, corpus)
    assert se.model_id(model) == se.model_id(model) and se.model_id(model).startswith("static-")
    assert se.model_id(tmp_path / "absent") is None


def test_install_replaces_an_outdated_or_untrained_model_and_keeps_a_current_one(
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    corpus = _corpus(tmp_path)

    def build(name: str, fmt: int, tag: str, trained: bool = False) -> Path:
        d = models / name
        d.mkdir()
        np.save(d / "vectors.npy", np.zeros((2, 2), dtype=np.float32))
        meta = {"format": fmt, "corpus": {"texts": 2} if trained else None, "tag": tag}
        (d / "meta.json").write_text(json.dumps(meta))
        return d

    def tag() -> str:
        return str(json.loads((out / "meta.json").read_text())["tag"])

    out = build("minilm-static", se.FORMAT - 1, "old")
    sd._install(build("tmp1", se.FORMAT, "untrained"), out, None)
    assert tag() == "untrained"
    sd._install(build("tmp2", se.FORMAT, "later"), out, None)  # another process finished first
    assert tag() == "untrained"
    # The corpus is there now: an untrained model gives way to a trained one, and stays so.
    sd._install(build("tmp3", se.FORMAT, "trained", trained=True), out, corpus)
    assert tag() == "trained"
    sd._install(build("tmp4", se.FORMAT, "untrained again"), out, corpus)
    assert tag() == "trained"
    sd._install(build("tmp5", se.FORMAT, "forced", trained=True), out, corpus, force=True)
    assert tag() == "forced"  # --force rebuilds a current model
    assert sorted(p.name for p in models.iterdir()) == ["minilm-static"]
