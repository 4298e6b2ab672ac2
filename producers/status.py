"""``conduit status``: is the system up, what is waiting, what has it learned, what did it cost.

Reads only: worker replies to a broadcast ping (their queues), the broker's queue depths, the
posteriors in Redis, today's spend in the history database, the dead-letter count, and the
newest budgeted batches (budget, recorded spend, and the ledger's live spend and holds), and
each quality floor's stream (its estimated quality against the reference, and its lower bound).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, time
from typing import Any

import redis
from celery import Celery

from conduit_workers import names
from conduit_workers.domain.catalog import Catalog
from conduit_workers.execution import cooldowns
from conduit_workers.execution.batch_ledger import RedisBatchLedger
from conduit_workers.learning.posterior_store import RedisPosteriorStore
from conduit_workers.reports.report_sql import SqlReports
from conduit_workers.routing.floor_store import RedisFloorStore
from conduit_workers.routing.quality_floor import FloorState, floor_states
from conduit_workers.settings import Settings


@dataclass
class ModelStatus:
    model: str
    provider: str
    pulls: int  # calls made (first choices and fallbacks)
    errors: int
    evidence: float  # weight of the quality observations
    mean_reward: float | None  # mean observed reward (None before any)
    quality: float  # posterior mean of the overall quality, as the router sees it
    quality_sd: float  # its uncertainty
    expected_cost_usd: float  # on a typical prompt of the traffic seen
    expected_latency_ms: float
    version: int


@dataclass
class BudgetStatus:
    batch_id: str
    tag: str | None
    budget_usd: float
    prompts: int
    answered: int
    over_budget: int
    spend_usd: float  # recorded with the answers (history database)
    ledger_spent_usd: float | None  # the ledger's count (None: no ledger in Redis)
    held_usd: float | None  # reserved by calls in flight


@dataclass
class Status:
    workers: dict[str, list[str]]  # worker name → queues it consumes
    queues: dict[str, int | None]  # queue → waiting messages (None: not declared yet)
    models: list[ModelStatus]
    answers_today: int
    spend_today_usd: float
    dead_letters: int | None
    errors: list[str] = field(default_factory=list)  # what could not be read
    # The router's feature cache: hits, misses, skipped (breaker open); None if unreadable.
    feature_cache: dict[str, int] | None = None
    # Models an executor's circuit breaker has cooled down → seconds left.
    cooling: dict[str, float] = field(default_factory=dict)
    # The newest batches with a budget.
    budgets: list[BudgetStatus] = field(default_factory=list)
    # The quality floors' streams: the default ones first, then by prompts decided.
    floors: list[FloorState] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def queue_depths(app: Celery, queues: tuple[str, ...]) -> dict[str, int | None]:
    """Messages waiting per queue, through kombu (Redis lists or RabbitMQ queues alike)."""
    out: dict[str, int | None] = {}
    with app.connection_for_read() as conn:
        for q in queues:
            ch = conn.channel()
            try:
                out[q] = int(ch.queue_declare(queue=q, passive=True).message_count)
            except Exception:  # noqa: BLE001 - a queue nobody declared yet: not an error
                out[q] = None
            finally:
                try:
                    ch.close()
                except Exception:  # noqa: BLE001
                    pass
    return out


def workers(app: Celery, timeout_s: float) -> dict[str, list[str]]:
    replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    return {name: sorted(q["name"] for q in qs) for name, qs in sorted(replies.items())}


def model_statuses(
    settings: Settings, catalog: Catalog, store: RedisPosteriorStore
) -> list[ModelStatus]:
    """The router's own view: the engine's posteriors (peer prior, noise estimate) and
    expectations, built without loading the sentence encoder."""
    from conduit_workers.routing.embedder import HashingEmbedder
    from conduit_workers.routing.engine import RoutingEngine

    engine = RoutingEngine(catalog, store, HashingEmbedder(), settings.router)
    posts, exps, versions = engine.posteriors()
    read = store.read(list(catalog.names), engine.dim)
    calls = sum(read[m][1].counters["calls"] for m in catalog.names)
    typical_in = (
        sum(read[m][1].counters["in_tokens"] for m in catalog.names) / calls if calls else 200.0
    )
    out = []
    for spec, post, exp in zip(catalog.models, posts, exps, strict=True):
        c = read[spec.name][1].counters
        cost = (
            typical_in * spec.input_price_per_mtok_usd
            + exp.out_tokens * spec.output_price_per_mtok_usd
        ) / 1e6
        out.append(
            ModelStatus(
                model=spec.name,
                provider=spec.provider,
                pulls=int(c["calls"]),
                errors=int(c["errors"]),
                evidence=round(c["n"], 3),
                mean_reward=c["r"] / c["n"] if c["n"] > 0 else None,
                quality=float(post.mean[0]),
                quality_sd=float(post.noise_sd * post.cov_unscaled[0, 0] ** 0.5),
                expected_cost_usd=cost,
                expected_latency_ms=exp.latency_ms,
                version=versions[spec.name],
            )
        )
    return out


def dead_letter_count(client: redis.Redis, prefix: str) -> int | None:
    try:
        from conduit_workers.infra.dead_letters import RedisDeadLetters
    except ImportError:
        return None
    return int(client.hlen(RedisDeadLetters(client, prefix).key))


def collect(
    settings: Settings, catalog: Catalog, app: Celery, reports: SqlReports, timeout_s: float = 1.0
) -> Status:
    """Everything ``conduit status`` shows; a part that cannot be read is named in ``errors``."""
    errors: list[str] = []

    def attempt(what: str, fn: Any, default: Any) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - status must show what it can
            errors.append(f"{what}: {type(exc).__name__}: {exc}")
            return default

    r = settings.redis
    client = redis.Redis.from_url(
        r.url, socket_timeout=r.socket_timeout_s, socket_connect_timeout=r.socket_timeout_s
    )
    store = RedisPosteriorStore(client, r.key_prefix, r.applied_ttl_s)
    midnight = datetime.combine(datetime.now(UTC).date(), time(0), tzinfo=UTC)
    n, usd = attempt("history", lambda: reports.spend_since(midnight), (0, 0.0))
    return Status(
        workers=attempt("workers", lambda: workers(app, timeout_s), {}),
        queues=attempt("broker", lambda: queue_depths(app, names.QUEUES), {}),
        models=attempt("posteriors", lambda: model_statuses(settings, catalog, store), []),
        answers_today=n,
        spend_today_usd=usd,
        dead_letters=attempt("dead letters", lambda: dead_letter_count(client, r.key_prefix), None),
        errors=errors,
        feature_cache=attempt(
            "feature cache", lambda: feature_cache_stats(client, r.key_prefix), None
        ),
        cooling=attempt("cooldowns", lambda: cooldowns.read(client, r.key_prefix), {}),
        budgets=attempt(
            "budgets",
            lambda: budget_statuses(
                reports,
                RedisBatchLedger(
                    client,
                    r.key_prefix,
                    settings.budget.ledger_ttl_s,
                    settings.budget.charge_expired_holds,
                ),
            ),
            [],
        ),
        floors=attempt(
            "quality floors",
            lambda: floor_states(
                RedisFloorStore(client, r.key_prefix, r.applied_ttl_s), settings.router
            ),
            [],
        ),
    )


def budget_statuses(
    reports: SqlReports, ledger: RedisBatchLedger, limit: int = 10
) -> list[BudgetStatus]:
    """The newest budgeted batches, each with its ledger when Redis still holds it."""
    batches = reports.budgeted_batches(limit)
    states = ledger.states([b.batch_id for b in batches])
    out = []
    for b in batches:
        st = states.get(b.batch_id)
        out.append(
            BudgetStatus(
                b.batch_id,
                b.tag,
                b.budget_usd,
                b.prompts,
                b.answered,
                b.over_budget,
                b.spend_usd,
                None if st is None else st.spent_usd,
                None if st is None else st.reserved_usd,
            )
        )
    return out


def feature_cache_stats(client: redis.Redis, prefix: str) -> dict[str, int]:
    from conduit_workers.routing.feature_cache import read_stats

    return read_stats(client, prefix)


def render(s: Status) -> list[str]:
    lines = [f"workers: {len(s.workers)} up"]
    lines += [f"  {name}: {', '.join(qs)}" for name, qs in s.workers.items()]
    lines.append(
        "queues (waiting): "
        + ", ".join(f"{q} {'-' if n is None else n}" for q, n in s.queues.items())
    )
    lines.append(f"dead letters: {'-' if s.dead_letters is None else s.dead_letters}")
    if s.feature_cache is not None:
        fc = s.feature_cache
        seen = fc["hits"] + fc["misses"]
        rate = f"{fc['hits'] / seen:.1%}" if seen else "-"
        lines.append(
            f"feature cache: {fc['hits']} hits, {fc['misses']} misses (hit rate {rate}), "
            f"{fc['skipped']} routed around it (breaker open)"
        )
    lines.append(
        "cooled down: "
        + (", ".join(f"{m} ({left:.0f} s left)" for m, left in sorted(s.cooling.items())) or "none")
    )
    lines.append(f"today (UTC): {s.answers_today} answers, ${s.spend_today_usd:.6f}")
    lines.append(
        f"{'model':40} {'pulls':>6} {'errors':>6} {'reward':>7} {'quality':>7} "
        f"{'± sd':>6} {'exp. USD':>10} {'exp. ms':>8}"
    )
    for m in s.models:
        reward = "-" if m.mean_reward is None else f"{m.mean_reward:.3f}"
        lines.append(
            f"{m.model[:40]:40} {m.pulls:>6} {m.errors:>6} {reward:>7} {m.quality:>7.3f} "
            f"{m.quality_sd:>6.3f} {m.expected_cost_usd:>10.6f} {m.expected_latency_ms:>8.0f}"
        )
    if s.budgets:
        lines.append(
            f"{'budgeted batch':34} {'budget USD':>10} {'spent USD':>10} {'held USD':>9} "
            f"{'used':>6} {'answered':>9} {'over budget':>11}"
        )
    for b in s.budgets:
        spent = b.ledger_spent_usd if b.ledger_spent_usd is not None else b.spend_usd
        held = "-" if b.held_usd is None else f"{b.held_usd:.6f}"
        name = f"{b.batch_id[:12]} ({b.tag})" if b.tag else b.batch_id[:34]
        lines.append(
            f"{name[:34]:34} {b.budget_usd:>10.4f} {spent:>10.6f} {held:>9} "
            f"{spent / b.budget_usd:>6.1%} {b.answered:>4}/{b.prompts:<4} {b.over_budget:>11}"
        )
    lines += render_floors(s.floors)
    lines += [f"could not read {e}" for e in s.errors]
    return lines


FLOORS_SHOWN = 10  # streams listed by `conduit status`; the rest are counted


def render_floors(floors: list[FloorState]) -> list[str]:
    if not floors:
        return []
    lines = [
        f"{'quality floor stream':34} {'floor':>5} {'prompts':>8} {'to ref.':>7} "
        f"{'ratings':>7} {'estimate':>8} {'lower':>6} {'λ_cost':>7} state"
    ]
    for f in floors[:FLOORS_SHOWN]:
        est = "-" if f.estimate is None else f"{f.estimate:.3f}"
        low = "-" if f.lower_bound is None else f"{f.lower_bound:.3f}"
        lines.append(
            f"{f.stream[:34]:34} {f.floor:>5.3g} {f.prompts:>8} {f.reference_share:>7.1%} "
            f"{f.ratings:>7} {est:>8} {low:>6} {f.lambda_cost:>7.3f} {f.state}"
        )
    if len(floors) > FLOORS_SHOWN:
        lines.append(f"… and {len(floors) - FLOORS_SHOWN} more floors (--json lists all)")
    return lines


__all__ = ["Status", "ModelStatus", "BudgetStatus", "collect", "render", "queue_depths"]
