"""FakeLLM: the :class:`~conduit_workers.domain.ports.LLM` port without a provider, for unit
tests of the executor's ``handle_*`` (no network, no pydantic-ai model).

``answer(model, prompt)`` gives the text, or raises a
:class:`~conduit_workers.errors.ProviderError` to play a failing provider; tokens are counted
as words. Every call is recorded in ``calls``.
"""

from __future__ import annotations

from collections.abc import Callable

from conduit_workers.domain.chat import ChatRequest
from conduit_workers.domain.records import Completion

Answer = Callable[[str, str], str]


def echo(model: str, prompt: str) -> str:
    return f"{model} answers: {prompt}"


class FakeLLM:
    def __init__(self, answer: Answer = echo, latency_ms: float = 1.0) -> None:
        self.answer = answer
        self.latency_ms = latency_ms
        self.calls: list[tuple[str, str]] = []

    async def complete(
        self,
        model_name: str,
        prompt: str,
        request: ChatRequest | None = None,
        max_output_tokens: int | None = None,
    ) -> Completion:
        self.calls.append((model_name, prompt))
        text = self.answer(model_name, prompt)  # may raise a ProviderError
        words = text.split()
        if max_output_tokens is not None:
            words = words[:max_output_tokens]
        return Completion(" ".join(words), len(prompt.split()), len(words), self.latency_ms)
