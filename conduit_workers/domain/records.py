"""The records the core exchanges with its ports: rows read from and written to the history,
updates of the posterior store, completions of the LLM client.

Plain frozen dataclasses, no behaviour: the ports (:mod:`conduit_workers.domain.ports`) take
and return these, and every adapter or fake speaks them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conduit_workers.domain.bandit import ArmStats
from conduit_workers.domain.budget import BudgetState
from conduit_workers.domain.chat import ChatRequest


@dataclass(frozen=True)
class QueryRow:
    """A prompt to route: its text and the constraints of the prompt and of its batch."""

    id: str
    prompt: str
    constraints: dict[str, Any]
    batch_constraints: dict[str, Any]
    user: str | None = None
    # What the user asks now, for re-ask detection: the last user turn of the prompt's OpenAI
    # messages (None: the prompt itself). Read for prompts with a user only.
    asked: str | None = None
    # False only when none of the prompt's batches has a budget or is a Batch API batch (whose
    # API key may have a daily budget): the router then skips the budgets query of its chunk.
    budgeted: bool = True


@dataclass(frozen=True)
class DecisionRow:
    """The router's decision for one prompt (``model`` None: unroutable, see ``reason``)."""

    query_id: str
    model: str | None
    ranked: list[str]
    features: list[float]
    utilities: dict[str, float]
    domain: str
    complexity: float
    expected_cost_usd: float | None
    posterior_versions: dict[str, int]
    reason: str | None = None
    # Where the answer counts when the prompt was routed under a quality floor (a
    # quality_floor.FloorMark); a rating of the answer feeds that stream's estimate
    # (RoutingEngine.rate_floors; the feedback worker reads it back from the history database).
    floor: Any = None

    @property
    def floor_mark(self) -> str | None:
        """The floor mark as stored in the decision's row (None: not routed under a floor)."""
        if self.floor is None or self.model is None:
            return None
        return str(self.floor.encode(self.model))


@dataclass(frozen=True)
class ExecutionRow:
    """A decided prompt to answer: its text, the chosen model and the fallbacks in order."""

    query_id: str
    prompt: str
    model: str | None
    ranked: list[str]
    reason: str | None
    request: ChatRequest | None = None  # messages and settings (the HTTP API); None: the prompt
    # When the prompt was submitted (UTC), read with it for the end-to-end latency metric;
    # None where the history does not say.
    submitted_at: datetime | None = None


@dataclass(frozen=True)
class ResultRow:
    """The outcome of a prompt: ``ok`` with the answer, ``error`` or ``unroutable``."""

    query_id: str
    model: str | None
    status: str
    response: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    attempts: int = 0
    fallbacks: int = 0
    error_class: str | None = None
    error_message: str | None = None


@dataclass(frozen=True)
class SubmitOutcome:
    batch_id: str
    new: list[str]  # query ids first seen in this submission
    existing: list[str]  # already known: answered once, never again


@dataclass(frozen=True)
class Update:
    """A change to one model's statistics, applied at most once under ``update_id``."""

    update_id: str
    model: str
    delta: ArmStats


@dataclass(frozen=True)
class Hold:
    """The answer to a budget reservation: whether it is held, and the ledger after it."""

    held: bool
    state: BudgetState


@dataclass(frozen=True)
class Completion:
    """One successful LLM call: the answer, its tokens and latency."""

    text: str
    input_tokens: int
    output_tokens: int
    latency_ms: float
