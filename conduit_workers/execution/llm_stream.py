"""Streamed LLM calls through pydantic-ai (``stream: true`` on the HTTP API): the text as it
comes, then the whole call's :class:`Completion` (tokens, latency)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from pydantic_ai.direct import model_request_stream
from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta

from conduit_workers.domain.chat import ChatRequest
from conduit_workers.domain.records import Completion
from conduit_workers.errors import ConfigError, ProviderError, RetryableProviderError
from conduit_workers.execution.llm import LLMClient, chat_messages, classify

log = logging.getLogger(__name__)


async def stream_chat(
    llm: LLMClient, model_name: str, request: ChatRequest
) -> AsyncIterator[str | Completion]:
    """Yield the answer's text pieces, then one :class:`Completion`. Raises
    :class:`ProviderError` subclasses only (an empty answer is a retryable one)."""
    spec = llm.catalog.get(model_name)
    settings = llm.settings_for(spec, request)
    started = time.perf_counter()
    text: list[str] = []
    try:
        model = llm.stream_model(model_name)
        async with model_request_stream(
            model, chat_messages(request), model_settings=settings
        ) as stream:
            async for event in stream:
                piece = ""
                if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                    piece = event.part.content
                elif isinstance(event, PartDeltaEvent) and isinstance(event.delta, TextPartDelta):
                    piece = event.delta.content_delta
                if piece:
                    text.append(piece)
                    yield piece
            response = stream.get()
    except (ConfigError, ProviderError):
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a classified error
        log.debug("streamed call to %s failed: %r", model_name, exc)
        raise classify(exc, model_name) from None
    if not "".join(text).strip():
        raise RetryableProviderError("empty response", model_name)
    usage = response.usage
    yield Completion(
        "".join(text),
        int(usage.input_tokens or 0),
        int(usage.output_tokens or 0),
        (time.perf_counter() - started) * 1000,
    )
