"""The one place that reads the environment.

Every setting is a ``CONDUIT_…`` environment variable, nested with ``__``
(``CONDUIT_REDIS__URL``, ``CONDUIT_EXECUTOR__CONCURRENCY``). Tests build ``Settings(...)``
directly; processes call :func:`get_settings` once.
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from conduit_workers.domain.features import N_CHEAP
from conduit_workers.domain.rewards import CallWeights

log = logging.getLogger(__name__)

DEFAULT_CATALOG = Path(__file__).parent / "data" / "catalog.toml"


class RedisSettings(BaseModel):
    """Redis holding the bandit posteriors (and, by default, the broker)."""

    url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "conduit"
    socket_timeout_s: float = 5.0
    # How long an applied update id is remembered, so a redelivered update changes nothing.
    applied_ttl_s: int = 7 * 24 * 3600


class BrokerSettings(BaseModel):
    """Celery broker. Empty means: the Redis of ``redis.url``. ``amqp://`` works too."""

    url: str | None = None
    # A task unacknowledged for this long is handed to another worker (Redis transport only).
    # It bounds the recovery time after a whole worker is killed, and must exceed the longest
    # task (see ``task_time_limit_s``), or a slow task runs twice (harmless, but it costs calls).
    visibility_timeout_s: int = 3600
    # How often a worker looks for unacknowledged tasks older than the visibility timeout. Kombu's
    # own default scans every 10 s x 10 = 100 s; recovery takes about timeout + this interval.
    restore_interval_s: int = 10
    # Hard time limit of one task (the pool child is killed and the task redelivered); None = none.
    # Keep it below ``visibility_timeout_s``: a stuck task is then retried before it is duplicated.
    # Prefork pools only: the executor's threads pool cannot kill a task (its calls are bounded
    # by ``executor.timeout_s`` instead).
    task_time_limit_s: int | None = None
    # A task delivered more often than this (e.g. it kills its worker each time) is moved to the
    # dead-letter table instead of running again; so is a task that fails for good.
    max_deliveries: int = 5
    # How often each worker checks the Redis broker's epoch (``infra/broker_epoch.py``): a
    # broker that restarted empty is noticed within this, and its lost work sent again; 0: off.
    epoch_check_s: float = 10.0


class DatabaseSettings(BaseModel):
    """History database: SQLite file by default, PostgreSQL (psycopg2) in production."""

    url: str = "sqlite:///conduit-history.db"
    pool_size: int = 5
    # Transient connection errors are retried for this long inside a task; then the task is
    # retried later by Celery (feedback without limit). Keep it below broker.task_time_limit_s.
    retry_for_s: float = 60.0
    # Bring the schema to the newest migration when a process first opens the database (under a
    # lock, so concurrent workers migrate once). Turn off in production and run
    # `conduit db upgrade` as a deploy step; a process then refuses an out-of-date schema.
    auto_migrate: bool = True


class CatalogSettings(BaseModel):
    path: Path = DEFAULT_CATALOG


class LimitsSettings(BaseModel):
    max_prompt_chars: int = 32_000
    max_metadata_chars: int = 4_000


