"""The application: ``create_app(settings)`` builds it; its lifespan builds (per server process)
the catalog, the routing engine over the shared Redis posteriors, the LLM client, the budget
ledger, the history writer and the Celery producer that sends feedback by task name.

Routes (every ``/v1`` route needs ``Authorization: Bearer <key>`` unless
``CONDUIT_GATEWAY__REQUIRE_KEY=false``)::

    POST /v1/chat/completions   OpenAI's chat completion; model "conduit" is routed
    GET  /v1/models             the catalog, plus "conduit"
    GET  /v1/models/{model}     one of them
    POST /v1/feedback           a rating in [0, 1] of an answer (Conduit's own)
    GET  /healthz               "ok" once the process is ready
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from pydantic import ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from conduit_workers.domain.rewards import EXPLICIT, FeedbackEvent, explicit_event_id
from conduit_workers.execution.batch_ledger import AsyncRedisBatchLedger
from conduit_workers.gateway import errors
from conduit_workers.gateway.auth import KeyChecker
from conduit_workers.gateway.deps import Key, State, state
from conduit_workers.gateway.errors import ApiError
from conduit_workers.gateway.idempotency import HEADER as IDEMPOTENCY_HEADER
from conduit_workers.gateway.idempotency import (
    MAX_KEY_CHARS,
    REPLAYED,
    RETRY_HEADER,
    Idempotency,
    Replay,
    SdkRetries,
)
from conduit_workers.gateway.producer import FEEDBACK, TaskSender
from conduit_workers.gateway.responses import (
    chat_completion,
    json_response,
    model_list,
    model_object,
)
from conduit_workers.gateway.schemas import ROUTED, ChatCompletionRequest, FeedbackRequest
from conduit_workers.gateway.service import Gateway
from conduit_workers.history.history_gateway import ApiKey, GatewayHistory
from conduit_workers.infra import gc_tuning
from conduit_workers.settings import Settings, get_settings

log = logging.getLogger(__name__)


def _build(settings: Settings) -> State:
    from conduit_workers.domain.catalog import load_catalog
    from conduit_workers.domain.health import ModelHealth
    from conduit_workers.execution.llm import LLMClient
    from conduit_workers.gateway.decider import Decider
    from conduit_workers.gateway.recorder import HistoryRecorder
    from conduit_workers.gateway.routing_state import (
        RecentPosteriors,
        WriteBehindFloors,
        decision_needs_no_redis,
    )
    from conduit_workers.learning.posterior_store import RedisPosteriorStore
    from conduit_workers.routing.embedder import make_embedder
    from conduit_workers.routing.engine import RoutingEngine
    from conduit_workers.routing.floor_store import RedisFloorStore
    from conduit_workers.routing.quality_floor import stream_key
    from conduit_workers.settings import environ

    s = settings
    catalog = load_catalog(s.catalog.path, environ())
    db = s.database
    history = GatewayHistory(db.url, retry_for_s=db.retry_for_s, pool_size=db.pool_size)
    history.create_schema(auto_migrate=db.auto_migrate)
    r = s.redis
    store = RedisPosteriorStore.from_url(r.url, r.key_prefix, r.applied_ttl_s, r.socket_timeout_s)
    rs = s.router
    # The quality floors' counters on the posteriors' Redis, as the router workers keep them:
    # one floor for the deployment, whoever routes. Read at most every routing_refresh_s, and
    # the decision counts written by the history writer's thread (gateway/routing_state.py).
    refresh_s = s.gateway.routing_refresh_s
    floors = WriteBehindFloors(
        RedisFloorStore(store.client, r.key_prefix, r.applied_ttl_s), refresh_s
    )
    embedder = make_embedder(rs.embedder, rs.static_model_dir)
    posteriors = RecentPosteriors(store, refresh_s)
    engine = RoutingEngine(catalog, posteriors, embedder, rs, floor_store=floors)
    fresh = decision_needs_no_redis(
        posteriors,
        floors,
        engine.floors,
        stream_key(None, rs.quality_floor) if rs.quality_floor else None,
    )
    ex = s.executor
    llm = LLMClient(
        catalog,
        environ(),
        ex.timeout_s,
        ex.max_output_tokens,
        http_client=ex.http_client,
        max_connections=ex.max_connections,
    )
    health = ModelHealth(
        ex.health_window, ex.cooldown_min_calls, ex.cooldown_failure_rate, ex.cooldown_s
    )
    # Reserve and settle on an asyncio client: no worker thread per request.
    ledger = AsyncRedisBatchLedger.from_url(
        r.url,
        r.key_prefix,
        s.budget.ledger_ttl_s,
        s.budget.charge_expired_holds,
        r.socket_timeout_s,
    )
    tasks = TaskSender(s)
    chunk = s.feedback.chunk_size

    def send_events(ids: list[str]) -> None:
        tasks.send(FEEDBACK, ids, chunk)

    reasks = None
    if s.retry.enabled:  # a user asking again: the earlier answer did not satisfy
        from conduit_workers.learning.reask import ReAskDetector
        from conduit_workers.learning.recent_prompts import RedisRecentPrompts

        recent = RedisRecentPrompts(
            store.client, r.key_prefix, s.retry.window_s, s.retry.window_prompts
        )
        reasks = ReAskDetector(recent, history, s.retry.threshold, send_events)
    recorder = HistoryRecorder(
        history,
        send_events,
        batch=s.gateway.write_batch,
        interval_s=s.gateway.write_interval_s,
        events_batch=chunk,
        reasks=reasks,
        before_write=floors.flush,
    )
    gateway = Gateway(s, catalog, Decider(engine, fresh=fresh), llm, health, ledger, recorder)
    keys = KeyChecker(history, s.gateway.require_key, s.gateway.key_cache_s)
    idempotency = Idempotency(ledger.client, r.key_prefix, s.gateway.idempotency_ttl_s)
    window = s.gateway.sdk_retry_window_s
    sdk = SdkRetries(ledger.client, r.key_prefix, window) if window > 0 else None
    return State(gateway, keys, history, tasks, idempotency, sdk)


async def _idempotent_chat(
    body: ChatCompletionRequest, request: Request, key: ApiKey, idempotency_key: str
) -> Response:
    """A call sent with an ``Idempotency-Key``: answered once, its retries replayed
    (``gateway/idempotency.py``)."""
    if body.stream:
        raise ApiError(
            422,
            "the Idempotency-Key header is not supported with stream: true",
            param="Idempotency-Key",
        )
    st = state(request)
    slot = Idempotency.slot(key.name, idempotency_key)
    digest = hashlib.sha256(body.model_dump_json().encode()).hexdigest()
    replay = await st.idempotency.claim(slot, digest, st.gateway.call_ttl_s())
    if replay is not None:
        return _replayed(replay)
    try:
        answer = await st.gateway.chat(body, key)
    except Exception:
        await st.idempotency.release(slot)  # nothing was answered: a retry calls again
        raise
    response = chat_completion(answer)
    await st.idempotency.done(slot, digest, answer.query_id, bytes(response.body))
    return response


# Read by _chat from the raw headers (not a FastAPI parameter, which would cost every call a
# dependency); declared here so that the OpenAPI document shows it.
_IDEMPOTENCY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS},
    "description": "A retry of a call with the same key and body gets the first answer again, "
    "with no second model call (not with stream: true).",
}


def _replayed(replay: Replay) -> Response:
    return Response(
        replay.body,
        media_type="application/json",
        headers={"x-conduit-query-id": replay.query_id, REPLAYED: "true"},
    )


async def _sdk_chat(
    body: ChatCompletionRequest, st: State, key: ApiKey, raw: bytes, attempt: str
) -> Response:
    """A call from an SDK that numbers its attempts: its retries get its answer, waiting for
    it while it runs, rather than a second call (``SdkRetries`` in gateway/idempotency.py)."""
    sdk = st.sdk_retries
    assert sdk is not None
    slot = SdkRetries.slot(key.name, raw)
    replay = await sdk.previous(slot, attempt, st.gateway.call_ttl_s())
    if replay is not None:
        return _replayed(replay)
    with sdk.keeping(slot) as keep:
        answer = await st.gateway.chat(body, key)
        response = chat_completion(answer)
        keep(answer.query_id, bytes(response.body))
    return response


async def _chat(
    body: ChatCompletionRequest, request: Request, key: ApiKey, raw: bytes | None = None
) -> Response:
    idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
    if idempotency_key is not None:
        return await _idempotent_chat(body, request, key, idempotency_key)
    st = state(request)
    gw = st.gateway
    if body.stream:
        from conduit_workers.gateway.streaming import stream_response

        return await stream_response(gw, await gw.prepare(body, key))
    attempt = request.headers.get(RETRY_HEADER)
    if attempt is not None and raw is not None and st.sdk_retries is not None:
        return await _sdk_chat(body, st, key, raw, attempt)
    answer = await gw.chat(body, key)
    return chat_completion(answer)


async def _body(receive: Receive) -> bytes:
    """The request's body, read straight off the ASGI channel (Starlette's ``Request.body``
    goes through an async generator per request)."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _fast_chat(request: Request) -> Response:
    """``POST /v1/chat/completions`` (see ``chat_completions`` in :func:`create_app`)."""
    key = await state(request).keys.check(request.headers.get("authorization"))
    raw = await _body(request.receive)
    try:
        body = ChatCompletionRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from None
    return await _chat(body, request, key, raw)


