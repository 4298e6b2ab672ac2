"""Streamed LLM calls (``stream: true`` on the HTTP API): the text as it comes, then the whole
call's :class:`Completion` (tokens, latency). OpenAI(-compatible) endpoints are streamed by
``OpenAIHttpModel.chat_stream`` (no SDK), other providers through pydantic-ai."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from pydantic_ai.direct import model_request_stream
from pydantic_ai.messages import PartDeltaEvent, PartStartEvent, TextPart, TextPartDelta

from conduit_workers.domain.chat import ChatRequest
from conduit_workers.domain.records import Completion
from conduit_workers.errors import ConfigError, ProviderError, RetryableProviderError
from conduit_workers.execution.llm import LLMClient, chat_messages, classify, openai_messages
from conduit_workers.execution.openai_http import OpenAIHttpModel

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
    tokens = (0, 0)
    try:
        model = llm.stream_model(model_name)
        if isinstance(model, OpenAIHttpModel):
            messages = openai_messages(request, request.prompt)
            async for item in model.chat_stream(messages, settings):
                if isinstance(item, str):
                    text.append(item)
                    yield item
                else:
                    tokens = item
        else:
            async with model_request_stream(
                model, chat_messages(request), model_settings=settings
            ) as stream:
                async for event in stream:
                    piece = ""
                    if isinstance(event, PartStartEvent) and isinstance(event.part, TextPart):
                        piece = event.part.content
                    elif isinstance(event, PartDeltaEvent) and isinstance(
                        event.delta, TextPartDelta
                    ):
                        piece = event.delta.content_delta
                    if piece:
                        text.append(piece)
                        yield piece
                usage = stream.get().usage
                tokens = (int(usage.input_tokens or 0), int(usage.output_tokens or 0))
    except (ConfigError, ProviderError):
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes a classified error
        log.debug("streamed call to %s failed: %r", model_name, exc)
        raise classify(exc, model_name) from None
    if not "".join(text).strip():
        raise RetryableProviderError("empty response", model_name)
    yield Completion("".join(text), *tokens, (time.perf_counter() - started) * 1000)
