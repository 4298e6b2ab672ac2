"""A pydantic-ai model for OpenAI(-compatible) chat completions, posted over Conduit's own
HTTP/1.1 connections (:mod:`conduit_workers.execution.http1`, ``executor.http_client`` ``http1``)
or an aiohttp session (``direct``).

``OpenAIHttpModel`` is a real :class:`pydantic_ai.models.Model`
(``pydantic_ai.direct.model_request`` calls it like every other provider's;
:class:`~conduit_workers.execution.llm.LLMClient` calls its :meth:`~OpenAIHttpModel.chat` with
OpenAI's messages directly: the same body for less CPU), for the one shape the executor sends:
text messages in, one text answer out, no tools, no streaming. It skips the OpenAI SDK, whose
request-parameter transformation and httpx-style request and response objects cost 1-3 ms of
CPU per call under concurrency, more than the rest of an executor's work
(bench/README.md, "Pipeline throughput"). Anything it cannot send (tools, images, native
structured output) is refused with a :class:`~pydantic_ai.exceptions.UserError` naming the way
out: the SDK-backed model (``CONDUIT_EXECUTOR__HTTP_CLIENT=aiohttp``).

Errors are pydantic-ai's, as its OpenAI model raises them: an HTTP status ≥ 400 is a
:class:`~pydantic_ai.exceptions.ModelHTTPError` of the status's category (with the response
headers, so ``retry_after`` comes from ``Retry-After``), a transport failure a
:class:`~pydantic_ai.exceptions.ModelConnectionError` (``ModelTimeoutError`` for a timeout), a
200 without an answer an :class:`~pydantic_ai.exceptions.UnexpectedModelBehavior`.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import aiohttp
from pydantic_ai import exceptions as pai_exc
from pydantic_ai.messages import (
    InstructionPart,
    ModelMessage,
    ModelRequest,
    ModelResponse,
    SystemPromptPart,
    TextPart,
    UserPromptPart,
)
from pydantic_ai.models import Model, ModelRequestParameters
from pydantic_ai.settings import ModelSettings
from pydantic_ai.usage import RequestUsage
from pydantic_core import from_json, to_json

OPENAI_BASE_URL = "https://api.openai.com/v1"
_SDK_HINT = "use the SDK-backed model instead (CONDUIT_EXECUTOR__HTTP_CLIENT=aiohttp)"
# ModelSettings keys sent as the chat-completions field of the same name (``stop_sequences``
# is renamed); others (timeout) are applied here, the rest are not supported by this model.
_BODY_SETTINGS = (
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
)
_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter"}


def http_error(status: int, model_name: str, body: object, headers: Mapping[str, str]) -> Exception:
    """The pydantic-ai error for an HTTP error status, in the category pydantic-ai's OpenAI
    model would give it (``except ModelHTTPError`` and ``except ModelRateLimitError`` both
    catch a 429)."""
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    etype = err.get("type") if isinstance(err, dict) else None
    code = code if isinstance(code, str) else None
    category: Any
    if status == 429 and code != "insufficient_quota":
        category = pai_exc.ModelRateLimitError
    elif status == 402 or code == "insufficient_quota":
        category = pai_exc.ModelQuotaExceededError
    elif status in (401, 403):
        category = pai_exc.ModelAuthenticationError
    elif status == 404 or code == "model_not_found":
        category = pai_exc.ModelNotFoundError
    elif code == "context_length_exceeded":
        category = pai_exc.ModelContextWindowExceededError
    elif status in (400, 413, 422):
        category = pai_exc.ModelRequestRejectedError
    elif status == 529:
        category = pai_exc.ModelOverloadedError
    elif status == 503:
        category = pai_exc.ModelUnavailableError
    elif status >= 500:
        category = pai_exc.ModelServerError
    else:
        category = None
    return pai_exc.ModelHTTPError.for_category(
        category,
        status_code=status,
        model_name=model_name,
        body=body,
        headers=dict(headers),
        provider_error_code=code,
        provider_error_type=etype if isinstance(etype, str) else None,
    )


class Transport(Protocol):
    """How a model posts its JSON bodies: :class:`SharedSession` (aiohttp) or
    :class:`~conduit_workers.execution.http1.Http1Connections` (Conduit's own HTTP/1.1)."""

    def target(self, url: str, headers: Mapping[str, str]) -> Target: ...

    async def close(self) -> None: ...


class Target(Protocol):
    async def post(self, body: bytes, timeout_s: float) -> tuple[int, Mapping[str, str], bytes]:
        """(status, headers, body) of one POST; TimeoutError, or aiohttp's ClientError or an
        OSError for a call the server did not answer. ``timeout_s`` ``math.inf``: no timer
        (the caller bounds the call)."""
        ...


class _AiohttpTarget:
    def __init__(self, session: SharedSession, url: str, headers: Mapping[str, str]) -> None:
        self._session = session
        self._url = url
        self._headers = dict(headers)

    async def post(self, body: bytes, timeout_s: float) -> tuple[int, Mapping[str, str], bytes]:
        # Bytes (pydantic-core's encoder, UTF-8): a str body costs aiohttp a StringPayload
        # with its content-type parsing on every call.
        async with self._session.get().post(
            self._url,
            data=body,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=None if math.isinf(timeout_s) else timeout_s),
        ) as resp:
            raw = await resp.read()
            return resp.status, resp.headers, raw


