"""Text that every store takes: no NUL, no unpaired UTF-16 surrogate.

PostgreSQL refuses NUL in text and JSON, and a lone surrogate (``"\\ud800"`` is valid JSON)
cannot be encoded as UTF-8 at all; either would fail the whole batch's transaction. Such a
string is rejected with its field, never stored.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text (None when it can); the text is never quoted."""
    if value.isascii():
        return "holds a NUL character (\\u0000)" if "\x00" in value else None
    if "\x00" in value:
        return "holds a NUL character (\\u0000)"
    m = _SURROGATE.search(value)
    if m is not None:
        return (
            f"holds an unpaired UTF-16 surrogate (\\u{ord(m.group()):04x}) at character {m.start()}"
        )
    return None


def nested_text_problem(value: Any) -> str | None:
    """The first :func:`text_problem` of any string, key or value, inside a JSON value."""
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, dict):
        for k, v in value.items():
            problem = nested_text_problem(k) or nested_text_problem(v)
            if problem:
                return problem
    elif isinstance(value, list):
        for v in value:
            problem = nested_text_problem(v)
            if problem:
                return problem
    return None
