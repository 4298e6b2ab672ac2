"""JSON answers for requests with ``response_format``: the replay server's text wrapped in an
object (``json_object``) or shaped by the schema (``json_schema``), so that JSON-mode clients
get valid JSON back as they would from a provider."""

from __future__ import annotations

import json
from typing import Any

from .requests import BadRequest

_MAX_DEPTH = 8


def parse_response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """The request's ``response_format`` (``text``: None), or a 400 saying what is wrong."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise BadRequest(
            "response_format must be {'type': 'text' | 'json_object' | 'json_schema', …}",
            "response_format",
        )
    if fmt["type"] == "text":
        return None
    if fmt["type"] == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise BadRequest(
                "response_format.json_schema must be {'name': …, 'schema': {…}}",
                "response_format",
            )
    return fmt


def json_answer(fmt: dict[str, Any], text: str) -> str:
    """The answer ``text`` as JSON of the requested format."""
    if fmt["type"] == "json_object":
        return json.dumps({"answer": text})
    schema = fmt.get("json_schema", {}).get("schema") or {"type": "object"}
    return json.dumps(_instance(schema, text, 0))


def _instance(schema: Any, text: str, depth: int) -> Any:
    """A value valid under the common subset of JSON Schema that structured outputs use."""
    if not isinstance(schema, dict) or depth > _MAX_DEPTH:
        return text
    if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return _instance(options[0], text, depth + 1)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties") or {}
        return {
            name: _instance(sub, text, depth + 1)
            for name, sub in props.items()
            if isinstance(name, str)
        }
    if kind == "array":
        return [_instance(schema.get("items", {"type": "string"}), text, depth + 1)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 0.5
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return text
