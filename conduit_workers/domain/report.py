"""The daily cost report's figures, computed from the day's rows (pure Python + numpy).

A prompt belongs to the UTC day of its result. Definitions (``docs/reports.md`` has the long form):

- spend: the recorded ``cost_usd`` of the answers (catalog price × tokens at call time);
- calls / failed calls: one per model tried for a prompt (the first choice and each fallback);
- retries: attempts beyond the first on the same model, ``attempts − fallbacks − 1``;
- reference cost: every answered prompt's observed tokens at the catalog reference model's
  prices ("always the strongest model"); savings = reference cost − spend;
- waste: failed attempts priced like an answer of the same model that day (most providers bill
  nothing for a 429 or a 5xx, so this is the money at risk, an upper bound); the costs recorded
  on failed calls, usually 0, are ``waste_billed_usd``;
- routing share: of the prompts routed to a model, the share of each model the router chose;
- mean rating: the explicit ratings of the day's answers, whenever they were given;
- budget: a budgeted batch's limit (``conduit submit --budget-usd``) beside its spend of the
  day; ``over_budget`` counts its prompts that no model could be afforded for (no call made).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np

from conduit_workers.domain.catalog import Catalog
from conduit_workers.domain.report_trend import QualityKept, Trend

UNROUTABLE = "(unroutable)"
OVER_BUDGET_KEY = "(over budget)"
NO_TAG = "(none)"
NO_USER = "(none)"
NO_KEY = "(no API key)"
API_TAG = "api:"  # the gateway tags its requests ``api:<key name>``


@dataclass(frozen=True)
class ResultFact:
    """One result of the day, with its routing decision and the batch it is billed to."""

    query_id: str
    model: str | None  # the model that answered (or failed last)
    routed_model: str | None  # the router's choice
    status: str  # ok | error | unroutable | over_budget | …
    input_tokens: int
    output_tokens: int
    cost_usd: float
    latency_ms: float
    attempts: int
    fallbacks: int
    created_at: datetime
    batch_id: str | None = None
    tag: str | None = None
    budget_usd: float | None = None  # the billing batch's budget
    user: str | None = None  # the prompt's ``user``
    batch_created_at: datetime | None = None  # when the billing batch was submitted


@dataclass(frozen=True)
class CallFact:
    """One model tried for one prompt (an implicit feedback event of the executor)."""

    query_id: str
    model: str
    error: bool
    cost_usd: float


@dataclass
class Group:
    """The figures of one model, provider, batch, tag, or the whole day."""

    key: str
    prompts: int = 0
    ok: int = 0
    errors: int = 0
    unroutable: int = 0
    over_budget: int = 0
    calls: int = 0
    failed_calls: int = 0
    retries: int = 0
    fallbacks: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    spend_usd: float = 0.0
    reference_cost_usd: float = 0.0
    waste_usd: float = 0.0
    waste_billed_usd: float = 0.0
    routed: int = 0
    ratings: int = 0
    rating_sum: float = 0.0
    latency_ms: list[float] = field(default_factory=list, repr=False)
    budget_usd: float | None = None  # a batch's budget, an API key's daily budget

    @property
    def savings_usd(self) -> float:
        return self.reference_cost_usd - self.spend_usd

    @property
    def mean_rating(self) -> float | None:
        return self.rating_sum / self.ratings if self.ratings else None

    @property
    def mean_latency_ms(self) -> float | None:
        return float(np.mean(self.latency_ms)) if self.latency_ms else None

    @property
    def p95_latency_ms(self) -> float | None:
        return float(np.percentile(self.latency_ms, 95)) if self.latency_ms else None

    def row(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("latency_ms", "rating_sum")}
        out.update(
            savings_usd=self.savings_usd,
            mean_rating=self.mean_rating,
            mean_latency_ms=self.mean_latency_ms,
            p95_latency_ms=self.p95_latency_ms,
        )
        return out


@dataclass
class DailyReport:
    day: date
    catalog_version: str
    reference_model: str
    total: Group
    models: list[Group]
    providers: list[Group]
    batches: list[Group]
    tags: list[Group]
    batch_tags: dict[str, str]
    routing_share: dict[str, float]  # routed model → share of the routed prompts
    share_over_time: list[tuple[datetime, dict[str, int]]]  # bin start → routed count per model
    repriced_spend_usd: float  # the answers' tokens at today's catalog prices
    users: list[Group] = field(default_factory=list)
    keys: list[Group] = field(default_factory=list)  # per API key (from the ``api:`` tag)
    batch_times: dict[str, datetime] = field(default_factory=dict)  # batch → submitted at
    unanswered: int = 0  # the day's submitted prompts without any result yet
    dead_lettered: int = 0  # of those, the ones held by a dead letter
    trend: Trend | None = None  # set from the stored daily rows (reporting.py)
    quality: QualityKept | None = None  # against the reference, estimated

    def batch_label(self, batch: str) -> str:
        """A batch as people know it: its tag and submission time; its id when untagged."""
        tag, at = self.batch_tags.get(batch), self.batch_times.get(batch)
        if tag in (None, NO_TAG) or at is None:
            return batch
        return f"{tag} ({at.strftime('%Y-%m-%d %H:%M')} UTC)"

    def summary(self) -> dict[str, Any]:
        """The totals stored in the day's history row."""
        t = self.total
        return {
            "catalog_version": self.catalog_version,
            "prompts": t.prompts,
            "calls": t.calls,
            "errors": t.failed_calls,
            "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens,
            "spend_usd": t.spend_usd,
            "reference_cost_usd": t.reference_cost_usd,
            "savings_usd": t.savings_usd,
            "waste_usd": t.waste_usd,
            "mean_rating": t.mean_rating,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day.isoformat(),
            "catalog_version": self.catalog_version,
            "reference_model": self.reference_model,
            "total": self.total.row(),
            "models": [g.row() for g in self.models],
            "providers": [g.row() for g in self.providers],
            "batches": [
                {
                    **g.row(),
                    "tag": self.batch_tags.get(g.key),
                    "submitted_at": _iso(self.batch_times.get(g.key)),
                }
                for g in self.batches
            ],
            "tags": [g.row() for g in self.tags],
            "users": [g.row() for g in self.users],
            "keys": [g.row() for g in self.keys],
            "unanswered": self.unanswered,
            "dead_lettered": self.dead_lettered,
            "trend": self.trend.to_json() if self.trend else None,
            "quality_kept": self.quality.to_json() if self.quality else None,
            "routing_share": self.routing_share,
            "share_over_time": [[ts.isoformat(), counts] for ts, counts in self.share_over_time],
            "repriced_spend_usd": self.repriced_spend_usd,
        }


