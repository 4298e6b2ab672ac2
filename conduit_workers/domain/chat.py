"""A chat request as the OpenAI API carries it: messages and the generation settings that every
provider understands, passed to the chosen model unchanged."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ROLES = ("system", "developer", "user", "assistant")


@dataclass(frozen=True)
class ChatMessage:
    role: str  # system | developer | user | assistant
    content: str


@dataclass(frozen=True)
class ChatRequest:
    """Messages and settings of one call; ``None`` leaves a setting to the provider."""

    messages: tuple[ChatMessage, ...]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] | None = None
    response_format: Mapping[str, Any] | None = None
    user: str | None = None

    @property
    def prompt(self) -> str:
        """The text that routing reads and the history stores: the messages' contents, in order."""
        return "\n\n".join(m.content for m in self.messages if m.content)

    @property
    def chars(self) -> int:
        return sum(len(m.content) for m in self.messages)
