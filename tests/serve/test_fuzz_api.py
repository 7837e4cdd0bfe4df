"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (Schemathesis):
requests that fit the schema and requests that break it, for every operation; then raw bodies
no schema describes (bytes, deeply nested JSON, huge filter lists, any content type) on every
POST endpoint. The service never answers 5xx, and every error body has the documented
``{"error", "detail"}`` shape."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

schemathesis = pytest.importorskip("schemathesis")

from retrieval.serve import create_app  # noqa: E402

from support.keywords import KeywordEncoder  # noqa: E402

HOST = {"host": "localhost"}
# Examples per operation and generation mode: ~15 operations x 2 modes keep the test to tens of seconds.
EXAMPLES = 30


def _check_response(response, where) -> None:
    where = (*where, response.status_code, response.text[:300])
    assert response.status_code < 500, where
    if response.status_code >= 400:
        body = json.loads(response.text)
        assert isinstance(body, dict) and {"error", "detail"} <= set(body), where
        assert isinstance(body["error"], str) and isinstance(body["detail"], str), where


def _check(case) -> None:
    _check_response(case.call(headers=HOST), (case.method, case.formatted_path))


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


POST_PATHS = [
    "/collections/shapes/search/text",
    "/collections/shapes/search/embedding",
    "/collections/shapes/search/item",
    "/collections/shapes/search/url",
    "/collections/shapes/search/image",
    "/collections/shapes/reload",
    "/knn-service",
    "/metadata",
]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)
FIELDS = st.sampled_from(
    ["text", "where", "k", "embedding", "id", "url", "image", "ids", "modality", "num_images"]
)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


RAW_BODIES = st.one_of(
    st.binary(max_size=300),
    st.dictionaries(FIELDS, JSON_VALUES, max_size=4).map(json.dumps),
    st.integers(1, 20_000).map(lambda d: '{"text": "red", "where": {"color": ' + _nested(d) + "}}"),
    st.integers(1, 20_000).map(lambda d: '{"ids": ' + _nested(d) + "}"),
    st.integers(1, 40_000).map(
        lambda n: json.dumps({"text": "red", "where": {"color": [f"c{i}" for i in range(n)]}})
    ),
    st.integers(1, 200_000).map(lambda n: '{"text": "' + "a" * n + '"}'),
)
CONTENT_TYPES = st.sampled_from(
    [None, "application/json", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)


def test_raw_bodies_never_get_a_server_error(config):
    from fastapi.testclient import TestClient

    with TestClient(create_app(config, model=KeywordEncoder()), base_url="http://localhost") as client:

        @settings(
            max_examples=150,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(path=st.sampled_from(POST_PATHS), body=RAW_BODIES, content_type=CONTENT_TYPES)
        def run(path, body, content_type):
            headers = {"content-type": content_type} if content_type else {}
            response = client.post(
                path, content=body if isinstance(body, bytes) else body.encode(), headers=headers
            )
            _check_response(response, ("POST", path, content_type, body[:100]))

        run()
