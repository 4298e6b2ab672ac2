"""`conduit submit` lines in OpenAI's shape: ``messages`` with their settings, and OpenAI Batch
API lines as they are, keep their request in the history database and reach the executor; an
unknown field is reported, not silently dropped."""

from __future__ import annotations

import json

import pytest

from conduit_workers.domain.chat import ChatMessage, ChatRequest
from conduit_workers.domain.items import PromptItem, ignored_fields, parse_line
from conduit_workers.domain.records import DecisionRow
from conduit_workers.errors import InputError
from conduit_workers.history.history import SqlHistory

pytestmark = pytest.mark.integration

MODELS = frozenset({"strong", "cheap"})
LINES = [
    {"id": "plain", "prompt": "What is 2+2?", "source": "mmlu"},
    {
        "id": "chat",
        "messages": [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": "Capital of France?"},
        ],
        "temperature": 0.2,
        "max_tokens": 5,
        "response_format": {"type": "json_object"},
        "seed": 7,
    },
    {
        "custom_id": "batch-1",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "cheap",
            "messages": [{"role": "user", "content": "Name a prime."}],
            "max_completion_tokens": 3,
        },
    },
]


def _parse(obj: object, n: int) -> PromptItem:
    return parse_line(json.dumps(obj), line=n, max_prompt_chars=1000, known_models=MODELS)


def test_openai_lines_keep_their_request_up_to_the_executor(history: SqlHistory) -> None:
    plain, chat, batch = (_parse(o, n) for n, o in enumerate(LINES, start=1))
    assert plain.request is None and plain.ignored == ("source",)
    assert chat.request == ChatRequest(
        messages=(
            ChatMessage("system", "Answer in one word."),
            ChatMessage("user", "Capital of France?"),
        ),
        temperature=0.2,
        max_tokens=5,
        response_format={"type": "json_object"},
    )
    assert chat.ignored == ("seed",)
    assert batch.external_id == "batch-1"
    assert batch.constraints.allowed_models == ("cheap",)
    assert batch.request is not None and batch.request.max_tokens == 3
    warnings = ignored_fields([plain, chat, batch])
    assert [w.split(" ignored")[0] for w in warnings] == ["field 'seed'", "field 'source'"]
    assert "line 2" in warnings[0]

    items = [plain, chat, batch]
    history.submit("b1", items, tag=None, rejected=0, constraints={})
    history.insert_decisions(
        [
            DecisionRow(it.key, "cheap", ["cheap"], [0.0], {}, "general", 0.0, None, {})
            for it in items
        ]
    )
    rows = {r.query_id: r for r in history.load_for_execution([it.key for it in items])}
    assert rows[plain.key].request is None
    assert rows[chat.key].request == chat.request
    assert rows[batch.key].request == batch.request


@pytest.mark.parametrize(
    "obj,reason",
    [
        ({"messages": []}, "non-empty list"),
        ({"messages": [{"role": "system", "content": "x"}]}, "no message with role 'user'"),
        ({"messages": [{"role": "user", "content": "x"}], "temperature": 3}, "temperature"),
        ({"prompt": "x", "model": "gpt-9"}, "not in the catalog"),
        ({"custom_id": "c", "url": "/v1/embeddings", "body": {"input": "x"}}, "only /v1/chat"),
    ],
)
def test_bad_openai_lines_are_rejected_with_the_reason(obj: object, reason: str) -> None:
    with pytest.raises(InputError, match=reason):
        _parse(obj, 1)
