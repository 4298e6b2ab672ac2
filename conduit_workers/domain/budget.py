"""Batch budgets: a call's worst-case cost, the ledger's units, a chunk's allowance.

Money in the ledger is counted in integer nano-dollars (1e-9 USD), rounded up, so that many
processes adding costs never drift below the true spend through float rounding.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from conduit_workers.domain.catalog import ModelSpec

NANO = 1_000_000_000  # ledger units per USD
OVER_BUDGET = "over_budget"  # the status of a prompt that no model could be afforded for
KEY_LEDGER = "apikey:"  # an API key's daily ledger: ``apikey:<name>:<YYYY-MM-DD>`` (UTC)


_today: tuple[int, str] = (-1, "")  # (days since the epoch, its YYYY-MM-DD): formatted once


def utc_day(at: datetime | None = None) -> str:
    """The UTC day an API key's daily budget counts in (``YYYY-MM-DD``)."""
    global _today
    if at is not None:
        return at.astimezone(UTC).strftime("%Y-%m-%d")
    n = int(time.time() // 86_400)  # Unix time has 86,400 s a day, leap seconds or not
    if n != _today[0]:
        _today = (n, datetime.fromtimestamp(n * 86_400, UTC).strftime("%Y-%m-%d"))
    return _today[1]


def key_ledger(key_name: str, day: str) -> str:
    """The ledger id of an API key's budget of ``day``: its chat calls and its Batch API
    calls reserve and settle in this one ledger."""
    return f"{KEY_LEDGER}{key_name}:{day}"


def check_batch_id(batch_id: str) -> str:
    """A submitted batch's id, or ``ValueError``: the ledger of a budgeted batch is known by
    the batch's id, so an id of the API keys' ledgers (``apikey:…``) would count the batch's
    calls in a key's daily budget and the key's calls in the batch's."""
    if batch_id.startswith(KEY_LEDGER):
        raise ValueError(
            f"a batch id may not start with {KEY_LEDGER!r} (reserved for the API keys' daily "
            "budgets)"
        )
    return batch_id


def parse_key_ledger(ledger_id: str) -> tuple[str, str] | None:
    """(key name, day) of an API key's daily ledger id; None for a batch's ledger."""
    if not ledger_id.startswith(KEY_LEDGER):
        return None
    name, _, day = ledger_id.removeprefix(KEY_LEDGER).rpartition(":")
    return (name, day) if name and day else None


def to_nano(usd: float) -> int:
    """USD in ledger units, rounded up (a cost is never counted below what it was)."""
    return math.ceil(round(usd * NANO, 3))


def from_nano(n: int | float) -> float:
    return float(n) / NANO


def validate_budget(value: object) -> float:
    """A batch budget in USD: a finite number > 0; ``ValueError`` saying what is wrong."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"a budget must be a finite number of USD > 0, got {value!r}")
    return float(value)


def worst_input_tokens(prompt: str, overhead_tokens: int) -> int:
    """At most this many input tokens: byte-level tokenizers make at most one token per byte."""
    return len(prompt.encode("utf-8")) + overhead_tokens


def worst_case_cost_usd(spec: ModelSpec, input_tokens: int, max_output_tokens: int) -> float:
    """The most a call can cost: every input token and the output cap at the model's prices."""
    return spec.cost_usd(input_tokens, max_output_tokens)


# What a chunk's allowance keeps back for the end of its batch, in chunks: each chunk's share is
# taken as if half a chunk more prompts were still to come. A chunk's choices fit its allowance
# in *expected* cost, and its calls cost what they cost: routerbench's answers run 12–15% longer
# than each model's mean where the router sends them, so with exact pro-rata shares the last
# chunk found its money gone before its last prompts (61 prompts over_budget in 6 of 120 bench
# runs, 21 in one). Kept back, the last chunk routes within two thirds of what is left: none
# over_budget in the same 120 runs, quality within 0.2; the price is 1/(2N+1) of the budget
# unspent where a batch of N chunks costs what was expected (bench/README.md).
TAIL_RESERVE_CHUNKS = 0.5


def allowance_usd(remaining_usd: float, chunk_len: int, remaining_prompts: int) -> float:
    """A chunk's share of what the batch has left: in proportion to its prompts, with
    :data:`TAIL_RESERVE_CHUNKS` of a chunk counted as still to come."""
    n = min(chunk_len, remaining_prompts) if remaining_prompts > 0 else chunk_len
    if n <= 0:
        return 0.0
    return max(0.0, remaining_usd) * n / (max(remaining_prompts, n) + TAIL_RESERVE_CHUNKS * n)


@dataclass(frozen=True)
class BudgetState:
    """A batch's ledger: its limit, what its calls cost, what calls in flight hold."""

    limit_usd: float
    spent_usd: float = 0.0
    reserved_usd: float = 0.0
    calls: int = 0
    expired: int = 0  # reservations released because their call never settled

    @property
    def remaining_usd(self) -> float:
        return max(0.0, self.limit_usd - self.spent_usd - self.reserved_usd)
