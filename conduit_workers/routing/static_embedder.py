"""A static embedding distilled from all-MiniLM-L6-v2: one vector per word piece, summed.

A prompt's embedding is the normalised sum of its word pieces' vectors: no torch at inference,
~100x faster than the encoder. The vectors are 384-dimensional, in MiniLM's own output space,
trained so that this sum reproduces MiniLM's sentence embeddings (``tools/static_distill.py``):
the router's context projection is the same as with the full encoder. Inference needs only
``tokenizers`` and numpy. The folder holds ``vectors.npy`` (float32, vocabulary × dim),
``tokenizer.json`` and ``meta.json``; the install step builds it, or a router on first use (in a
child process, so that torch never stays in the router) with
``python -m conduit_workers.tools.static_distill DIR`` (the training lives there, off the
runtime path; this module reads the model and its metadata).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from conduit_workers.domain.bandit import Array
from conduit_workers.errors import ConfigError

log = logging.getLogger(__name__)

MAX_TOKENS = 512  # a prompt's tokens beyond this are ignored (the router embeds the tail anyway)
WORD_CACHE_SIZE = 200_000  # distinct words whose word pieces are remembered (~30 MB when full)
DISTILL = "conduit_workers.tools.static_distill"
FORMAT = 2  # of the model folder; 1: PCA to 256 dims, no corpus (before the tokenlearn step)
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")  # the training corpus

# MiniLM's tokenizer (BertNormalizer: clean text, lowercase, strip accents; BertPreTokenizer:
# split on whitespace and isolate each punctuation mark) on an ASCII text is: drop control
# characters but tab and newlines, which become spaces, lowercase, then runs of letters and
# digits and single punctuation marks, each cut into word pieces on its own. Done on bytes: one
# bytes.translate cleans and lowercases (~0.3 µs a prompt; str.translate and lower, ~3 µs).
_ASCII_DROP = bytes((*range(9), 11, 12, *range(14, 32), 127))
_ASCII_MAP = bytes(c + 32 if 65 <= c <= 90 else 32 if c in (9, 10, 13) else c for c in range(256))
_ASCII_WORDS = re.compile(rb"[a-z0-9]+|[!-/:-@\[-`{-~]")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def _ascii_words(text: str) -> list[bytes]:
    return _ASCII_WORDS.findall(text.encode("ascii").translate(_ASCII_MAP, _ASCII_DROP))


def _words(text: str) -> list[bytes | str]:
    """The words of ``text`` as MiniLM's tokenizer splits them, each to be cut into word pieces
    on its own: ASCII runs are split here (as bytes); a segment between spaces that holds a
    non-ASCII character is kept whole (as str), for the tokenizer (Unicode cleaning, accents,
    case and punctuation are its to decide). Its normaliser maps each character on its own
    and its pre-tokeniser splits on every space, tab and newline, so a text's pieces are its
    segments'.
    """
    if text.isascii():
        return list(_ascii_words(text))
    spaced = text.replace("\t", " ").replace("\n", " ").replace("\r", " ")
    out: list[bytes | str] = []
    pos = 0
    for m in _NON_ASCII.finditer(spaced):
        i = m.start()
        if i < pos:
            continue  # in the segment taken already
        start = max(pos, spaced.rfind(" ", pos, i) + 1)
        end = spaced.find(" ", m.end())
        end = len(spaced) if end < 0 else end
        out += _ascii_words(spaced[pos:start])
        out.append(spaced[start:end])
        pos = end
    out += _ascii_words(spaced[pos:])
    return out


class StaticEmbedder:
    """Normalised sum of distilled word-piece vectors; numpy and ``tokenizers`` only."""

    def __init__(self, model_dir: Path, distill_if_missing: bool = True) -> None:
        model_dir = Path(model_dir).expanduser()
        if not is_current(model_dir):
            build = f"python -m {DISTILL} {model_dir}"
            if not distill_if_missing:
                raise ConfigError(
                    f"no static embedder of format {FORMAT} in {model_dir}: build it with `{build}`"
                )
            log.warning(
                "static embedder missing or outdated in %s: distilling it from MiniLM (once, a "
                "few minutes; the install step does it ahead)",
                model_dir,
            )
            # In a child process: torch (~400 MB) must not stay in a router for its lifetime.
            done = subprocess.run(
                [sys.executable, "-m", DISTILL, str(model_dir)], capture_output=True, text=True
            )
            if done.returncode != 0 or not is_current(model_dir):
                raise ConfigError(
                    f"`{build}` failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
                )
        from tokenizers import Tokenizer

        self.vectors = np.load(model_dir / "vectors.npy")
        self.dim = int(self.vectors.shape[1])
        # Names the vectors in cache keys: features computed with other vectors are not reused.
        self.model_id = model_id(model_dir) or "static"
        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self._word_ids: dict[bytes | str, list[int]] = {}
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

        Texts are split into words here (:func:`_words`) and each word's pieces are
        remembered: a prompt's words are mostly known, and a dict look-up per word costs a
        quarter of the tokenizer's pass over the text (its Rust ``encode_batch_fast`` is 3x
        slower on whole prompts than this split with the remembered words, and ~7x slower on
        prompts with a non-ASCII character). ASCII words not seen yet go through the
        tokenizer's WordPiece model, segments with a non-ASCII character through the whole
        tokenizer (same ids: tests/unit/test_fast_paths.py). With a tokenizer other than
        MiniLM's every text goes through the tokenizer.
        """
        if not self._bert_uncased:
            encs = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
            return [enc.ids for enc in encs]
        words = [_words(t) for t in texts]
        known = self._word_ids
        new = list(set(chain.from_iterable(words)).difference(known))
        if len(known) + len(new) > WORD_CACHE_SIZE:
            known.clear()
            new = list(set(chain.from_iterable(words)))
        if new:
            # An ASCII word of the split is already normalised and pre-tokenised (one run of
            # lowercase letters and digits, or one punctuation mark): the WordPiece model alone
            # gives its pieces, ~0.6 µs a word against ~10 µs through the whole pipeline.
            tokenize = self.tokenizer.model.tokenize
            known.update(
                (w, [t.id for t in tokenize(w.decode("ascii"))])
                for w in new
                if isinstance(w, bytes)
            )
            other = [w for w in new if isinstance(w, str)]
            if other:
                encs = self.tokenizer.encode_batch_fast(other, add_special_tokens=False)
                known.update((w, enc.ids) for w, enc in zip(other, encs, strict=True))
        return [list(chain.from_iterable([known[w] for w in ws]))[:MAX_TOKENS] for ws in words]

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


def read_meta(model_dir: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((model_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def model_id(model_dir: Path) -> str | None:
    """Names a built model by the hash of its metadata (for cache keys); None when absent."""
    try:
        return "static-" + hashlib.sha256((model_dir / "meta.json").read_bytes()).hexdigest()[:12]
    except OSError:
        return None


def is_current(model_dir: Path, corpus_dir: Path | None = None) -> bool:
    """Whether ``model_dir`` holds a model of this format; with ``corpus_dir``, also whether it
    was trained on the corpus if the corpus is there now."""
    meta = read_meta(model_dir)
    if meta is None or meta.get("format") != FORMAT or not (model_dir / "vectors.npy").is_file():
        return False
    return not (meta.get("corpus") is None and corpus_dir is not None and has_corpus(corpus_dir))


def has_corpus(corpus_dir: Path) -> bool:
    return all((corpus_dir / name).is_file() for name in WORDNET_FILES)
