"""LLM calls through pydantic-ai, one client per catalog model, built once per process.

The provider SDKs' own retries are switched off (``max_retries=0``): retries, backoff and
fallback are decided by the executor, which sees every attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from pydantic_ai import exceptions as pai_exc
from pydantic_ai.direct import model_request
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    UserPromptPart,
)
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.settings import ModelSettings

from conduit_workers.domain.catalog import Catalog, ModelSpec
from conduit_workers.domain.chat import ChatRequest
from conduit_workers.domain.records import Completion
from conduit_workers.errors import (
    ConfigError,
    PermanentProviderError,
    ProviderError,
    RetryableProviderError,
)
from conduit_workers.execution.openai_http import OpenAIHttpModel, SharedSession

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = {408, 409, 425, 429}
# What a permanent status means and how to fix it; stored on the prompt's result.
_PERMANENT_HINT = {
    400: "the provider rejected the request as invalid (not retried)",
    401: "authentication failed: check the API key named by the model's api_key_env (not retried)",
    403: "access denied by the provider: check the key's permissions (not retried)",
    404: "model not found at the provider: check the catalog's model_id and base_url (not retried)",
}


HTTP_CLIENTS = ("http1", "direct", "aiohttp", "httpx2")
# The request parameters of every call (no tools, no output schema): one object;
# pydantic-ai's ``model_request`` makes an equal one per call when given none.
NO_PARAMETERS = ModelRequestParameters()


def shared_http_client(kind: str, max_connections: int, timeout_s: float) -> Any:
    """The HTTP client that every OpenAI(-compatible) model of a process shares: Conduit's own
    HTTP/1.1 connections (:class:`~conduit_workers.execution.http1.Http1Connections`) for
    ``http1``, an aiohttp :class:`SharedSession` for ``direct``, the SDK's aiohttp transport
    for ``aiohttp``, None for the SDK's default (one httpx2 client per model).

    ``http1`` and ``direct`` (:class:`OpenAIHttpModel`, no SDK) cost ~0.1 and ~0.3 ms of CPU
    per call; the SDK ~1.3-3 ms over aiohttp and ~5 ms over httpx2, whose connection pool
    scans every connection on each request (``has_expired``) under 32-64 concurrent calls
    (bench/README.md).
    """
    if kind not in HTTP_CLIENTS:
        raise ConfigError(
            f"unknown HTTP client {kind!r} (CONDUIT_EXECUTOR__HTTP_CLIENT): "
            f"use one of {', '.join(HTTP_CLIENTS)}"
        )
    if kind == "httpx2":
        return None
    if kind == "http1":
        from conduit_workers.execution.http1 import Http1Connections

        return Http1Connections(max_connections)
    if kind == "direct":
        return SharedSession(max_connections)
    import httpx2
    from openai import DefaultAioHttpClient

    return DefaultAioHttpClient(
        timeout=timeout_s,
        limits=httpx2.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        ),
    )


def build_model(
    spec: ModelSpec, env: Mapping[str, str], timeout_s: float, http_client: Any = None
) -> Model:
    """A pydantic-ai model for a catalog entry; the API key is read from ``spec.api_key_env``.

    OpenAI(-compatible) models get :class:`OpenAIHttpModel` when ``http_client`` is
    :class:`~conduit_workers.execution.http1.Http1Connections` (``http1``) or a
    :class:`SharedSession` (``direct``), else pydantic-ai's SDK-backed ``OpenAIChatModel``.
    """
    key = env.get(spec.api_key_env) if spec.api_key_env else None
    if spec.provider in ("openai", "openai-compatible"):
        from conduit_workers.execution.http1 import Http1Connections

        if spec.provider == "openai" and not key:
            raise ConfigError(f"model {spec.name}: set {spec.api_key_env} to its OpenAI API key")
        if isinstance(http_client, (SharedSession, Http1Connections)):
            return OpenAIHttpModel(
                spec.provider_model,
                session=http_client,
                base_url=spec.base_url,
                api_key=key or "not-needed",
                timeout_s=timeout_s,
                max_tokens_field=(
                    "max_completion_tokens" if spec.provider == "openai" else "max_tokens"
                ),
            )
        from openai import AsyncOpenAI
        from pydantic_ai.models.openai import OpenAIChatModel
        from pydantic_ai.providers.openai import OpenAIProvider

        client = AsyncOpenAI(
            base_url=spec.base_url,
            api_key=key or "not-needed",
            max_retries=0,
            timeout=timeout_s,
            http_client=http_client,
        )
        return OpenAIChatModel(spec.provider_model, provider=OpenAIProvider(openai_client=client))
    if not key:
        raise ConfigError(
            f"model {spec.name}: set {spec.api_key_env} to its {spec.provider} API key"
        )
    if spec.provider == "anthropic":
        from anthropic import AsyncAnthropic
        from pydantic_ai.models.anthropic import AnthropicModel
        from pydantic_ai.providers.anthropic import AnthropicProvider

        aclient = AsyncAnthropic(
            api_key=key, base_url=spec.base_url, max_retries=0, timeout=timeout_s
        )
        return AnthropicModel(
            spec.provider_model, provider=AnthropicProvider(anthropic_client=aclient)
        )
    if spec.provider == "google":
        from pydantic_ai.models.google import GoogleModel
        from pydantic_ai.providers.google import GoogleProvider

        return GoogleModel(spec.provider_model, provider=GoogleProvider(api_key=key))
    if spec.provider == "groq":
        try:
            from pydantic_ai.models.groq import GroqModel
            from pydantic_ai.providers.groq import GroqProvider
        except ImportError as exc:
            raise ConfigError(
                f"model {spec.name}: the groq provider needs `pip install groq`"
            ) from exc
        return GroqModel(spec.provider_model, provider=GroqProvider(api_key=key))
    raise ConfigError(f"model {spec.name}: unknown provider {spec.provider!r}")


def classify(exc: BaseException, model_name: str) -> ProviderError:
    """Map a pydantic-ai or transport exception to a retryable or permanent provider error.

    The message is built from the error's type and status only: provider bodies may echo
    the prompt, so they are never copied into it.
    """
    retry_after = getattr(exc, "retry_after", None)
    status = getattr(exc, "status_code", None)
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, pai_exc.ModelRequestTimeout)):
        return RetryableProviderError("timeout", model_name)
    if isinstance(exc, pai_exc.ModelHTTPError) or status is not None:
        if status in _RETRYABLE_STATUS or (status is not None and status >= 500):
            return RetryableProviderError(f"HTTP {status}", model_name, status, retry_after)
        hint = _PERMANENT_HINT.get(status or 0, "permanent error (not retried)")
        return PermanentProviderError(f"HTTP {status}: {hint}", model_name, status)
    if isinstance(exc, pai_exc.ModelRateLimitError):
        return RetryableProviderError("rate limited", model_name, 429, retry_after)
    if isinstance(
        exc,
        (
            pai_exc.ModelRequestRejectedError,
            pai_exc.ModelQuotaExceededError,
            pai_exc.ContentFilterError,
        ),
    ):
        codes: dict[type[BaseException], int] = {
            pai_exc.ModelAuthenticationError: 401,
            pai_exc.ModelNotFoundError: 404,
        }
        code = codes.get(type(exc))
        hint = _PERMANENT_HINT.get(code or 0, "permanent error (not retried)")
        return PermanentProviderError(f"{type(exc).__name__}: {hint}", model_name, code)
    if isinstance(exc, pai_exc.ModelTimeoutError):
        return RetryableProviderError("timeout", model_name)
    if isinstance(exc, (pai_exc.ModelServerError, pai_exc.ModelUnavailableError)):
        return RetryableProviderError(type(exc).__name__, model_name, 503, retry_after)
    if isinstance(exc, (pai_exc.ModelAPIError, pai_exc.UnexpectedModelBehavior, OSError)):
        return RetryableProviderError(type(exc).__name__, model_name)
    return PermanentProviderError(type(exc).__name__, model_name)


class LLMClient:
    """:class:`~conduit_workers.domain.ports.LLM` over pydantic-ai: calls catalog models;
    ``complete`` raises :class:`ProviderError` subclasses only."""

    def __init__(
        self,
        catalog: Catalog,
        env: Mapping[str, str],
        timeout_s: float = 60.0,
        max_output_tokens: int | None = None,
        *,
        http_client: str = "direct",
        max_connections: int = 256,
    ) -> None:
        self.catalog = catalog
        self.env = env
        self.timeout_s = timeout_s
        self.max_output_tokens = max_output_tokens
        self.http_client_kind = http_client
        self.max_connections = max_connections
        self._http: Any = None
        self._models: dict[str, Model] = {}
        self._stream_models: dict[str, Model] = {}
        self._stream_http: SharedSession | None = None

    def model(self, name: str) -> Model:
        if name not in self._models:
            spec = self.catalog.get(name)
            http = None
            if spec.provider in ("openai", "openai-compatible"):
                if self._http is None:
                    self._http = shared_http_client(
                        self.http_client_kind, self.max_connections, self.timeout_s
                    )
                http = self._http
            self._models[name] = build_model(spec, self.env, self.timeout_s, http)
        return self._models[name]

    async def aclose(self) -> None:
        """Close the shared HTTP client (its connections) on the loop that used it."""
        http, self._http = self._http, None
        self._models.clear()
        self._stream_models.clear()
        close = getattr(http, "close", None) or getattr(http, "aclose", None)
        if close is not None:
            await close()
        stream_http, self._stream_http = self._stream_http, None
        if stream_http is not None:
            await stream_http.close()

    def settings_for(
        self, spec: ModelSpec, request: ChatRequest | None, max_output_tokens: int | None = None
    ) -> ModelSettings:
        """The call's settings: timeout, output cap (the request's, or the smaller of it and
        ``max_output_tokens`` or else the client's or the catalog's cap), and the request's
        generation settings."""
        settings = ModelSettings(timeout=self.timeout_s)
        max_tokens = max_output_tokens or self.max_output_tokens or spec.max_output_tokens
        if request is not None and request.max_tokens is not None:
            max_tokens = min(request.max_tokens, max_tokens or request.max_tokens)
        if max_tokens:
            settings["max_tokens"] = max_tokens
        if request is not None:
            settings.update(chat_settings(request, spec.provider))
        return settings

    def stream_model(self, name: str) -> Model:
        """The model for streamed calls: for OpenAI(-compatible) endpoints an
        :class:`OpenAIHttpModel` over an aiohttp session of its own (streamed by its
        ``chat_stream``; Conduit's HTTP/1.1 client reads whole responses only), else
        pydantic-ai's model for the provider."""
        if name not in self._stream_models:
            spec = self.catalog.get(name)
            http = None
            if spec.provider in ("openai", "openai-compatible"):
                if self._stream_http is None:
                    self._stream_http = SharedSession(self.max_connections)
                http = self._stream_http
            self._stream_models[name] = build_model(spec, self.env, self.timeout_s, http)
        return self._stream_models[name]

    async def complete(
        self,
        model_name: str,
        prompt: str,
        request: ChatRequest | None = None,
        max_output_tokens: int | None = None,
    ) -> Completion:
        """One call of ``model_name``: the ``prompt`` as one user message, or, when given,
        ``request``'s messages and settings (the OpenAI API's body, e.g. from ``conduit serve``).
        ``max_output_tokens`` caps the answer (e.g. a budgeted batch's), else the client's or
        the catalog's cap."""
        spec = self.catalog.get(model_name)
        settings = self.settings_for(spec, request, max_output_tokens)
        started = time.perf_counter()
        try:
            model = self.model(model_name)
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for runs the call in a task of
            # its own, one more task per call.
            if isinstance(model, OpenAIHttpModel):
                # The same body and errors as through model_request, for less CPU; one timer
                # at the call's timeout, where the transport's own and this one's second later
                # were two (~5 µs each a call on uvloop): the same deadline, the same error.
                async with asyncio.timeout(self.timeout_s):
                    messages_ = openai_messages(request, prompt)
                    text, n_in, n_out = await model.chat(messages_, settings, bounded=True)
            else:
                async with asyncio.timeout(self.timeout_s + 1.0):
                    messages: list[ModelMessage] = (
                        chat_messages(request)
                        if request is not None
                        else [ModelRequest.user_text_prompt(prompt)]
                    )
                    response = await model_request(
                        model,
                        messages,
                        model_settings=settings,
                        model_request_parameters=NO_PARAMETERS,
                    )
                    usage = response.usage
                    text = response.text or ""
                    n_in, n_out = int(usage.input_tokens or 0), int(usage.output_tokens or 0)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a classified error
            err = classify(exc, model_name)
            log.debug("call to %s failed: %r", model_name, exc)
            raise err from None
        latency_ms = (time.perf_counter() - started) * 1000
        if not text.strip():
            raise RetryableProviderError("empty response", model_name)
        return Completion(text, n_in, n_out, latency_ms)


_ROLES = {"user": "user", "assistant": "assistant"}  # system and developer: "system"


def openai_messages(request: ChatRequest | None, prompt: str) -> list[dict[str, str]]:
    """OpenAI's messages of a call, as :class:`OpenAIHttpModel` sends pydantic-ai's
    :func:`chat_messages` of it (system and developer turns as ``system``), or the prompt as
    one user message."""
    if request is None:
        return [{"role": "user", "content": prompt}]
    return [{"role": _ROLES.get(m.role, "system"), "content": m.content} for m in request.messages]


def chat_messages(request: ChatRequest) -> list[ModelMessage]:
    """pydantic-ai messages of an OpenAI conversation: system (and developer) and user turns go
    into requests, assistant turns into responses, in their order."""
    out: list[ModelMessage] = []
    parts: list[SystemPromptPart | UserPromptPart] = []
    for m in request.messages:
        if m.role == "assistant":
            if parts:
                out.append(ModelRequest(parts=parts))
                parts = []
            out.append(ModelResponse(parts=[TextPart(m.content)]))
        elif m.role == "user":
            parts.append(UserPromptPart(m.content))
        else:
            parts.append(SystemPromptPart(m.content))
    if parts:
        out.append(ModelRequest(parts=parts))
    return out


def chat_settings(request: ChatRequest, provider: str) -> ModelSettings:
    """The request's generation settings as pydantic-ai's; ``response_format`` and ``user`` go
    in the body of OpenAI(-compatible) providers, which define them."""
    s = ModelSettings()
    if request.temperature is not None:
        s["temperature"] = request.temperature
    if request.top_p is not None:
        s["top_p"] = request.top_p
    if request.stop:
        s["stop_sequences"] = list(request.stop)
    extra: dict[str, Any] = {}
    if provider in ("openai", "openai-compatible"):
        if request.response_format is not None:
            extra["response_format"] = dict(request.response_format)
        if request.user is not None:
            extra["user"] = request.user
    if extra:
        s["extra_body"] = extra
    return s
