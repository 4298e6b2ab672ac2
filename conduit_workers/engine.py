"""The routing engine: contexts, Thompson samples, decisions, and learning from feedback.

One object that the router worker, the feedback worker, the quality benchmark and the
in-process library API all use, over any :class:`PosteriorStore`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from conduit_workers.adapters.embedder import Embedder
from conduit_workers.adapters.history import DecisionRow
from conduit_workers.adapters.posterior_store import PosteriorStore, Update
from conduit_workers.domain.bandit import Array, Posterior, Prior, thompson_samples
from conduit_workers.domain.catalog import Catalog
from conduit_workers.domain.constraints import Constraints
from conduit_workers.domain.features import ContextBuilder, SharedPrefixes, embedding_text
from conduit_workers.domain.policy import Expectations, choose, expected_costs
from conduit_workers.domain.rewards import FeedbackEvent, aggregate
from conduit_workers.settings import RouterSettings

log = logging.getLogger(__name__)


@dataclass
class _Cached:
    version: int
    posterior: Posterior
    expectations: Expectations


class RoutingEngine:
    def __init__(
        self,
        catalog: Catalog,
        store: PosteriorStore,
        embedder: Embedder,
        settings: RouterSettings,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.embedder = embedder
        self.settings = settings
        self.rng = rng if rng is not None else np.random.default_rng(settings.seed)
        self.contexts = ContextBuilder(embedder.dim, settings.projection_dim)
        self.prior = Prior(
            prior_quality=settings.prior_quality,
            prior_strength=settings.prior_strength,
            context_prior_strength=settings.context_prior_strength,
            noise_sd=settings.noise_sd,
        )
        self._cache: dict[str, _Cached] = {}
        self.prefixes = SharedPrefixes(settings.shared_prefix_min_chars)

    @property
    def dim(self) -> int:
        return self.contexts.dim

    def featurize(self, texts: Sequence[str]) -> tuple[Array, list]:  # type: ignore[type-arg]
        """Contexts (n, dim) and analyses of the prompts: one forward pass of the encoder."""
        stripped = self.prefixes(texts) if self.settings.strip_shared_prefix else list(texts)
        tails = [embedding_text(t, self.settings.embed_tail_chars) for t in stripped]
        return self.contexts.build(self.embedder.embed(tails), list(texts))

    def posteriors(self) -> tuple[list[Posterior], list[Expectations], dict[str, int]]:
        """Posterior and expectations per catalog model, recomputed only when a version moved."""
        names = list(self.catalog.names)
        read = self.store.read(names, self.dim)
        posts, exps, versions = [], [], {}
        for spec in self.catalog.models:
            version, stats = read[spec.name]
            cached = self._cache.get(spec.name)
            if cached is None or cached.version != version or cached.posterior.stats.dim != self.dim:
                cached = _Cached(
                    version,
                    Posterior.from_stats(stats, self.prior, spec.quality_prior),
                    Expectations.from_stats(stats, spec, self.settings.default_output_tokens,
                                            self.settings.default_latency_ms),
                )
                self._cache[spec.name] = cached
            posts.append(cached.posterior)
            exps.append(cached.expectations)
            versions[spec.name] = version
        return posts, exps, versions

    def decide(
        self,
        query_ids: Sequence[str],
        texts: Sequence[str],
        constraints: Sequence[Constraints],
        contexts: Array | None = None,
        analyses: list | None = None,  # type: ignore[type-arg]
    ) -> list[DecisionRow]:
        """Route a chunk of prompts; one decision row per prompt (model None if unroutable)."""
        if contexts is None or analyses is None:
            contexts, analyses = self.featurize(texts)
        posts, exps, versions = self.posteriors()
        samples, means = thompson_samples(contexts, posts, self.rng, self.settings.exploration)
        chars = np.array([len(t) for t in texts], dtype=float)
        specs = list(self.catalog.models)
        costs = expected_costs(chars, specs, exps)
        latencies = np.array([e.latency_ms for e in exps])
        choices = choose(samples, means, costs, latencies, specs, list(constraints),
                         self.settings.lambda_cost, self.settings.lambda_latency)
        rows = []
        for i, (qid, ch, an) in enumerate(zip(query_ids, choices, analyses, strict=True)):
            j = self.catalog.index(ch.model) if ch.model else None
            rows.append(DecisionRow(
                query_id=qid,
                model=ch.model,
                ranked=list(ch.ranked),
                features=[round(float(v), 7) for v in contexts[i]],
                utilities={k: round(v, 6) for k, v in ch.utility.items()},
                domain=an.domain,
                complexity=an.complexity,
                expected_cost_usd=float(costs[i, j]) if j is not None else None,
                posterior_versions=versions,
                reason=ch.reason,
            ))
        return rows

    def learn(self, events: Sequence[FeedbackEvent], contexts: dict[str, Array], update_id: str) -> int:
        return learn(self.store, events, contexts, self.dim, update_id, self.settings.decay)


def learn(
    store: PosteriorStore,
    events: Sequence[FeedbackEvent],
    contexts: dict[str, Array],
    dim: int,
    update_id: str,
    decay: float = 1.0,
) -> int:
    """Apply feedback events to the posteriors: one atomic, idempotent update per model."""
    deltas = aggregate(events, contexts, dim)
    updates = [Update(f"{update_id}:{model}", model, delta)
               for model, delta in sorted(deltas.items()) if not delta.is_empty()]
    return store.apply(updates, decay)


def update_id_for(event_ids: Sequence[str]) -> str:
    """A deterministic id for a set of events: a redelivered task gets the same id."""
    h = hashlib.sha256("\n".join(sorted(event_ids)).encode()).hexdigest()
    return f"u{h[:40]}"
