"""OpenAI-shaped answers, serialised once (no response model: the shape is fixed)."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response
from pydantic_core import to_json

from conduit_workers.gateway.service import Answer

OWNER = "conduit"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        to_json(body),  # UTF-8 JSON, as json.dumps(ensure_ascii=False) writes it, in Rust
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def chat_completion(answer: Answer) -> Response:
    r = answer.result
    body = {
        "id": f"chatcmpl-{answer.query_id}",
        "object": "chat.completion",
        "created": answer.created,
        "model": r.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": r.response, "refusal": None},
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": r.input_tokens,
            "completion_tokens": r.output_tokens,
            "total_tokens": r.input_tokens + r.output_tokens,
        },
    }
    return json_response(body, headers={"x-conduit-query-id": answer.query_id})


def model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": OWNER}


def model_list(names: list[str]) -> Response:
    return json_response({"object": "list", "data": [model_object(n) for n in names]})