class SharedSession:
    """One aiohttp session (keep-alive connection pool) for every model of a process; made on
    first use, inside the event loop that then owns it."""

    def __init__(self, max_connections: int = 256) -> None:
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def get(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.max_connections, limit_per_host=self.max_connections
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                json_serialize=json.dumps,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    def target(self, url: str, headers: Mapping[str, str]) -> Target:
        return _AiohttpTarget(self, url, headers)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _messages(
    messages: list[ModelMessage], instructions: str | None, model_name: str
) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    if instructions:
        out.append({"role": "system", "content": instructions})
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, SystemPromptPart):
                    out.append({"role": "system", "content": part.content})
                elif isinstance(part, UserPromptPart) and isinstance(part.content, str):
                    out.append({"role": "user", "content": part.content})
                else:
                    raise pai_exc.UserError(
                        f"{model_name}: {type(part).__name__} with non-text content is not "
                        f"supported by OpenAIHttpModel; {_SDK_HINT}"
                    )
        elif isinstance(message, ModelResponse):
            text = "".join(p.content for p in message.parts if isinstance(p, TextPart))
            out.append({"role": "assistant", "content": text})
    return out


class OpenAIHttpModel(Model):
    """Chat completions of one model at an OpenAI(-compatible) endpoint, without the SDK."""

    def __init__(
        self,
        model_name: str,
        *,
        session: Transport,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        settings: ModelSettings | None = None,
        max_tokens_field: str = "max_tokens",
    ) -> None:
        """``max_tokens_field``: the body field of the output cap; OpenAI's own API takes
        ``max_completion_tokens`` (its o-series refuse ``max_tokens``), compatible servers
        (vLLM, Ollama …) ``max_tokens``."""
        super().__init__(settings=settings)
        self._max_tokens_field = max_tokens_field
        self._model_name = model_name
        self._base_url = (base_url or OPENAI_BASE_URL).rstrip("/")
        self._url = self._base_url + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._session = session
        self._target: Target | None = None  # made on first use, on the calling event loop
        self._timeout_s = timeout_s

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def system(self) -> str:
        return "openai"

    @property
    def base_url(self) -> str:
        return self._base_url

    def _body(
        self,
        messages: list[ModelMessage],
        settings: ModelSettings | None,
        params: ModelRequestParameters,
    ) -> dict[str, Any]:
        if params.function_tools or params.output_tools or params.native_tools:
            raise pai_exc.UserError(
                f"{self._model_name}: tools are not supported by OpenAIHttpModel; {_SDK_HINT}"
            )
        if params.output_mode == "native":
            raise pai_exc.UserError(
                f"{self._model_name}: native structured output is not supported by "
                f"OpenAIHttpModel; {_SDK_HINT}"
            )
        parts: list[InstructionPart] = self._get_instruction_parts(messages, params) or []
        instructions = InstructionPart.join(parts) if parts else None
        body: dict[str, Any] = {
            "model": self._model_name,
            "messages": _messages(messages, instructions, self._model_name),
        }
        return self._fields(body, settings or {})

    def _fields(self, body: dict[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
        """The body's settings fields from pydantic-ai's ``ModelSettings``."""
        for key in _BODY_SETTINGS:
            if settings.get(key) is not None:
                body[self._max_tokens_field if key == "max_tokens" else key] = settings[key]
        if settings.get("stop_sequences"):
            body["stop"] = settings["stop_sequences"]
        extra = settings.get("extra_body")
        if isinstance(extra, Mapping):
            body.update(extra)  # response_format, user, provider-specific fields
        return body

    async def _post(
        self, body: dict[str, Any], settings: Mapping[str, Any], bounded: bool = False
    ) -> Any:
        """POST the body; the decoded answer, or pydantic-ai's error for the failure.
        ``bounded``: the caller bounds the call's time, the transport sets no timer."""
        timeout = settings.get("timeout", self._timeout_s)
        total = timeout if isinstance(timeout, int | float) else self._timeout_s
        if bounded:
            total = math.inf
        target = self._target
        if target is None:
            target = self._target = self._session.target(self._url, self._headers)
        try:
            status, headers, raw = await target.post(to_json(body), total)
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutErrors too
            raise pai_exc.ModelTimeoutError(self._model_name, "request timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise pai_exc.ModelConnectionError(
                self._model_name, f"connection error ({type(exc).__name__})"
            ) from exc
        try:
            data: Any = from_json(raw) if raw else None
        except ValueError:
            data = None
        if status >= 400:
            raise http_error(status, self._model_name, data, headers) from None
        if not isinstance(data, dict) or not _has_choice(data):
            raise pai_exc.UnexpectedModelBehavior(
                f"{self._model_name}: the response has no choices (HTTP {status})"
            )
        return data

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        settings, params = self.prepare_request(model_settings, model_request_parameters)
        data = await self._post(self._body(messages, settings, params), settings or {})
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
        usage = data.get("usage") or {}
        return ModelResponse(
            parts=[TextPart(content)] if content else [],
            usage=RequestUsage(
                input_tokens=int(usage.get("prompt_tokens") or 0),
                output_tokens=int(usage.get("completion_tokens") or 0),
            ),
            model_name=data.get("model") or self._model_name,
            provider_name="openai",
            provider_url=self._base_url,
            provider_response_id=data.get("id"),
            finish_reason=_FINISH.get(choice.get("finish_reason") or "", None),  # type: ignore[arg-type]
        )

    async def chat(
        self, messages: list[dict[str, str]], settings: Mapping[str, Any], bounded: bool = False
    ) -> tuple[str, int, int]:
        """(text, input tokens, output tokens) of one call: OpenAI's messages as they are and
        the call's ``ModelSettings``. The executor's and the HTTP API's calls come here
        rather than through ``pydantic_ai.direct.model_request`` and :meth:`request`: the
        same body and the same errors, without converting the messages to pydantic-ai's and
        back, merging settings and building a ``ModelResponse`` on every call (~10% of a
        ``conduit serve`` request's CPU, bench/README.md). ``bounded``: the caller bounds the
        call's time (a timeout around it), so the transport sets no timer of its own."""
        body = self._fields({"model": self._model_name, "messages": messages}, settings)
        data = await self._post(body, settings, bounded)
        usage = data.get("usage") or {}
        return (
            data["choices"][0]["message"].get("content") or "",
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
        )

    async def chat_stream(
        self, messages: list[dict[str, str]], settings: Mapping[str, Any]
    ) -> AsyncIterator[str | tuple[int, int]]:
        """A streamed call (``stream: true``) over the model's aiohttp session (a model made with
        a :class:`SharedSession`; Conduit's HTTP/1.1 client reads whole responses only): the
        answer's text pieces as the server sends them, then (input tokens, output tokens) from the
        usage chunk (``stream_options.include_usage``, as pydantic-ai's OpenAI model asks).

        Without the SDK: it parsed each chunk into its pydantic models, ~0.5 ms of CPU a chunk, 16
        ms for an answer of 30 pieces in `conduit serve` (bench/README.md); here a chunk is one
        ``from_json``. The same body as :meth:`chat` with ``stream`` set, the same
        errors as :meth:`_post`. ``settings["timeout"]``: the longest wait for the
        response or between two of its lines."""
        body = self._fields(
            {
                "model": self._model_name,
                "messages": messages,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            settings,
        )
        session = self._session
        if not isinstance(session, SharedSession):
            raise TypeError(
                f"{self._model_name}: chat_stream needs a model made with a SharedSession"
            )
        timeout = settings.get("timeout", self._timeout_s)
        wait = float(timeout) if isinstance(timeout, int | float) else self._timeout_s
        usage: Mapping[str, Any] = {}
        try:
            async with session.get().post(
                self._url,
                data=to_json(body),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=wait, sock_read=wait),
            ) as resp:
                if resp.status >= 400:
                    raw = await resp.read()
                    try:
                        data: Any = from_json(raw) if raw else None
                    except ValueError:
                        data = None
                    raise http_error(resp.status, self._model_name, data, resp.headers)
                async for line in resp.content:  # its lines, however long
                    if not line.startswith(b"data:"):
                        continue  # blank lines between events, comments, event names
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        break
                    try:
                        chunk = from_json(payload)
                    except ValueError:
                        raise pai_exc.UnexpectedModelBehavior(
                            f"{self._model_name}: a streamed chunk is not JSON"
                        ) from None
                    if not isinstance(chunk, dict):
                        continue
                    if chunk.get("error"):
                        raise pai_exc.UnexpectedModelBehavior(
                            f"{self._model_name}: the stream ended with an error"
                        )
                    for choice in chunk.get("choices") or ():
                        piece = ((choice or {}).get("delta") or {}).get("content")
                        if piece:
                            yield piece
                    if chunk.get("usage"):
                        usage = chunk["usage"]
        except TimeoutError as exc:
            raise pai_exc.ModelTimeoutError(self._model_name, "request timed out") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise pai_exc.ModelConnectionError(
                self._model_name, f"connection error ({type(exc).__name__})"
            ) from exc
        yield int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


def _has_choice(data: dict[str, Any]) -> bool:
    choices = data.get("choices")
    return (
        isinstance(choices, list)
        and bool(choices)
        and isinstance(choices[0], dict)
        and isinstance(choices[0].get("message"), dict)
    )
