"""Re-ask detection on the HTTP API, as in the router: a user (OpenAI's ``user``) asking again
what they asked a moment ago gives the earlier answer a reward of 0; their other questions under
the same long system prompt do not, and calls without a user are not compared."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import select

from conduit_workers.history import history_schema as t
from tests.gateway_harness import Api, running_api

pytestmark = pytest.mark.integration
SYSTEM = " ".join(
    f"Rule {i}: answer as the style guide of the support team says, in plain words, briefly."
    for i in range(12)
)


@pytest.fixture
def api(redis_client: redis.Redis, pg_engine: sa.Engine, tmp_path: Path) -> Iterator[Api]:
    with running_api(redis_client, pg_engine, tmp_path) as running:
        yield running


def _ask(api: Api, question: str, user: str | None) -> str:
    body: Any = {
        "model": "strong",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
    }
    if user is not None:
        body["user"] = user
    raw = api.client().chat.completions.with_raw_response.create(**body)
    qid = raw.headers["x-conduit-query-id"]
    assert api.rows(t.results, qid)  # written (the detector runs right after the write)
    return qid


def _reasked(api: Api, wait_s: float = 0.0) -> set[str]:
    """Query ids whose answer got a re-ask event."""
    deadline = time.monotonic() + wait_s
    while True:
        with api.history.engine.connect() as conn:
            found = set(
                conn.scalars(select(t.feedback.c.query_id).where(t.feedback.c.kind == "retry"))
            )
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def test_a_user_asking_again_marks_the_earlier_answer(api: Api) -> None:
    first = _ask(api, "How do I reset my password?", "ann")
    _ask(api, "Which plans include phone support?", "ann")  # same system prompt, new question
    _ask(api, "How do I reset my password?", None)  # no user: not compared
    _ask(api, "How do I reset my password?", "bob")  # another user
    assert _reasked(api) == set()
    _ask(api, "how do I reset my password", "ann")
    assert _reasked(api, wait_s=10) == {first}