def build_report(
    day: date,
    results: Iterable[ResultFact],
    calls: Iterable[CallFact],
    ratings: dict[str, float],
    catalog: Catalog,
    bins: int = 24,
    *,
    unanswered: Collection[str] = (),
    dead_letters: Collection[str] = (),
    key_budgets: Mapping[str, float | None] | None = None,
) -> DailyReport:
    """Every figure of the day from its result rows, call events and explicit ratings.

    ``unanswered``: the ids of the day's submitted prompts without a result;
    ``dead_letters``: the prompt ids the dead-letter queue holds (any day);
    ``key_budgets``: each API key's daily budget (``None``: unlimited), shown beside its spend."""
    results = list(results)
    ref = catalog.get(catalog.reference)
    known = {m.name: m for m in catalog.models}
    total = Group("total")
    models: dict[str, Group] = {}
    batches: dict[str, Group] = {}
    tags: dict[str, Group] = {}
    batch_tags: dict[str, str] = {}
    batch_times: dict[str, datetime] = {}
    users: dict[str, Group] = {}
    keys: dict[str, Group] = {}

    ok_cost: dict[str, list[float]] = {}
    for r in results:
        if r.status == "ok" and r.model is not None:
            ok_cost.setdefault(r.model, []).append(r.cost_usd)
    all_ok = [c for cs in ok_cost.values() for c in cs]

    def unit_cost(model: str | None) -> float:
        """What one answer of this model cost on average that day (for pricing failures)."""
        if model in ok_cost:
            return float(np.mean(ok_cost[model]))
        return float(np.mean(all_ok)) if all_ok else 0.0

    by_query: dict[str, ResultFact] = {}
    for r in results:
        by_query[r.query_id] = r
        key = r.model if r.model is not None else _no_model_key(r.status)
        batch_key = r.batch_id or "(no batch)"
        batch_tags[batch_key] = r.tag or NO_TAG
        if r.batch_created_at is not None:
            batch_times[batch_key] = r.batch_created_at
        batch = batches.setdefault(batch_key, Group(batch_key, budget_usd=r.budget_usd))
        user_key, api_key = r.user or NO_USER, _api_key(r.tag)
        groups = [
            total,
            models.setdefault(key, Group(key)),
            batch,
            tags.setdefault(r.tag or NO_TAG, Group(r.tag or NO_TAG)),
            users.setdefault(user_key, Group(user_key)),
            keys.setdefault(api_key, Group(api_key, budget_usd=(key_budgets or {}).get(api_key))),
        ]
        tried = r.status not in ("unroutable", "over_budget")
        failed_attempts = (r.attempts - 1 if r.status == "ok" else r.attempts) if tried else 0
        for g in groups:
            g.prompts += 1
            g.ok += r.status == "ok"
            g.errors += r.status == "error"
            g.unroutable += r.status == "unroutable"
            g.over_budget += r.status == "over_budget"
            g.retries += max(0, r.attempts - r.fallbacks - 1) if tried else 0
            g.fallbacks += r.fallbacks
            g.input_tokens += r.input_tokens
            g.output_tokens += r.output_tokens
            g.spend_usd += r.cost_usd
            g.waste_usd += failed_attempts * unit_cost(r.model)
            if r.status == "ok":
                g.reference_cost_usd += ref.cost_usd(r.input_tokens, r.output_tokens)
                g.latency_ms.append(r.latency_ms)
            if r.query_id in ratings:
                g.ratings += 1
                g.rating_sum += ratings[r.query_id]
    for c in calls:
        owner = by_query.get(c.query_id)
        if owner is None:
            continue
        # A call counts for the model it went to; its batch and tag are the prompt's.
        groups = [
            total,
            models.setdefault(c.model, Group(c.model)),
            batches[owner.batch_id or "(no batch)"],
            tags[owner.tag or NO_TAG],
            users[owner.user or NO_USER],
            keys[_api_key(owner.tag)],
        ]
        for g in groups:
            g.calls += 1
            g.failed_calls += c.error
            g.waste_billed_usd += c.cost_usd if c.error else 0.0
    routed = [r.routed_model for r in results if r.routed_model is not None]
    for m in routed:
        models.setdefault(m, Group(m)).routed += 1
    total.routed = len(routed)
    share = {m: models[m].routed / len(routed) for m in sorted(set(routed))} if routed else {}

    providers: dict[str, Group] = {}
    for g in models.values():
        prov = (
            known[g.key].provider
            if g.key in known
            else ("-" if g.key in (UNROUTABLE, OVER_BUDGET_KEY) else "unknown")
        )
        p = providers.setdefault(prov, Group(prov))
        for name in (
            "prompts",
            "ok",
            "errors",
            "unroutable",
            "over_budget",
            "calls",
            "failed_calls",
            "retries",
            "fallbacks",
            "input_tokens",
            "output_tokens",
            "spend_usd",
            "reference_cost_usd",
            "waste_usd",
            "waste_billed_usd",
            "routed",
            "ratings",
            "rating_sum",
        ):
            setattr(p, name, getattr(p, name) + getattr(g, name))
        p.latency_ms.extend(g.latency_ms)

    repriced = sum(
        known[r.model].cost_usd(r.input_tokens, r.output_tokens)
        for r in results
        if r.status == "ok" and r.model in known
    )
    return DailyReport(
        day=day,
        catalog_version=catalog.version,
        reference_model=ref.name,
        total=total,
        models=sorted(models.values(), key=lambda g: (-g.spend_usd, g.key)),
        providers=sorted(providers.values(), key=lambda g: (-g.spend_usd, g.key)),
        batches=sorted(batches.values(), key=lambda g: (-g.spend_usd, g.key)),
        tags=sorted(tags.values(), key=lambda g: (-g.spend_usd, g.key)),
        batch_tags=batch_tags,
        routing_share=share,
        share_over_time=share_over_time(results, bins),
        repriced_spend_usd=repriced,
        users=sorted(users.values(), key=lambda g: (-g.spend_usd, g.key)),
        keys=sorted(keys.values(), key=lambda g: (-g.spend_usd, g.key)),
        batch_times=batch_times,
        unanswered=len(set(unanswered)),
        dead_lettered=len(set(unanswered) & set(dead_letters)),
    )


