"""A schema fuzz of the OpenAPI document `conduit serve` publishes (schemathesis): whatever the
generated request, no 500, and every 4xx is OpenAI's error body with a message for a person."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings

from tests.gateway_harness import Api, running_api

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fuzz_api(
    redis_client: redis.Redis, pg_engine: sa.Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Api]:
    with running_api(redis_client, pg_engine, tmp_path_factory.mktemp("fuzz")) as running:
        yield running


def test_no_request_gets_a_500_and_every_error_says_what_is_wrong(fuzz_api: Api) -> None:
    schema = schemathesis.openapi.from_url(fuzz_api.url.removesuffix("/v1") + "/openapi.json")
    auth = {"Authorization": f"Bearer {fuzz_api.keys['main']}"}
    seen: list[str] = []
    statuses: Counter[int] = Counter()
    # The operations one by one under Hypothesis (schemathesis's pytest plugin does not load
    # under this pytest).
    for result in schema.get_all_operations():
        operation = result.ok()
        seen.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call(headers=auth)
            statuses[response.status_code] += 1
            assert response.status_code < 500, (case.method, case.path, response.text[:300])
            if response.status_code >= 400:
                error = response.json()["error"]
                assert isinstance(error["message"], str) and len(error["message"]) > 10
                assert error["type"]

        check()
    assert "POST /v1/chat/completions" in seen and "POST /v1/feedback" in seen
    assert statuses[200] and statuses[422], statuses  # valid and invalid requests both came
