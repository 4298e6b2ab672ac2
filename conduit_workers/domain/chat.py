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
    def last_user_turn(self) -> str | None:
        """The content of the last user message (what the user asks now), or None."""
        for m in reversed(self.messages):
            if m.role == "user":
                return m.content
        return None

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


# The fields of an input line (`conduit submit`) that make its OpenAI request.
CHAT_FIELDS = frozenset(
    {"messages", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop",
     "response_format", "model"}
)  # fmt: skip
_FORMATS = ("text", "json_object", "json_schema")


def _number(obj: Mapping[str, Any], name: str, low: float, high: float) -> float | None:
    v = obj.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
        raise ValueError(f"'{name}' must be a number in [{low:g}, {high:g}], got {v!r}")
    return float(v)


def _content(v: Any, where: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in v):
        texts = [p.get("text") for p in v]
        if all(isinstance(t, str) for t in texts):
            return "\n".join(t for t in texts if isinstance(t, str))
    raise ValueError(f"'{where}.content' must be a string or a list of text parts")


def parse_chat(obj: Mapping[str, Any], prompt: str | None = None) -> ChatRequest:
    """The OpenAI request of an input line: its ``messages`` (or ``prompt`` as one user
    message) and settings; ``ValueError`` says what is wrong."""
    msgs = obj.get("messages")
    messages: tuple[ChatMessage, ...]
    if msgs is None:
        if prompt is None:
            raise ValueError("give 'prompt' or 'messages'")
        messages = (ChatMessage("user", prompt),)
    else:
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise ValueError(f"'messages[{i}]' must be an object with a role in {ROLES}")
            out.append(ChatMessage(m["role"], _content(m.get("content") or "", f"messages[{i}]")))
        if not any(m.role == "user" for m in out):
            raise ValueError("'messages' holds no message with role 'user'")
        messages = tuple(out)
    cap = obj.get("max_completion_tokens", obj.get("max_tokens"))
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise ValueError(f"'max_tokens' must be an integer >= 1, got {cap!r}")
    stop = obj.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop)
    ):
        raise ValueError("'stop' must be a string or a list of at most 4 strings")
    fmt = obj.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type") not in _FORMATS):
        raise ValueError(f"'response_format' must be an object with a type in {_FORMATS}")
    return ChatRequest(
        messages=messages,
        temperature=_number(obj, "temperature", 0, 2),
        top_p=_number(obj, "top_p", 0, 1),
        max_tokens=cap,
        stop=tuple(stop) if stop else None,
        response_format=fmt if fmt and fmt["type"] != "text" else None,
        user=obj.get("user") if isinstance(obj.get("user"), str) else None,
    )
