"""The ports of the core: what the routing engine and the workers' ``handle_*`` functions
need from the outside, as Protocols. Adapters in the feature packages (``routing``,
``learning``, ``execution``, ``history``) implement them on Redis, SQL and pydantic-ai; the
in-memory fakes (``conduit_workers.fakes``, and beside some adapters) implement them for tests
and the in-process library.

=======================  ==============================  =====================================
port                     real adapter                    fake
=======================  ==============================  =====================================
:class:`PosteriorStore`  ``RedisPosteriorStore``         ``InMemoryPosteriorStore``
:class:`History`         ``SqlHistory``                  ``InMemoryHistory``
:class:`Embedder`        ``StaticEmbedder``,             ``HashingEmbedder``
                         ``MiniLMEmbedder``
:class:`LLM`             ``LLMClient``                   ``FakeLLM``
:class:`FeatureCache`    ``RedisFeatureCache``           (none: optional)
:class:`FloorStore`      ``RedisFloorStore``             ``InMemoryFloorStore``
:class:`RecentPrompts`   ``RedisRecentPrompts``          ``InMemoryRecentPrompts``
:class:`BudgetLedger`    ``RedisBatchLedger``            (none: optional)
=======================  ==============================  =====================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from conduit_workers.domain.bandit import ArmStats, Array
from conduit_workers.domain.budget import BudgetState
from conduit_workers.domain.chat import ChatRequest
from conduit_workers.domain.records import (
    Completion,
    DecisionRow,
    ExecutionRow,
    Hold,
    QueryRow,
    ResultRow,
    Update,
)
from conduit_workers.domain.rewards import FeedbackEvent


class PosteriorStore(Protocol):
    """Per-model sufficient statistics with a version; updates atomic and idempotent."""

    def read(self, models: list[str], dim: int) -> dict[str, tuple[int, ArmStats]]:
        """Version and statistics per model; a model never updated reads as zeros, version 0."""
        ...

    def apply(self, updates: list[Update], decay: float = 1.0) -> int:
        """Apply each update at most once per update id (old evidence first multiplied by
        :func:`~conduit_workers.domain.learning.decay_factor`); returns how many applied."""
        ...

    def reset(self, models: list[str]) -> None: ...


class FloorStore(Protocol):
    """Counters per quality-floor stream, changed atomically and at most once per update id
    (each prompt's mark, where its rating counts, is kept with its decision in the history)."""

    def read(self, stream: str) -> dict[str, float]: ...

    def apply(
        self,
        stream: str,
        update_id: str,
        increments: dict[str, float],
        log_lambda_bounds: tuple[float, float] = (-math.inf, math.inf),
        log_lambda_init: float = 0.0,
    ) -> bool: ...


class Embedder(Protocol):
    """Sentence vectors: (n, ``dim``) unit rows for n texts."""

    dim: int

    def embed(self, texts: list[str]) -> Array: ...


class LLM(Protocol):
    """Calls a catalog model; raises :class:`~conduit_workers.errors.ProviderError` subclasses
    only (retryable or permanent)."""

    async def complete(
        self,
        model_name: str,
        prompt: str,
        request: ChatRequest | None = None,
        max_output_tokens: int | None = None,
    ) -> Completion:
        """One call: ``prompt`` as one user message, or ``request``'s messages and settings;
        ``max_output_tokens`` caps the answer (a budget's worst case)."""
        ...


Featurize = Callable[[list[str]], tuple[Array, list[Any]]]


class FeatureCache(Protocol):
    """Get-or-compute query features by prompt; ``compute`` runs on the misses only."""

    def featurize(
        self, texts: Sequence[str], compute: Featurize, dim: int
    ) -> tuple[Array, list[Any]]: ...


class RecentPrompts(Protocol):
    """Each user's recent prompts (query id, text vector), for re-ask detection; raises
    :class:`~conduit_workers.errors.StoreUnavailable` when unreachable."""

    max_prompts: int  # prompts kept per user; each new prompt is compared with at most these

    def recent(
        self, users: list[str], now: float | None = None
    ) -> dict[str, list[tuple[str, Array]]]: ...

    def remember(self, entries: list[tuple[str, str, Array]], now: float | None = None) -> None: ...


class BudgetLedger(Protocol):
    """Budgets' limit, spend and reservations, shared by every process: a call reserves its
    worst case first (refused past the limit), then settles its real cost; idempotent by
    reservation id. Raises :class:`~conduit_workers.errors.StoreUnavailable` when unreachable."""

    def reserve(
        self,
        batch_id: str,
        limit_usd: float,
        reservation_id: str,
        amount_usd: float,
        ttl_s: float,
        recorded_spend_usd: float = 0.0,
    ) -> Hold: ...

    def settle(self, batch_id: str, reservation_id: str, cost_usd: float) -> bool: ...

    def states(self, batch_ids: Sequence[str]) -> dict[str, BudgetState]: ...


class History(Protocol):
    """The history database as the workers use it. Every write a redelivered task may repeat
    ignores what is there already (keyed by prompt or event id), so effects happen once."""

    # router
    def load_queries(self, query_ids: Sequence[str]) -> list[QueryRow]:
        """The prompts with no decision yet, in the order given."""
        ...

    def insert_decisions(self, rows: Sequence[DecisionRow]) -> None: ...

    def unanswered_counts(self, batch_ids: Sequence[str]) -> dict[str, int]:
        """Prompts of each batch that have no result yet (for pacing a budget)."""
        ...

    # executor
    def load_for_execution(self, query_ids: Sequence[str]) -> list[ExecutionRow]:
        """Decided prompts with no result yet."""
        ...

    def record_results(
        self, results: Sequence[ResultRow], events: Sequence[FeedbackEvent]
    ) -> list[str]:
        """Store results and their implicit events at once; the ids newly stored."""
        ...

    def unapplied_feedback_for(self, query_ids: Sequence[str]) -> list[str]:
        """The ids of these prompts' feedback events not applied yet."""
        ...

    def batch_budgets(self, query_ids: Sequence[str]) -> dict[str, tuple[str, float]]:
        """(batch id, budget in USD) of each prompt that belongs to a budgeted batch."""
        ...

    def batch_spend(self, batch_ids: Sequence[str]) -> dict[str, float]:
        """The recorded cost of each batch's answers."""
        ...

    # feedback
    def add_feedback(self, events: Sequence[FeedbackEvent]) -> list[str]:
        """Insert events; the ids that were new."""
        ...

    def claim_feedback(
        self, event_ids: Sequence[str], update_id: str
    ) -> tuple[list[FeedbackEvent], dict[str, Array]]:
        """Claim the unclaimed events for ``update_id``; every unapplied event this id owns,
        with the decision contexts of their prompts."""
        ...

    def floor_marks(self, query_ids: Sequence[str]) -> dict[str, str]:
        """The quality-floor mark (``DecisionRow.floor_mark``) of each of these prompts that was
        routed under a floor."""
        ...

    def mark_applied(self, update_id: str) -> None: ...

    def answered_by(self, refs: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Reference (query id or input id) of an answered prompt → (query id, model)."""
        ...

    def stale_unanswered(self, older_than_s: float, limit: int = 10_000) -> list[str]: ...

    def stale_feedback(
        self, older_than_s: float, limit: int = 10_000
    ) -> dict[str | None, list[str]]: ...