_HOT_PATH = "/v1/chat/completions"


class ConduitApp(FastAPI):
    """The application, with its hot route short-circuited.

    ``POST /v1/chat/completions`` is answered here, ahead of Starlette's middleware stack and
    FastAPI's per-request machinery (dependency solving, the body parsed to Python objects then
    validated): the key is checked and the body validated from its JSON bytes directly, with
    the app's own exception handlers, so the answers and errors are the route's. The FastAPI
    route of the same path stays for the OpenAPI document (and answers should this one not
    match, e.g. under a root path)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != _HOT_PATH or scope["method"] != "POST":
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        request = Request(scope, receive)
        try:
            response = await _fast_chat(request)
        except ClientDisconnect:
            return  # gone before its body arrived: no one to answer
        except Exception as exc:
            handler = next(
                (h for c in type(exc).__mro__ if (h := self.exception_handlers.get(c))), None
            )
            if handler is None:
                raise
            handled = handler(request, exc)
            response = await handled if inspect.isawaitable(handled) else handled
        await response(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The FastAPI application (``uvicorn --factory conduit_workers.gateway.app:create_app``)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = settings or get_settings()
        st = await asyncio.to_thread(_build, s)
        app.state.conduit = st
        # Fewer garbage collections, as in the workers (infra/gc_tuning.py): a larger young
        # generation, and what the process holds once built (modules, catalog, engine)
        # frozen out of every later collection.
        gc_tuning.tune()
        gc_tuning.freeze_after_first_task()
        try:
            yield
        finally:
            gw = st.gateway
            await gw.drain()
            await asyncio.to_thread(gw.recorder.close)
            await gw.llm.aclose()
            await gw.ledger.aclose()
            if st.sdk_retries is not None:
                await st.sdk_retries.aclose()
            st.tasks.close()
            st.history.dispose()

    otel = (settings or get_settings()).gateway.opentelemetry
    app = ConduitApp(
        telemetry=None if otel else {"tracing": False, "metrics": False, "logs": False},
        title="Conduit",
        summary="OpenAI-compatible API of Conduit, the LLM router that learns from feedback.",
        version="1",
        lifespan=lifespan,
    )
    errors.install(app)
    from conduit_workers.gateway.batch_routes import router as batch_router

    app.include_router(batch_router)

    @app.post("/v1/chat/completions", openapi_extra={"parameters": [_IDEMPOTENCY_PARAMETER]})
    async def chat_completions(body: ChatCompletionRequest, request: Request, key: Key) -> Response:
        """OpenAI's chat completion. ``model``: ``conduit`` (routed) or a catalog model."""
        return await _chat(body, request, key, await request.body())  # the bytes parsed above

    @app.get("/v1/models")
    async def list_models(request: Request, key: Key) -> Response:
        """The catalog models this key may use, and ``conduit``."""
        return model_list([ROUTED, *state(request).gateway.visible_models(key)])

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str, request: Request, key: Key) -> Response:
        if model != ROUTED and model not in state(request).gateway.visible_models(key):
            raise ApiError(404, f"The model {model!r} does not exist; see GET /v1/models.",
                           code="model_not_found", param="model")  # fmt: skip
        return json_response(model_object(model))

    @app.post("/v1/feedback")
    async def feedback(body: FeedbackRequest, request: Request, key: Key) -> Response:
        """Rate an answer in [0, 1], once per answer; by query id (the ``x-conduit-query-id``
        header of the call) or by a batch line's ``custom_id``."""
        st = state(request)
        ref = body.query_id or body.custom_id or ""
        if body.batch_id is not None:
            owned = await asyncio.to_thread(st.history.api_batch, body.batch_id, key.name)
            by_custom = await asyncio.to_thread(st.history.query_ids_by_external, body.batch_id)
            if owned is None or ref not in by_custom:
                raise ApiError(
                    404,
                    f"no custom_id {ref[:80]!r} in batch {body.batch_id[:80]!r} of this API key",
                    code="not_found",
                    param="custom_id",
                )
            ref = by_custom[ref]
        answered = await asyncio.to_thread(st.history.answered_by, [ref])
        if ref not in answered:
            # Answered by this process a moment ago: its rows may still be on their way.
            await asyncio.to_thread(st.gateway.recorder.flush, 5.0)
            answered = await asyncio.to_thread(st.history.answered_by, [ref])
        if ref not in answered:
            what = "query id" if body.query_id else "custom_id"
            raise ApiError(
                404,
                f"no answered prompt with {what} {ref[:80]!r} (a failed call cannot be rated)",
                code="not_found",
                param="query_id" if body.query_id else "custom_id",
            )
        qid, model = answered[ref]
        event = FeedbackEvent(explicit_event_id(qid), qid, model, EXPLICIT, body.rating, 1.0)
        fresh = await asyncio.to_thread(st.history.add_feedback, [event])
        if fresh:
            await asyncio.to_thread(st.gateway.recorder.send_events, fresh)
        return json_response(
            {
                "object": "feedback",
                "query_id": qid,
                "model": model,
                "rating": body.rating,
                "status": "accepted" if fresh else "duplicate",
            }
        )

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return PlainTextResponse("ok")

    return app
