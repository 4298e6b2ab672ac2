"""How much routing signal an encoder's context carries, with every label known (offline).

    python -m bench.probe --data ../shared/data/routellm_mmlu/routellm_mmlu.jsonl \
        [--embedder static|minilm] [--full] [--folds 5] [--json]

Not a router: an upper bound for any linear router on the same context. Per model, a ridge
regression of its quality on the production context (``RoutingEngine.featurize``: projected
embedding of what the encoder reads, plus cheap features), or with ``--full`` on the whole
embedding, trained with *every* model's label on the other folds; each prompt then goes to the
model maximising ``predicted quality − λ · cost / reference cost`` over a fine λ sweep. CS@95 is
the largest cost saved among the points that retain ≥ 95% of always-strongest's quality, as in
``bench.quality``. Comparing encoders here separates what the encoder knows from what online
learning (30% of one model's labels, exploration paid for) manages to use of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from bench.baselines import Run
from bench.datasets import Dataset, cached_embedder, catalog_for, load
from bench.quality import _pct
from bench.scoring import Figures, cs_at, figures
from bench.streaming import Scenario, Stream, _NullStore, featurize
from conduit_workers.domain.bandit import Array
from conduit_workers.routing.engine import RoutingEngine
from conduit_workers.settings import RouterSettings

log = logging.getLogger("bench.probe")
RIDGE = 1.0
LAMBDAS = np.concatenate([[0.0], np.geomspace(1e-3, 10.0, 200)])


def full_embeddings(ds: Dataset, settings: RouterSettings, embedder: str) -> Array:
    """The unit embedding of what the encoder reads, per prompt in file order."""
    emb = cached_embedder(ds, embedder)
    eng = RoutingEngine(catalog_for(ds), _NullStore(), emb, settings)
    texts = eng.embedding_texts(ds.prompts)
    x = np.asarray(emb.embed(texts), dtype=float)
    emb.save()
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cross_predictions(x: Array, quality: Array, folds: int, seed: int) -> Array:
    """Out-of-fold ridge predictions of every model's quality, ``(n, m)``."""
    n = len(x)
    f = np.hstack([np.ones((n, 1)), x])
    pred = np.zeros_like(quality, dtype=float)
    parts = np.array_split(np.random.default_rng(seed).permutation(n), folds)
    for test in parts:
        train = np.setdiff1d(np.arange(n), test)
        a = f[train]
        w = np.linalg.solve(a.T @ a + RIDGE * np.eye(f.shape[1]), a.T @ quality[train])
        pred[test] = f[test] @ w
    return pred


def frontier(ds: Dataset, pred: Array) -> list[Figures]:
    """The figures of routing each prompt by ``pred − λ·cost/reference``, over the λ sweep."""
    unit = ds.cost[:, ds.strongest].mean()  # the reference model's mean cost: one scale
    stream = Stream(np.arange(ds.n), np.zeros(ds.n, dtype=bool), 0, 32)
    scen = Scenario(ds.quality)
    return [
        figures(Run("probe", np.argmax(pred - lam * ds.cost / unit, axis=1)), ds, stream, scen)
        for lam in LAMBDAS
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--embedder", choices=("minilm", "static", "hashing"))
    ap.add_argument("--full", action="store_true", help="the whole embedding, not the context")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    settings = RouterSettings()
    embedder = args.embedder or settings.embedder
    ds = load(args.data)
    if args.full:
        x = full_embeddings(ds, settings, embedder)
        what = f"full {x.shape[1]}-dim embedding"
    else:
        # File order, one chunk per 32 prompts: the production contexts, learnt prefixes included.
        stream = Stream(np.arange(ds.n), np.zeros(ds.n, dtype=bool), 0, 32)
        x, _ = featurize(ds, stream, settings, embedder)
        what = f"production context ({x.shape[1]} dims)"
    points = frontier(ds, cross_predictions(x, ds.quality, args.folds, args.seed))
    out = {
        "data": ds.name,
        "embedder": embedder,
        "input": "full" if args.full else "context",
        "dims": int(x.shape[1]),
        "cs_at_95": cs_at(points, 0.95),
        "cs_at_98": cs_at(points, 0.98),
    }

    print(
        f"offline probe on {ds.name}, {embedder}, {what}, {args.folds}-fold ridge with every "
        f"label: CS@95 {_pct(out['cs_at_95']).strip()}, "
        f"CS@98 {_pct(out['cs_at_98']).strip()}"
    )
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