class RouterSettings(BaseModel):
    """Contextual Thompson Sampling and the utility it maximises."""

    # Prompts per route task. Unset, ``Settings`` raises it to the executor's prompts per task
    # (256 at 512 call slots): a route task's fixed cost (its message, acknowledgement and
    # events, the chunk's transactions) was half the router's CPU per prompt at 64 there.
    chunk_size: int = Field(default=64, ge=1)
    # "static" (MiniLM distilled to word-piece vectors trained to reproduce its sentence
    # embeddings: no torch, ~100x MiniLM's rate, CS@95 level with it on the shared files;
    # bench/README.md), "minilm" (sentence-transformers, torch) or "hashing" (no weights; tests).
    embedder: str = "static"
    # The "static" embedder's folder; distilled from the shipped MiniLM weights by the install
    # step (python -m conduit_workers.tools.static_distill DIR) or on a router's first use.
    static_model_dir: Path = Path.home() / ".cache" / "conduit" / "minilm-static"
    # WordNet's data.* files (Debian: wordnet-base), the corpus the static vectors are trained
    # on, and how many of its glosses (MiniLM embeds ~200 a second on 2 cores). Without the
    # corpus the vectors are distilled untrained, with less of MiniLM's routing signal.
    static_corpus_dir: Path = Path("/usr/share/wordnet")
    static_corpus_texts: int = 40_000
    # Redis cache of query features (context + analysis) by prompt hash; 0 turns it off.
    feature_cache_ttl_s: int = 24 * 3600
    # After a cache error, the router skips the cache for this long (circuit breaker).
    feature_cache_breaker_s: float = 30.0
    feature_cache_url: str | None = None  # Redis of the cache; None = redis.url
    feature_cache_timeout_s: float = 0.25  # per cache call: a slow cache must not stall routing
    # Embedding reduced to this many dimensions. 32 predicts the quality gap on MMLU a little
    # better than 16 (and 64 no better), at 36² posterior cells per model.
    projection_dim: int = 32
    embed_tail_chars: int = (
        1_000  # embed the end of the prompt: shared few-shot prefixes blind the encoder
    )
    strip_shared_prefix: bool = (
        True  # drop openings shared by prompts (few-shot, templates) before embedding
    )
    shared_prefix_min_chars: int = 200  # shortest shared opening that counts as a template
    # The quality floor, the default way to run: keep this share of the catalog reference
    # model's mean quality over the stream (learning included) and spend as little as possible
    # (conduit_workers.domain.floor). None or 0 turns it off: ``lambda_cost`` then weighs cost.
    quality_floor: float | None = Field(default=0.95, ge=0.0, le=1.0)
    # How the floor is held (bench/README.md, "Quality floor"): standard deviations of the
    # slack estimate kept in reserve, the least random share of prompts sent to the reference
    # (its calibration over every kind of prompt), the normalised pessimistic slack the dual
    # variable aims at, the dual's step (log λ per 32 prompts per unit of slack), its first
    # and least λ (the same: below 0.1 the policy offers the gate dearer near-reference models
    # that save little per point of quality; the gate, not a falling λ, keeps the floor).
    floor_pessimism: float = 1.5
    floor_audit_min: float = 0.05
    floor_audit_scale: float = 1.0  # random share = scale / √(1 + reference ratings), at least min
    floor_target: float = 0.005
    floor_eta: float = 4.0
    floor_lambda_init: float = 0.1
    floor_lambda_min: float = 0.1
    # Weight of cost (an expert setting, used when no floor is set): the quality one would give
    # up to save the catalog reference model's whole expected cost on a typical prompt (the
    # dearest model's when there is no reference).
    lambda_cost: float = 0.1
    lambda_latency: float = (
        0.0  # weight of latency, relative to the slowest model's expected latency
    )
    prior_quality: float = 0.5  # prior mean quality of a model never observed
    prior_strength: float = 2.0  # prior precision of the per-model mean (pseudo-observations)
    # Prior precision of the contextual weights (pseudo-observations per direction): with many
    # models and short streams, a model's own contextual correction must earn its keep. 48
    # rather than 16 (with exploration 0.3): a weak per-prompt correction estimated from a few
    # hundred ratings moved decisions more by its noise than by its signal (bench/README.md).
    context_prior_strength: float = 48.0
    noise_sd: float = 0.5  # observation noise of a [0, 1] quality
    # Scale of the posterior samples. Below 1 trades a little of Thompson Sampling's worst-case
    # guarantee for much less exploration of 10+ models on streams of a few thousand prompts
    # (0.3: measured over 6 seeds and the whole λ sweep on the shared files, bench/README.md).
    exploration: float = 0.3
    peer_prior: bool = True  # centre each model's prior on all models' pooled estimate
    price_prior: bool = (
        False  # shift each model's prior by its price tier (slope fitted across models)
    )
    estimate_noise: bool = (
        True  # estimate the noise of a quality from the rewards seen (≤ noise_sd)
    )
    # Forgetting factor per unit of a model's new evidence (1.0 = none): 0.999 keeps a memory of
    # ~1,000 ratings per model, so a model whose quality drops loses its share within a bounded
    # number of prompts while the contextual weights (36 per model) keep enough ratings to be
    # learnt (0.998, ~500 ratings, cost MMLU ~2 points of CS@95).
    decay: float = 0.999
    default_output_tokens: int = 256  # expected output of a model never observed
    default_latency_ms: float = 1_000.0  # expected latency of a model never observed
    seed: int | None = None  # fixed seed for reproducible sampling (tests, benchmarks)


