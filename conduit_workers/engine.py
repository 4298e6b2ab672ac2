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
from conduit_workers.domain.bandit import (
    Array,
    Posterior,
    Prior,
    arm_noise_sd,
    peer_prior_mean,
    pooled_noise_sd,
    price_tier_offsets,
    thompson_samples,
)
from conduit_workers.domain.catalog import Catalog
from conduit_workers.domain.constraints import Constraints
from conduit_workers.domain.features import ContextBuilder, SharedPrefixes, embedding_text
from conduit_workers.domain.policy import (
    Expectations,
    choose,
    expected_costs,
    expected_input_tokens,
    reference_cost,
)
from conduit_workers.domain.rewards import FeedbackEvent, aggregate
from conduit_workers.errors import StoreUnavailable
from conduit_workers.settings import RouterSettings

log = logging.getLogger(__name__)


@dataclass
class _Cached:
    key: tuple[int, ...]  # the models' versions
    dim: int
    posteriors: list[Posterior]
    expectations: list[Expectations]
    typical_in_tokens: float | None  # mean input tokens of the calls seen, None before any


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
        self._cache: _Cached | None = None
        self.degraded = False  # routing from cached posteriors while the store is unreachable
        self.prefixes = SharedPrefixes(settings.shared_prefix_min_chars)

    @property
    def dim(self) -> int:
        return self.contexts.dim

    def embedding_texts(self, texts: Sequence[str]) -> list[str]:
        """What the encoder reads of each prompt: shared openings stripped, then the end."""
        stripped = self.prefixes(texts) if self.settings.strip_shared_prefix else list(texts)
        return [embedding_text(t, self.settings.embed_tail_chars) for t in stripped]

    def featurize(self, texts: Sequence[str]) -> tuple[Array, list]:  # type: ignore[type-arg]
        """Contexts (n, dim) and analyses of the prompts: one forward pass of the encoder."""
        return self.contexts.build(self.embedder.embed(self.embedding_texts(texts)), list(texts))

    def posteriors(self) -> tuple[list[Posterior], list[Expectations], dict[str, int]]:
        """Posterior and expectations per catalog model, recomputed only when a version moved.

        Every model's prior is centred on the peers' pooled estimate (see
        :func:`peer_prior_mean`), so all posteriors are recomputed together when any moved.
        """
        names = list(self.catalog.names)
        try:
            read = self.store.read(names, self.dim)
        except StoreUnavailable:
            if self._cache is None or self._cache.dim != self.dim:
                raise
            # Degraded: route from the last posteriors seen; feedback waits in the history
            # database and its queue, and is applied when Redis answers again.
            self.degraded = True
            last = dict(zip(names, self._cache.key, strict=True))
            log.warning(
                "posterior store unavailable: routing from the last known posteriors "
                "(versions %s) until it returns",
                last,
            )
            return self._cache.posteriors, self._cache.expectations, last
        if self.degraded:
            log.warning("posterior store available again: routing from fresh posteriors")
            self.degraded = False
        versions = {m: read[m][0] for m in names}
        key = tuple(versions[m] for m in names)
        if self._cache is not None and self._cache.key == key and self._cache.dim == self.dim:
            return self._cache.posteriors, self._cache.expectations, versions
        stats = [read[m][1] for m in names]
        rs = self.settings
        prior_mean = peer_prior_mean(stats, self.prior, self.dim) if rs.peer_prior else None
        noise = pooled_noise_sd(stats, self.prior) if rs.estimate_noise else None
        offsets = np.zeros(len(names))
        if rs.price_prior and prior_mean is not None:
            offsets = price_tier_offsets(stats, self._log_prices())
        posts, exps = [], []
        for spec, st, off in zip(self.catalog.models, stats, offsets, strict=True):
            sd = arm_noise_sd(st, noise) if noise is not None else None
            m0 = None
            if prior_mean is not None:
                m0 = prior_mean.copy()
                m0[0] += off
            posts.append(
                Posterior.from_stats(st, self.prior, spec.quality_prior, prior_mean=m0, noise_sd=sd)
            )
            exps.append(
                Expectations.from_stats(st, spec, rs.default_output_tokens, rs.default_latency_ms)
            )
        calls = sum(st.counters["calls"] for st in stats)
        typical_in = sum(st.counters["in_tokens"] for st in stats) / calls if calls else None
        self._cache = _Cached(key, self.dim, posts, exps, typical_in)
        return posts, exps, versions

    def _log_prices(self) -> Array:
        """Log of each model's price for a typical call (input-heavy: 4 input tokens per output)."""
        return np.asarray(
            np.log(
                np.array(
                    [
                        4 * m.input_price_per_mtok_usd + m.output_price_per_mtok_usd + 1e-3
                        for m in self.catalog.models
                    ]
                )
            ),
            dtype=float,
        )

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
        success = np.array([e.success_rate for e in exps])[None, :]
        samples, means = samples * success, means * success
        chars = np.array([len(t) for t in texts], dtype=float)
        specs = list(self.catalog.models)
        costs = expected_costs(chars, specs, exps)
        latencies = np.array([e.latency_ms for e in exps])
        typical = self._cache.typical_in_tokens if self._cache is not None else None
        if typical is None:
            typical = float(expected_input_tokens(chars).mean())
        choices = choose(
            samples,
            means,
            costs,
            latencies,
            specs,
            list(constraints),
            self.settings.lambda_cost,
            self.settings.lambda_latency,
            cost_scale=reference_cost(typical, specs, exps, self.catalog.reference),
        )
        rows = []
        for i, (qid, ch, an) in enumerate(zip(query_ids, choices, analyses, strict=True)):
            j = self.catalog.index(ch.model) if ch.model else None
            rows.append(
                DecisionRow(
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
                )
            )
        return rows

    def learn(
        self, events: Sequence[FeedbackEvent], contexts: dict[str, Array], update_id: str
    ) -> int:
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
    updates = [
        Update(f"{update_id}:{model}", model, delta)
        for model, delta in sorted(deltas.items())
        if not delta.is_empty()
    ]
    return store.apply(updates, decay)


def update_id_for(event_ids: Sequence[str]) -> str:
    """A deterministic id for a set of events: a redelivered task gets the same id."""
    h = hashlib.sha256("\n".join(sorted(event_ids)).encode()).hexdigest()
    return f"u{h[:40]}"
