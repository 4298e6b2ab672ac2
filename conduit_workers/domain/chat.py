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

    def to_json(self) -> dict[str, Any]:
        """A JSON object (the history's ``queries.request``); :meth:`from_json` reads it back."""
        out: dict[str, Any] = {"messages": [[m.role, m.content] for m in self.messages]}
        for name in ("temperature", "top_p", "max_tokens", "user"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.stop:
            out["stop"] = list(self.stop)
        if self.response_format is not None:
            out["response_format"] = dict(self.response_format)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ChatRequest:
        return cls(
            messages=tuple(ChatMessage(role, content) for role, content in obj["messages"]),
            temperature=obj.get("temperature"),
            top_p=obj.get("top_p"),
            max_tokens=obj.get("max_tokens"),
            stop=tuple(obj["stop"]) if obj.get("stop") else None,
            response_format=obj.get("response_format"),
            user=obj.get("user"),
        )