def _api_key(tag: str | None) -> str:
    """The API key a prompt came through (the gateway's ``api:<name>`` tag), else NO_KEY."""
    return tag[len(API_TAG) :] if tag and tag.startswith(API_TAG) else NO_KEY


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat()


def _no_model_key(status: str) -> str:
    """The model group of a prompt that no model answered and none was tried for."""
    return OVER_BUDGET_KEY if status == "over_budget" else UNROUTABLE


def share_over_time(
    results: list[ResultFact], bins: int = 24
) -> list[tuple[datetime, dict[str, int]]]:
    """Routed prompts per model over time: the day's hours when its traffic spans three hours
    or more, else ``bins`` equal bins between its first and last result (one short batch)."""
    routed = sorted((r.created_at, r.routed_model) for r in results if r.routed_model is not None)
    if not routed:
        return []
    start, end = routed[0][0], routed[-1][0]
    width = max((end - start) / bins, timedelta(milliseconds=1))
    if end - start >= timedelta(hours=3):  # a day of traffic: whole hours from midnight
        start = start.replace(hour=0, minute=0, second=0, microsecond=0)
        width, bins = timedelta(hours=1), 24
    out: list[tuple[datetime, dict[str, int]]] = [(start + i * width, {}) for i in range(bins)]
    for ts, model in routed:
        i = min(int((ts - start) / width), bins - 1)
        counts = out[i][1]
        counts[model] = counts.get(model, 0) + 1
    return [(ts, c) for ts, c in out if c]


__all__ = ["ResultFact", "CallFact", "Group", "DailyReport", "build_report", "share_over_time"]
