"""The replay server: an OpenAI-compatible HTTP API over recorded LLM answers.

Endpoints (``/v1/*`` require ``Authorization: Bearer <api_key>`` when a key is configured)::

    GET  /v1/models                 data models + profile keys + extra models, OpenAI list format
    GET  /v1/models/{model}         one model object, or 404
    POST /v1/chat/completions       a chat.completion answer, or chunks as server-sent events with
                                    stream=true; JSON when response_format asks for it
    GET  /_replay/stats             calls, per-model calls, faults, statuses, duplicates
    POST /_replay/stats/reset       zero the stats
    GET  /_replay/profiles          the profiles in the profile-file shape
    PUT  /_replay/profiles          replace the profiles (same shape as the profile file)
    GET  /healthz                   "ok"

What a chat call answers, for the last user message of the request ("the prompt"):

- a prompt recorded for the model: the recorded response and token counts; where the record has
  no response (routellm_mmlu), a letter A-D for one output token, otherwise generated prose of the
  recorded length;
- any other prompt: generated prose of 20-200 words seeded by the model and prompt, with usage of
  about one token per four characters.

``max_tokens`` / ``max_completion_tokens`` cap the answer (``finish_reason`` "length"). One fault
draw per call, from a ``random.Random(seed)``, picks 429 (with ``Retry-After``), 500, hang
(sleep ``hang_s``, then answer), empty answer or 400, at the model's profile rates.

``duplicates`` in the stats counts calls for a (model, prompt) that another call answered
successfully (200, non-empty) before this call finished: the number of LLM calls a pipeline made
beyond one per prompt and model. Calls whose client went away first count as ``abandoned``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from .data import (
    ReplayIndex,
    answer_letter,
    load_index,
    prompt_digest,
    synthetic_text,
    words_for_tokens,
)
from .json_answer import json_answer, parse_response_format
from .profile import (
    DEFAULT_PROFILE_KEY,
    FAULT_KINDS,
    ModelProfile,
    ReplayConfig,
    parse_profiles,
    profiles_to_json,
)
from .requests import BadRequest, parse_chat
from .stream import stream_completion, wants_usage

__all__ = ["build_app", "run", "serve"]

_log = logging.getLogger(__name__)

_OWNER = "conduit-replay"
# Long chat histories exceed aiohttp's 1 MiB default body limit.
_MAX_BODY_BYTES = 16 * 1024 * 1024
_SHUTDOWN_GRACE_S = 1.0


class _Stats:
    """Counters behind ``GET /_replay/stats``; reset in place so in-flight calls keep counting."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls = 0
        self.by_model: Counter[str] = Counter()
        self.faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self.statuses: Counter[int] = Counter()
        self.duplicates = 0
        self.abandoned = 0
        self.answered: set[tuple[str, bytes]] = set()

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "by_model": dict(self.by_model),
            "faults": dict(self.faults),
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "duplicates": self.duplicates,
            "abandoned": self.abandoned,
            "answered_unique": len(self.answered),
        }


class _ReplayState:
    """Per-application state: the index, live profiles, random generators and stats."""

    def __init__(self, config: ReplayConfig, index: ReplayIndex) -> None:
        self.index = index
        self.api_key = config.api_key
        self.auth_header = f"Bearer {config.api_key}" if config.api_key is not None else None
        # Separate generators, so that the fault sequence does not depend on jitter settings.
        self.fault_rng = random.Random(config.seed)
        self.jitter_rng = random.Random(f"{config.seed}:jitter")
        self.stats = _Stats()
        self.ids = itertools.count(1)
        self.models: set[str] = set(index.models) | set(config.extra_models)
        self.profiles: dict[str, ModelProfile] = {}
        self.default_profile = ModelProfile()
        self.models_body = b""
        self.set_profiles(config.profiles)

    def set_profiles(self, profiles: Mapping[str, ModelProfile]) -> None:
        """Install new profiles; a model once served stays served after its profile goes."""
        self.profiles = dict(profiles)
        self.default_profile = self.profiles.get(DEFAULT_PROFILE_KEY, ModelProfile())
        self.models.update(k for k in self.profiles if k != DEFAULT_PROFILE_KEY)
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": _OWNER}
            for m in sorted(self.models)
        ]
        self.models_body = json.dumps({"object": "list", "data": data}).encode()

    def profile_for(self, model: str) -> ModelProfile:
        return self.profiles.get(model, self.default_profile)


_STATE = web.AppKey("conduit_replay_state", _ReplayState)


# --- Responses -----------------------------------------------------------------------------------


def _error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An error in OpenAI's JSON shape, which the openai client turns into its typed errors."""
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.json_response(body, status=status, headers=headers)


