"""Request bodies: OpenAI's chat completion (with Conduit's own routing fields, sent through the
SDK's ``extra_body``) and Conduit's feedback. Unknown fields are refused (422) rather than
silently dropped, so a request never runs without something its author asked for."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from conduit_workers.domain.chat import ChatMessage, ChatRequest

ROUTED = "conduit"  # the model name that asks Conduit to choose

# Text stored in the history database: PostgreSQL refuses NUL characters (checked in Rust).
NO_NUL = r"^[^\x00]*$"
Plain = Annotated[str, StringConstraints(pattern=NO_NUL)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)
    refusal: str | None = None  # an assistant turn echoed back by the SDK

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(p.text for p in self.content)


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a json_schema object {name, schema}")
        return self


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool | None = None


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``. ``model``: ``conduit`` to be routed, or a catalog model."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    messages: list[Message] = Field(min_length=1, max_length=10_000)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    stop: str | list[str] | None = None
    response_format: ResponseFormat | None = None
    user: Plain | None = Field(None, max_length=200)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=1)
    # Conduit's own (the SDK's ``extra_body``): routing constraints as in a JSONL line, and the
    # quality floor of the routing issue (a share of the reference model's quality).
    constraints: dict[str, Any] | None = None
    quality_floor: float | None = Field(None, ge=0, le=1)
    metadata: dict[Plain, Plain] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionRequest:
        if isinstance(self.stop, list) and len(self.stop) > 4:
            raise ValueError("stop takes at most 4 sequences")
        if not any(m.role == "user" for m in self.messages):
            raise ValueError("messages must hold at least one message with role 'user'")
        return self

    def chat_request(self) -> ChatRequest:
        stop = [self.stop] if isinstance(self.stop, str) else self.stop
        fmt: dict[str, Any] | None = None
        if self.response_format is not None and self.response_format.type != "text":
            fmt = self.response_format.model_dump(by_alias=True, exclude_none=True)
        return ChatRequest(
            messages=tuple(ChatMessage(m.role, m.text()) for m in self.messages),
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_completion_tokens or self.max_tokens,
            stop=tuple(stop) if stop else None,
            response_format=fmt,
            user=self.user,
        )

    def constraint_fields(self) -> dict[str, Any]:
        """Conduit's routing constraints of the request (``quality_floor`` among them)."""
        out = dict(self.constraints or {})
        if self.quality_floor is not None:
            out["quality_floor"] = self.quality_floor
        return out


class FeedbackRequest(BaseModel):
    """``POST /v1/feedback``: a rating in [0, 1] of an answer, by the ``x-conduit-query-id`` of
    the call, or by a batch line's ``custom_id`` (with its ``batch_id`` when several batches
    use the same custom ids)."""

    model_config = ConfigDict(extra="forbid")
    query_id: Plain | None = Field(None, min_length=1, max_length=200)
    custom_id: Plain | None = Field(None, min_length=1, max_length=200)
    batch_id: Plain | None = Field(None, min_length=1, max_length=64)  # whose custom_id it is
    rating: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _one_ref(self) -> FeedbackRequest:
        if (self.query_id is None) == (self.custom_id is None):
            raise ValueError("give exactly one of query_id and custom_id")
        if self.batch_id is not None and self.custom_id is None:
            raise ValueError("batch_id goes with custom_id")
        return self
