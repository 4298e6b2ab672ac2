"""Data files in the schema of ``../shared/data``: prompts, per-model quality and cost, a catalog.

Also the on-disk embedding cache (``bench/out/cache/``), keyed by a hash of the text actually
embedded, so one data file is embedded once however many runs and settings follow.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conduit_workers.domain.bandit import Array
from conduit_workers.domain.catalog import Catalog, ModelSpec
from conduit_workers.domain.ports import Embedder
from conduit_workers.routing.embedder import make_embedder
from conduit_workers.routing.static_embedder import model_id
from conduit_workers.routing.warm_start import DataFileError, read_records
from conduit_workers.settings import RouterSettings

log = logging.getLogger(__name__)

OUT = Path(__file__).parent / "out"
CACHE = OUT / "cache"


@dataclass
class Dataset:
    """A data file as arrays: ``quality[i, j]``, ``cost[i, j]`` of model ``j`` on prompt ``i``."""

    name: str
    ids: list[str]
    prompts: list[str]
    sources: list[str]
    models: list[str]
    quality: Array  # (n, m)
    cost: Array  # (n, m), USD as the dataset recorded it
    in_tokens: Array  # (n, m)
    out_tokens: Array  # (n, m)
    # (n, m) bool: whether the file holds model j's answer to prompt i (sparse files lack some;
    # a missing answer's quality and cost read 0, and no router may send the prompt there)
    present: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.present is None:
            self.present = np.ones(self.quality.shape, dtype=bool)

    @property
    def mask(self) -> np.ndarray:
        assert self.present is not None
        return self.present

    @property
    def sparse(self) -> bool:
        return not bool(self.mask.all())

    @property
    def n(self) -> int:
        return len(self.prompts)

    @property
    def strongest(self) -> int:
        """The model of highest mean quality (ties: the dearer), over the prompts it answered."""
        q, c = self.model_means()
        return int(max(range(len(self.models)), key=lambda j: (round(q[j], 9), c[j])))

    @property
    def cheapest(self) -> int:
        return int(np.argmin(self.model_means()[1]))

    def model_means(self) -> tuple[Array, Array]:
        """Mean quality and cost of each model over the prompts it answered."""
        k = np.maximum(self.mask.sum(axis=0), 1)
        return (self.quality * self.mask).sum(axis=0) / k, (self.cost * self.mask).sum(axis=0) / k

    def subset(self, idx: Array | list[int]) -> Dataset:
        idx = np.asarray(idx, dtype=int)
        return Dataset(
            self.name,
            [self.ids[i] for i in idx],
            [self.prompts[i] for i in idx],
            [self.sources[i] for i in idx],
            list(self.models),
            self.quality[idx],
            self.cost[idx],
            self.in_tokens[idx],
            self.out_tokens[idx],
            self.mask[idx],
        )


def load(path: Path) -> Dataset:
    """A file in the shared schema, read with `conduit learn`'s ``read_records`` (a bad line is
    an error naming it, not a wrong figure)."""
    rows = list(read_records(Path(path)))
    if not rows:
        raise DataFileError(f"{path} holds no prompt")
    models = list(dict.fromkeys(name for r in rows for name in r.models))
    n, m = len(rows), len(models)
    q, c, ti, to = (np.zeros((n, m)) for _ in range(4))
    present = np.zeros((n, m), dtype=bool)
    for i, r in enumerate(rows):
        for j, name in enumerate(models):
            rec = r.models.get(name)
            if rec is None:
                continue  # a sparse file: this prompt cannot go to that model
            present[i, j] = True
            q[i, j] = rec.quality
            c[i, j] = rec.cost_usd
            ti[i, j] = rec.input_tokens
            to[i, j] = rec.output_tokens
    return Dataset(
        Path(path).stem,
        [r.id for r in rows],
        [r.prompt for r in rows],
        [r.source for r in rows],
        models,
        q,
        c,
        ti,
        to,
        present,
    )


def _prices(cost: Array, tin: Array, tout: Array) -> tuple[float, float]:
    """USD per million input and output tokens that best explain the recorded costs (≥ 0)."""
    if (
        len(cost) < 3
        or tin.std() < 1e-9
        or tout.std() < 1e-9
        or np.corrcoef(tin, tout)[0, 1] > 0.99
    ):
        # Token counts that do not vary apart (e.g. one output token per call, per-request
        # pricing) cannot separate two prices: one blended price per token.
        blended = float(cost.sum() / max((tin + tout).sum(), 1e-9) * 1e6)
        return blended, blended
    a = np.stack([tin, tout], axis=1) / 1e6
    coef, *_ = np.linalg.lstsq(a, cost, rcond=None)
    if coef.min() < 0:  # fit the one price that is positive alone
        k = int(np.argmax(coef))
        only = float(a[:, k] @ cost / max(a[:, k] @ a[:, k], 1e-30))
        coef = np.zeros(2)
        coef[k] = max(only, 0.0)
    return float(coef[0]), float(coef[1])


def catalog_for(ds: Dataset, models: list[str] | None = None) -> Catalog:
    """A catalog of the file's models, priced from its recorded costs and token counts."""
    specs = []
    for j, name in enumerate(ds.models):
        if models is not None and name not in models:
            continue
        k = ds.mask[:, j]
        pin, pout = _prices(ds.cost[k, j], ds.in_tokens[k, j], ds.out_tokens[k, j])
        specs.append(
            ModelSpec(
                name=name,
                provider="openai-compatible",
                input_price_per_mtok_usd=pin,
                output_price_per_mtok_usd=pout,
                base_url="http://127.0.0.1:8700/v1",
            )
        )
    ref = ds.models[ds.strongest]
    if models is not None and ref not in models:
        ref = specs[0].name
    return Catalog(models=tuple(specs), reference=ref)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class CachedEmbedder:
    """An :class:`Embedder` that reads vectors from a file and embeds only what it lacks.

    The inner encoder is built on first need, so a run on a warm cache never loads torch.
    """

    def __init__(self, name: str, cache_file: Path) -> None:
        self.name = name
        self.cache_file = cache_file
        self._inner: Embedder | None = None
        self._vectors: dict[str, Array] = {}
        self._dirty = False
        self.dim = 256 if name == "hashing" else 384
        if cache_file.exists():
            data = np.load(cache_file)
            keys, vecs = data["keys"], data["vectors"]
            self._vectors = {str(k): vecs[i] for i, k in enumerate(keys)}
            if vecs.size:
                self.dim = int(vecs.shape[1])

    def embed(self, texts: list[str]) -> Array:
        keys = [text_key(t) for t in texts]
        missing = sorted(
            {k: t for k, t in zip(keys, texts, strict=True) if k not in self._vectors}.items()
        )
        if missing:
            if self._inner is None:
                self._inner = make_embedder(self.name)
                self.dim = self._inner.dim
            log.info("embedding %d texts with %s", len(missing), self.name)
            batch = sorted(missing, key=lambda kt: len(kt[1]))  # little padding per batch
            missing = batch
            vecs = self._inner.embed([t for _, t in batch])
            for (k, _), v in zip(missing, vecs, strict=True):
                self._vectors[k] = np.asarray(v, dtype=np.float32)
            self._dirty = True
        if not texts:
            return np.zeros((0, self.dim))
        return np.stack([self._vectors[k] for k in keys]).astype(np.float64)

    def save(self) -> None:
        if not self._dirty:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        if self.cache_file.exists():  # another run may have added vectors meanwhile: keep them
            try:
                with np.load(self.cache_file) as data:  # each data[...] reads the archive again
                    keys, vecs = data["keys"], data["vectors"]
                for i, k in enumerate(keys):
                    self._vectors.setdefault(str(k), vecs[i])
            except (OSError, ValueError, KeyError):
                log.warning("embedding cache %s unreadable; rewriting it", self.cache_file)
        keys = np.array(list(self._vectors))
        vecs = np.stack(list(self._vectors.values())).astype(np.float32)
        tmp = self.cache_file.with_name(f"{self.cache_file.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, keys=keys, vectors=vecs)
        tmp.replace(self.cache_file)
        self._dirty = False
        log.info("saved %d embeddings to %s", len(keys), self.cache_file)


def cached_embedder(ds: Dataset, name: str) -> CachedEmbedder:
    """The cached ``name`` embedder for ``ds``; a static embedder's cache is named after the
    vectors it was computed with, so rebuilt vectors never meet stale embeddings."""
    tag = name
    if name == "static":
        tag = model_id(RouterSettings().static_model_dir.expanduser()) or name
    return CachedEmbedder(name, CACHE / f"{ds.name}-{tag}.npz")
