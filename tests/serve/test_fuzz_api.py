"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (Schemathesis):
requests that fit the schema and requests that break it, for every operation; the service
never answers 5xx, and every error body has the documented ``{"error", "detail"}`` shape."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable

schemathesis = pytest.importorskip("schemathesis")

from retrieval.serve import create_app  # noqa: E402

from support.keywords import KeywordEncoder  # noqa: E402

HOST = {"host": "localhost"}
# Examples per operation and generation mode: ~15 operations x 2 modes keep the test to tens of seconds.
EXAMPLES = 25


def _check(case) -> None:
    response = case.call(headers=HOST)
    where = (case.method, case.formatted_path, response.status_code, response.text[:300])
    assert response.status_code < 500, where
    if response.status_code >= 400:
        body = json.loads(response.text)
        assert isinstance(body, dict) and {"error", "detail"} <= set(body), where
        assert isinstance(body["error"], str) and isinstance(body["detail"], str), where


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE])
def test_no_server_errors_and_errors_have_the_documented_shape(config, mode):
    app = create_app(config, model=KeywordEncoder())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=HOST)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12  # every route of the service is in the schema
    fuzzed = 0
    for operation in operations:
        run = settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )(given(case=operation.as_strategy(generation_mode=mode))(_check))
        try:
            run()
        except Unsatisfiable:  # nothing in this operation can break the schema (no parameters, no body)
            assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
            continue
        fuzzed += 1
    assert fuzzed >= 8, fuzzed