def _check_auth(state: _ReplayState, request: web.Request) -> web.Response | None:
    if state.auth_header is None or request.headers.get("Authorization") == state.auth_header:
        return None
    if "Authorization" not in request.headers:
        message = "You didn't provide an API key: send it as 'Authorization: Bearer <key>'."
    else:
        message = "Incorrect API key provided to the replay server."
    return _error(401, message, code="invalid_api_key")


def _model_object(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": _OWNER}


# --- Handlers ------------------------------------------------------------------------------------


def _draw_fault(u: float, profile: ModelProfile) -> str | None:
    edge = 0.0
    for kind, rate in zip(FAULT_KINDS, profile.fault_rates(), strict=True):
        edge += rate
        if u < edge:
            return kind
    return None


def _delay_s(state: _ReplayState, profile: ModelProfile, output_tokens: int) -> float:
    jitter = (
        state.jitter_rng.uniform(-profile.jitter_ms, profile.jitter_ms)
        if profile.jitter_ms
        else 0.0
    )
    return (
        max(0.0, profile.latency_ms + jitter + profile.per_output_token_ms * output_tokens) / 1000
    )


def _answer(
    state: _ReplayState, model: str, prompt: str, n_chars: int
) -> tuple[bytes, str, int, int, str]:
    """Return (prompt digest, content, prompt tokens, completion tokens, match kind)."""
    digest, recorded = state.index.lookup(prompt, model)
    if recorded is not None:
        if recorded.response is not None:
            content = recorded.response
        elif recorded.output_tokens <= 1:
            content = answer_letter(digest)
        else:
            content = synthetic_text(digest, words_for_tokens(recorded.output_tokens))
        return digest, content, recorded.input_tokens, recorded.output_tokens, "recorded"
    seed = prompt_digest(f"{model}\x00{prompt}")
    content = synthetic_text(seed, 20 + seed[8] * 181 // 256)
    return (
        digest,
        content,
        max(1, round(n_chars / 4)),
        max(1, math.ceil(len(content) / 4)),
        "generated",
    )


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    denied = _check_auth(state, request)
    if denied is not None:
        state.stats.statuses[401] += 1
        return denied
    try:
        body = json.loads(await request.read())
        model, prompt, n_chars, cap = parse_chat(body)
        fmt = parse_response_format(body)
    except (ValueError, UnicodeDecodeError):
        state.stats.statuses[400] += 1
        return _error(400, "the request body is not valid JSON")
    except BadRequest as exc:
        state.stats.statuses[400] += 1
        return _error(400, exc.message, param=exc.param)
    if model not in state.models:
        state.stats.statuses[404] += 1
        return _error(
            404,
            f"The model `{model}` does not exist on this replay server; see GET /v1/models.",
            code="model_not_found",
            param="model",
        )

    started = time.monotonic()
    stats = state.stats
    stats.calls += 1
    stats.by_model[model] += 1
    profile = state.profile_for(model)
    fault = _draw_fault(state.fault_rng.random(), profile)
    digest, content, prompt_tokens, completion_tokens, match = _answer(
        state, model, prompt, n_chars
    )
    key = (model, digest)
    duplicate = key in stats.answered
    success = False
    try:
        if fault is not None:
            stats.faults[fault] += 1
        if fault == "429":
            retry_after = profile.retry_after_s
            response: web.StreamResponse = _error(
                429,
                f"Rate limit reached for {model} (injected by the replay server). "
                f"Please try again in {retry_after:g}s.",
                type_="requests",
                code="rate_limit_exceeded",
                # Retry-After is whole seconds (RFC 9110); the openai client also reads the ms form.
                headers={
                    "Retry-After": str(math.ceil(retry_after)),
                    "retry-after-ms": str(round(retry_after * 1000)),
                },
            )
        elif fault == "400":
            response = _error(400, "Invalid request (fault injected by the replay server).")
        elif fault == "500":
            delay = _delay_s(state, profile, 0)
            if delay:
                await asyncio.sleep(delay)
            response = _error(
                500,
                "The server had an error while processing your request "
                "(injected by the replay server).",
                type_="server_error",
            )
        else:
            if fault == "hang":
                await asyncio.sleep(profile.hang_s)
            finish = "stop"
            if fault == "empty":
                content, completion_tokens = "", 0
            elif cap is not None and completion_tokens > cap:
                content = content[: max(1, len(content) * cap // completion_tokens)]
                completion_tokens, finish = cap, "length"
            if fmt is not None and content:
                content = json_answer(fmt, content)
            delay = _delay_s(state, profile, completion_tokens)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            if body.get("stream"):
                response = await stream_completion(
                    request,
                    completion_id=f"chatcmpl-replay-{next(state.ids)}",
                    model=model,
                    content=content,
                    finish=finish,
                    usage=usage,
                    include_usage=wants_usage(body),
                    delay_s=delay,
                    headers={"x-replay-match": match},
                )
            else:
                if delay:
                    await asyncio.sleep(delay)
                response = web.json_response(
                    {
                        "id": f"chatcmpl-replay-{next(state.ids)}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": model,
                        "system_fingerprint": _OWNER,
                        "choices": [
                            {
                                "index": 0,
                                "message": {
                                    "role": "assistant",
                                    "content": content,
                                    "refusal": None,
                                },
                                "logprobs": None,
                                "finish_reason": finish,
                            }
                        ],
                        "usage": usage,
                    },
                    headers={"x-replay-match": match},
                )
            success = fault != "empty"
    except asyncio.CancelledError:
        # The client went away (e.g. its timeout fired during a hang): no answer was delivered.
        stats.abandoned += 1
        raise
    duplicate = duplicate or key in stats.answered
    if success:
        stats.answered.add(key)
    if duplicate:
        stats.duplicates += 1
    stats.statuses[response.status] += 1
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug(
            "chat model=%s prompt_sha256=%s match=%s fault=%s status=%d duplicate=%s "
            "latency_ms=%.1f",
            model,
            digest.hex()[:16],
            match,
            fault,
            response.status,
            duplicate,
            (time.monotonic() - started) * 1000,
        )
    return response


async def _list_models(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    return _check_auth(state, request) or web.Response(
        body=state.models_body, content_type="application/json"
    )


async def _get_model(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    denied = _check_auth(state, request)
    if denied is not None:
        return denied
    model = request.match_info["model"]
    if model not in state.models:
        return _error(404, f"The model `{model}` does not exist.", code="model_not_found")
    return web.json_response(_model_object(model))


async def _get_stats(request: web.Request) -> web.StreamResponse:
    return web.json_response(request.app[_STATE].stats.to_json())


async def _reset_stats(request: web.Request) -> web.StreamResponse:
    stats = request.app[_STATE].stats
    stats.reset()
    return web.json_response(stats.to_json())


async def _get_profiles(request: web.Request) -> web.StreamResponse:
    return web.json_response(profiles_to_json(request.app[_STATE].profiles))


async def _put_profiles(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    try:
        raw = json.loads(await request.read())
        profiles = parse_profiles(raw, source="PUT /_replay/profiles body")
    except (ValueError, UnicodeDecodeError) as exc:
        return _error(400, str(exc))
    state.set_profiles(profiles)
    _log.info("replay profiles replaced: %s", ", ".join(sorted(profiles)))
    return web.json_response(profiles_to_json(state.profiles))


async def _healthz(request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


def build_app(config: ReplayConfig, index: ReplayIndex | None = None) -> web.Application:
    """Build the replay application; loads ``config.data_paths`` unless ``index`` is given."""
    if index is None:
        index = load_index(config.data_paths)
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    app[_STATE] = _ReplayState(config, index)
    app.router.add_get("/v1/models", _list_models)
    app.router.add_get("/v1/models/{model:.+}", _get_model)
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_get("/_replay/stats", _get_stats)
    app.router.add_post("/_replay/stats/reset", _reset_stats)
    app.router.add_get("/_replay/profiles", _get_profiles)
    app.router.add_put("/_replay/profiles", _put_profiles)
    app.router.add_get("/healthz", _healthz)
    return app


def served_models(app: web.Application) -> list[str]:
    """The model names an application built by :func:`build_app` serves, sorted."""
    return sorted(app[_STATE].models)


async def serve(
    config: ReplayConfig,
    host: str = "127.0.0.1",
    port: int = 8700,
    *,
    index: ReplayIndex | None = None,
    on_ready: Callable[[str, int, list[str]], None] | None = None,
    stop: Awaitable[object] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or until ``stop`` completes), then shut down cleanly.

    ``on_ready(host, port, models)`` runs once the socket listens, with the bound port
    (``port=0`` picks a free one) and the served model names, sorted.
    """
    app = build_app(config, index)
    # handler_cancellation: a hung call is cancelled when its client gives up, as at a provider.
    # shutdown_timeout: calls still running (a hang lasts 30 s) get 1 s, so that SIGTERM is prompt.
    # No access log: one INFO line per call would cost more than the call.
    runner = web.AppRunner(
        app, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_GRACE_S, access_log=None
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        _log.info(
            "replay server listening on %s:%d (%d prompts, %d models)",
            bound_host,
            bound_port,
            app[_STATE].index.n_prompts,
            len(app[_STATE].models),
        )
        if on_ready is not None:
            on_ready(host, bound_port, served_models(app))
        if stop is None:
            stopped = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stopped.set)
            try:
                await stopped.wait()
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)
        else:
            await stop
    finally:
        await runner.cleanup()


def run(
    config: ReplayConfig,
    host: str = "127.0.0.1",
    port: int = 8700,
    *,
    index: ReplayIndex | None = None,
    on_ready: Callable[[str, int, list[str]], None] | None = None,
) -> None:
    """Run the replay server in the current thread until SIGINT or SIGTERM."""
    asyncio.run(serve(config, host, port, index=index, on_ready=on_ready))