class RetrySettings(BaseModel):
    """Re-ask detection (the section keeps its first name, ``retry``): a user re-asking a
    near-identical prompt marks the earlier answer bad."""

    enabled: bool = True
    window_s: float = 600.0  # how long a user's prompts are remembered
    # How many of a user's latest prompts are remembered (and each prompt compared with): a
    # fixed-size window, at most ~2.7 KB of Redis per prompt (~170 KB per active user).
    window_prompts: int = Field(default=64, ge=1)
    threshold: float = 0.9  # cosine of the word vectors at or above which a prompt is a retry


class ExecutorSettings(BaseModel):
    # Prompts per execute task, called concurrently inside it (``prompts_per_task``). 0: half
    # the concurrency, 64 to 256 (64 up to 128 slots, 256 from 512): fewer, larger tasks cost
    # less CPU per prompt, in the executor and in the feedback tasks it sends. Routers split
    # their chunks by it: give routers and executors the same executor settings.
    chunk_size: int = Field(default=0, ge=0)
    # LLM calls in flight per executor process, shared by the tasks its pool threads run at
    # once (``ops/worker executor``: threads pool); with prefork, per pool process.
    concurrency: int = 64
    # Execute tasks one executor process runs at once: its threads pool's size when started
    # without ``-c`` (``ops/worker executor``, compose). 0: enough chunks to hold twice
    # ``concurrency`` prompts, at least 4, so that while a chunk's last calls finish, the next
    # chunks' prompts already wait for the freed slots (``pool_tasks``). A killed executor's
    # unacknowledged tasks (this many) come back after the visibility timeout.
    tasks: int = Field(default=0, ge=0)
    # A prompt's call belongs to one execute task at a time (its Celery task id, which a
    # redelivery keeps): a second task sent for the same prompts (a router killed after sending
    # its execute tasks and redelivered) leaves them to the first. The claim ends with its task,
    # or after this long when its worker died and the task never came back.
    claim_ttl_s: int = Field(default=900, ge=1)
    # Answers called while the history database is unreachable are kept in Redis until a retry
    # stores them (``execution/answer_stash.py``), so the retry does not call them again; for
    # at most this long.
    stash_ttl_s: int = Field(default=86400, ge=1)
    # While a chunk's calls run, its answers so far are stashed this often, so that a task
    # killed before it stores them leaves them to its redelivery rather than to a second call
    # (a chunk done sooner stashes nothing); 0 turns it off.
    stash_every_s: float = Field(default=0.5, ge=0.0)
    # How OpenAI and OpenAI-compatible models are called, one HTTP client per process shared by
    # all models: "http1" (Conduit's pydantic-ai model posting chat completions over its own
    # keep-alive HTTP/1.1 connections, no SDK: text prompts only, ~0.1 ms of CPU per call),
    # "direct" (the same model over aiohttp, ~0.3 ms), "aiohttp" (pydantic-ai's OpenAI model,
    # the SDK over its aiohttp transport, ~1.3-3 ms) or "httpx2" (the SDK's default, ~5 ms).
    http_client: str = "http1"
    # Of that shared client (kept alive too: no reconnect churn); at least ``concurrency``.
    max_connections: int = 256
    timeout_s: float = 60.0
    max_attempts: int = 3  # per model, for retryable errors (5xx, timeout; 429 without a gate)
    # How long a prompt waits for a rate-limited model (429 + Retry-After) before falling back.
    # 429s behind the shared gate are not failures: they do not use up ``max_attempts``.
    rate_limit_wait_s: float = 30.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 20.0
    max_output_tokens: int | None = None
    # Circuit breaker per model and worker process: over the last ``health_window`` calls, a
    # failure share above ``cooldown_failure_rate`` (with ≥ ``cooldown_min_calls`` calls)
    # cools the model down for ``cooldown_s``: prompts fall back to the next-best model, then one
    # probe call tests the model again. A 429's Retry-After pauses every call to that model.
    health_window: int = 20
    cooldown_min_calls: int = 8
    cooldown_failure_rate: float = 0.5
    cooldown_s: float = 30.0

    @property
    def prompts_per_task(self) -> int:
        """Prompts per execute task: ``chunk_size``, or derived from the call slots."""
        if self.chunk_size:
            return self.chunk_size
        return max(64, min(256, self.concurrency // 2))

    @property
    def pool_tasks(self) -> int:
        """Execute tasks at once per process: ``tasks``, or derived from the call slots."""
        if self.tasks:
            return self.tasks
        return max(4, -(-2 * self.concurrency // self.prompts_per_task))


class BudgetSettings(BaseModel):
    """Batch budgets (``conduit submit --budget-usd``), held by a ledger in Redis.

    Before each LLM call of a budgeted batch the executor reserves the call's worst case: the
    prompt's input tokens at most (its UTF-8 bytes plus ``input_overhead_tokens``: a byte-level
    tokenizer never makes more tokens than bytes) and its output tokens at most, at the model's
    catalog prices. The call is made only if the reservation fits in what the batch has left;
    the real cost replaces the reservation when the call ends.
    """

    # Output tokens of a call at most: ``executor.max_output_tokens``, else the catalog's
    # ``max_output_tokens`` of the model, else this; budgeted calls are capped at it.
    max_output_tokens: int = Field(default=4_096, gt=0)
    # Chat-template tokens a provider adds around a prompt (role markers, special tokens).
    input_overhead_tokens: int = Field(default=32, ge=0)
    # A reservation not settled after this long (its worker died mid-call) expires; the
    # executor uses at least ``executor.timeout_s`` + 60 s, so a live call never outlasts it
    # (a hold is taken right before one call and settled right after it).
    reservation_ttl_s: float = Field(default=120.0, gt=0)
    # An expired reservation is charged as spent at its worst case (the dead call may have
    # been billed, and nothing else records it: the budget then holds on the provider's bill
    # too); false releases it instead (more of the budget for the batch's other prompts).
    charge_expired_holds: bool = True
    # A call that only the holds of calls in flight keep out (their worst cases; they usually
    # cost less) waits up to this long for them to settle before its prompt is passed over;
    # above the reservation TTL, so that it also outlasts the holds of calls that died. A
    # waiting prompt gives its executor call slot back (other prompts are called meanwhile).
    hold_wait_s: float = Field(default=150.0, ge=0)
    # How long a batch's ledger stays in Redis after its last call (status and reports read
    # it; the history database keeps the budget and the results' costs for good).
    ledger_ttl_s: int = Field(default=30 * 24 * 3600, gt=0)


class FeedbackSettings(BaseModel):
    chunk_size: int = 256
    # Weight of a failed call as a quality-0 observation. 0 by default: failures lower the
    # model's expected success rate (from its call counters), which the router multiplies into
    # its sampled quality; as quality evidence they would also drag down the prior that all
    # models share, and make every model look alike where ratings are rare.
    error_weight: float = 0.0
    # A successful call says nothing about its quality: by default it is no evidence.
    success_weight: float = 0.0
    success_reward: float = 1.0
    # The sweep (``conduit.feedback.sweep``, sent by beat every ``sweep_interval_s``) re-sends
    # work whose task was lost with the broker (Redis without persistence, flushed): prompts
    # without a result and feedback not applied, older than ``sweep_after_s``. Keep that above
    # the visibility timeout and the longest backlog: younger work may still be queued (sending
    # it twice is harmless, it only costs duplicate calls).
    sweep_interval_s: float = 300.0
    sweep_after_s: float = 7200.0

    @property
    def call_weights(self) -> CallWeights:
        """How a call's outcome counts as quality evidence (see the three fields above)."""
        return CallWeights(self.success_reward, self.success_weight, self.error_weight)


class ReportSettings(BaseModel):
    """The nightly cost report (``conduit.reports.daily_cost``, queue ``reports``)."""

    out_dir: Path = Path("var/reports")  # one folder per day: report.md, report.html, CSVs, PNGs
    schedule: bool = True  # beat sends the task every day at hour_utc:minute_utc
    hour_utc: int = 0
    minute_utc: int = 15  # builds the report of the UTC day that just ended
    # A scheduled run that claimed a day and died is taken over after this long.
    stale_claim_s: int = 3600


class BeatSettings(BaseModel):
    """Beat (``celery -A conduit_workers beat``): one per deployment, by a lock in Redis."""

    # The owner renews the lock every third of this; a killed beat's standby takes over after it.
    lock_ttl_s: float = 30.0


class FlowerSettings(BaseModel):
    """Flower (``celery -A conduit_workers flower``) defaults; ``FLOWER_*`` and flags override."""

    port: int = 5555
    # Listen address: localhost unless told otherwise ("0.0.0.0" or "" for every interface).
    address: str = "127.0.0.1"
    # Basic auth as ``user:password`` pairs separated by commas. Without one (here, in
    # ``FLOWER_BASIC_AUTH``/``FLOWER_AUTH`` or a flag) Flower refuses to start unless ``open``.
    basic_auth: SecretStr | None = None
    open: bool = False  # serve every page without a login, on purpose


class MetricsSettings(BaseModel):
    """``conduit metrics``: the Prometheus exporter of what Flower's /metrics lacks."""

    port: int = 9808
    address: str = "127.0.0.1"  # localhost unless told otherwise ("0.0.0.0": every interface)
    cache_s: float = 10.0  # figures read from the history database at most this often
    # history rows older than this are folded into the exporter's totals and not read again
    settle_s: float = 600.0


class GatewaySettings(BaseModel):
    """``conduit serve``: the OpenAI-compatible HTTP API (docs/deploy.md)."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # uvicorn worker processes (each routes in-process over the shared Redis)
    # Refuse requests without a valid API key (`conduit keys create`); off only for local trials.
    require_key: bool = True
    # A verified key is trusted for this long in each server process: a revoked key stops
    # working within it. 0 checks the history database on every request.
    key_cache_s: float = 10.0
    # How long the answer of a call sent with an ``Idempotency-Key`` header answers the
    # retries of that call (gateway/idempotency.py).
    idempotency_ttl_s: float = Field(default=86_400.0, gt=0)
    # How long the answer of a call from an SDK that numbers its attempts
    # (``x-stainless-retry-count``: the OpenAI and Anthropic SDKs) answers that SDK's own
    # retries of it, sent with no ``Idempotency-Key`` (gateway/idempotency.py, ``SdkRetries``);
    # a retry of a call still running waits for it. 0: such retries call again.
    sdk_retry_window_s: float = Field(default=60.0, ge=0)
    # A streamed call's response starts at once; until the model's first piece, an SSE comment
    # this often keeps the client's read timeout from firing (gateway/streaming.py).
    stream_keepalive_s: float = Field(default=0.5, gt=0)
    # History rows of answered calls are written behind the response in batches: at most this
    # many per transaction, one transaction per ``write_interval_s`` at most (sooner when a
    # batch is full), so a call's rows appear within about that of its answer.
    write_batch: int = 512
    write_interval_s: float = 0.05
    # The posteriors' versions and the quality floors' counters are read from Redis at most
    # this often per server process, and the floors' decision counts are written behind the
    # answers, not inside the decision (gateway/routing_state.py); 0: every decision reads them.
    routing_refresh_s: float = Field(default=0.1, ge=0)
    # A key's daily budget is held through one lease per key and server process
    # (gateway/budget_lease.py): a call whose worst case fits in the lease is held without a
    # Redis round trip, the lease grows by the calls' worst cases plus at most this much
    # headroom (and at most a quarter of what the key has left), and settled costs reach the
    # ledger every 0.25 s. A process killed without its shutdown is charged, after the lease's
    # TTL, at what it held: its calls in flight at worst case, plus at most this headroom.
    # 0: one hold per call, one Redis round trip each.
    budget_lease_usd: float = Field(default=1.0, ge=0)
    # FastAPI's native OpenTelemetry (a span, metrics and logs per request, once a provider is
    # configured). Off by default: looking for a provider costs ~3% of a request's CPU on
    # every request, configured or not.
    opentelemetry: bool = False


class Settings(BaseSettings):
    """All of Conduit's configuration, from ``CONDUIT_…`` variables or keyword arguments."""

    model_config = SettingsConfigDict(
        env_prefix="CONDUIT_", env_nested_delimiter="__", extra="ignore"
    )

    redis: RedisSettings = Field(default_factory=RedisSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    catalog: CatalogSettings = Field(default_factory=CatalogSettings)
    limits: LimitsSettings = Field(default_factory=LimitsSettings)
    router: RouterSettings = Field(default_factory=RouterSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    reports: ReportSettings = Field(default_factory=ReportSettings)
    beat: BeatSettings = Field(default_factory=BeatSettings)
    flower: FlowerSettings = Field(default_factory=FlowerSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _route_chunks_hold_execute_chunks(self) -> Settings:
        """A route task sends at least one whole execute task, unless told otherwise."""
        if "chunk_size" not in self.router.model_fields_set:
            self.router.chunk_size = max(self.router.chunk_size, self.executor.prompts_per_task)
        return self

    @property
    def context_dim(self) -> int:
        """Size of the context vector: constant, projected embedding, cheap features."""
        return 1 + self.router.projection_dim + N_CHEAP

    @property
    def broker_url(self) -> str:
        return self.broker.url or self.redis.url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment once (a mistyped ``CONDUIT_…``
    variable is warned about: see :func:`warn_unknown_variables`)."""
    warn_unknown_variables(os.environ)
    return Settings()


# CONDUIT_ variables that are not settings: the catalog's ${CONDUIT_REPLAY_URL}, docker
# compose's catalog file, the ops scripts' and the tests' own.
NOT_SETTINGS = ("CONDUIT_REPLAY_URL", "CONDUIT_CATALOG_FILE", "CONDUIT_VENV", "CONDUIT_OPS_DRY_RUN")
NOT_SETTINGS_PREFIXES = ("CONDUIT_TEST_",)


def _names(model: type[BaseModel], prefix: str) -> Iterator[str]:
    for name, info in model.model_fields.items():
        var = f"{prefix}{name.upper()}"
        yield var
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            yield from _names(kind, var + "__")


def known_variables() -> frozenset[str]:
    """Every ``CONDUIT_…`` variable that sets a setting (a section too, as JSON)."""
    return frozenset(_names(Settings, "CONDUIT_"))


def unknown_variables(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``CONDUIT_…`` variables that set nothing, each with the closest known name.

    A variable in the settings' form (``CONDUIT_SECTION__FIELD``) that names nothing is always
    reported; a flat one only when it is close to a setting (``CONDUIT_REDIS_URL``): flat names
    far from every setting belong to something else (an API key named in the catalog)."""
    known = known_variables()
    out = []
    for var in sorted(env):
        upper = var.upper()
        if (
            not upper.startswith("CONDUIT_")
            or upper in known
            or upper in NOT_SETTINGS
            or upper.startswith(NOT_SETTINGS_PREFIXES)
        ):
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.8)
        if "__" in upper or close:
            out.append((var, close[0] if close else None))
    return out


def warn_unknown_variables(env: Mapping[str, str]) -> None:
    for var, close in unknown_variables(env):
        hint = f"did you mean {close}?" if close else "see conduit_workers/settings.py"
        log.warning("environment variable %s sets no Conduit setting (ignored): %s", var, hint)


def environ() -> Mapping[str, str]:
    """The environment, for the catalog's ``${VAR}`` references and API key names."""
    return os.environ
