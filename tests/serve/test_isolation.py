"""One bad query fails only itself: queries encoded in one batch with it still get their answers."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from retrieval.serve import create_app
from retrieval.serve.batching import ModelRunner

from support.keywords import KeywordEncoder, keyword_vector

GOOD = ["red", "green", "blue", "yellow", "red cat", "blue dog"]
JSON = {"content-type": "application/json"}


def _json(body) -> bytes:
    """JSON text as a client sends it: lone surrogates as ``\\ud800`` escapes."""
    return json.dumps(body).encode("ascii")


class StrictTokenizer(KeywordEncoder):
    """The keyword encoder with a tokenizer as strict as Hugging Face's: text that is not valid
    Unicode (a lone surrogate) raises ``TypeError``, and so does the word "poison" (a query the model
    cannot take for any other reason). ``hold`` keeps the first call waiting until released, so the
    queries sent meanwhile queue up and are encoded together."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = threading.Event()
        self.held = threading.Event()
        self.batches: list[list[str]] = []

    def encode_texts(self, texts, **kwargs):
        if not self.held.is_set():
            self.held.set()
            self.hold.wait(30)
        self.batches.append(list(texts))
        for text in texts:
            text.encode("utf-8")  # UnicodeEncodeError (a ValueError) for a lone surrogate
            if "poison" in text:
                raise TypeError("TextEncodeInput must be Union[TextInputSequence, ...]")
        return super().encode_texts(texts)


def _pending(runner: ModelRunner) -> int:
    return len(runner._texts._pending)


def test_a_batch_with_a_bad_query_answers_the_others():
    model = StrictTokenizer()
    runner = ModelRunner(model, "strict", batch_size=16)
    queries = ["hold", *GOOD[:3], "poison", *GOOD[3:]]
    with ThreadPoolExecutor(len(queries)) as pool:
        first = pool.submit(runner.encode_texts, ["hold"])
        assert model.held.wait(10)
        futures = {q: pool.submit(runner.encode_texts, [q]) for q in queries[1:]}
        deadline = time.monotonic() + 10
        while _pending(runner) < len(futures) and time.monotonic() < deadline:
            time.sleep(0.005)
        model.hold.set()
        first.result(timeout=10)
        for query, future in futures.items():
            if query == "poison":
                with pytest.raises(TypeError):
                    future.result(timeout=10)
            else:
                np.testing.assert_array_equal(
                    np.asarray(future.result(timeout=10)), keyword_vector(query)[None]
                )
    assert any(len(b) == len(futures) for b in model.batches)  # they were encoded together first


def test_poisoned_batch_over_http_every_good_query_gets_200(config):
    """Concurrent text queries: a lone surrogate and a query the model refuses are batched with good
    ones; each bad one gets its own 4xx, every good one 200 with its own answer."""
    model = StrictTokenizer()
    app = create_app(config.replace(batch_size=32, workers=12), model=model)
    service = app.state.service
    runner = service.collections["shapes"].model
    bodies = [{"text": "hold"}] + [{"text": t, "k": 1, "modality": "image"} for t in GOOD]
    bodies += [{"text": "x \ud800"}, {"text": "poison"}, {"text": "red \udfff dog"}]
    with TestClient(app, base_url="http://localhost") as client, ThreadPoolExecutor(len(bodies)) as pool:

        def post(body):
            return client.post("/collections/shapes/search/text", content=_json(body), headers=JSON)

        first = pool.submit(post, bodies[0])
        assert model.held.wait(10)
        futures = [pool.submit(post, body) for body in bodies[1:]]
        deadline = time.monotonic() + 10
        while _pending(runner) < len(GOOD) + 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        model.hold.set()
        assert first.result(timeout=30).status_code == 200
        answers = [f.result(timeout=30) for f in futures]
    for text, r in zip(GOOD, answers):
        assert r.status_code == 200, (text, r.text)
        assert r.json()["hits"][0]["metadata"]["color"] == text.split()[0]
    surrogate, poison, surrogate2 = answers[len(GOOD) :]
    assert surrogate.status_code == 400 and surrogate.json()["error"] == "bad_text", surrogate.text
    assert surrogate2.status_code == 400 and surrogate2.json()["error"] == "bad_text", surrogate2.text
    assert poison.status_code == 400 and poison.json()["error"] == "bad_query", poison.text


def test_lone_surrogates_are_a_4xx_everywhere(config):
    model = StrictTokenizer()
    model.held.set()
    with TestClient(create_app(config, model=model), base_url="http://localhost") as client:
        cases = [
            ("/collections/shapes/search/text", {"text": "x \ud800"}),
            ("/knn-service", {"text": "x \ud800"}),
            ("/collections/shapes/search/text", {"text": "red", "where": {"color": "\ud800"}}),
            ("/collections/shapes/search/text", {"text": "red", "where": {"\ud800": 1}}),
            ("/collections/shapes/search/text", {"text": "red", "\ud800": 1}),
            ("/collections/%ED%A0%80/search/text", {"text": "red"}),  # a surrogate, UTF-8 encoded
            ("/knn-service", {"text": "red", "indice_name": "\ud800"}),
            ("/metadata", {"ids": [0], "indice_name": "\udc00"}),
        ]
        for path, body in cases:
            r = client.post(path, content=_json(body), headers=JSON)
            assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
            assert r.json()["error"], r.text
