"""Parsing of OpenAI chat-completion requests for the replay server: the model, the prompt (the
last user message), the characters of all messages and the output cap, or a 400 that says what
to fix."""

from __future__ import annotations

from typing import Any


class BadRequest(Exception):
    """A request the server answers with 400; the message says what to fix."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def content_text(content: Any, where: str) -> str:
    """Text of a message content: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict):
                raise BadRequest(f"{where} parts must be objects", where)
            if part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise BadRequest(f"{where} text parts need a string 'text'", where)
                texts.append(text)
        return "\n".join(texts)
    raise BadRequest(f"{where} must be a string or a list of content parts", where)


def max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadRequest(f"{name} must be an integer >= 1, got {value!r}", name)
        return value
    return None


def parse_chat(body: Any) -> tuple[str, str, int, int | None]:
    """Return (model, prompt, characters of all messages, output cap) of a chat request."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("'model' is required and must be a string", "model")
    if not isinstance(body.get("stream", False), bool):
        raise BadRequest("'stream' must be true or false", "stream")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", "messages")
    prompt: str | None = None
    n_chars = 0
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object", "messages")
        text = content_text(message.get("content"), f"messages[{i}].content")
        n_chars += len(text)
        if message.get("role") == "user":
            prompt = text
    if prompt is None:
        raise BadRequest("'messages' holds no message with role 'user'", "messages")
    return model, prompt, n_chars, max_tokens(body)
