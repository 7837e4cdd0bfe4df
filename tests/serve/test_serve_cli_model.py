"""`retrieval serve` on the command line, and the service with a real (tiny, random) TwinEncoder
loaded from disk (safetensors + JSON)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from retrieval.cli import main
from retrieval.config import ServeConfig

from support.images import color_png, png_bytes
from support.keywords import DIM, SQUARES


def test_cli_builds_the_config_and_calls_run(monkeypatch, tmp_path, collection_dir):
    seen: list[ServeConfig] = []
    monkeypatch.setattr("retrieval.serve.run", seen.append)
    monkeypatch.setenv("RETRIEVAL_API_KEY", "from-env")
    code = main(
        [
            "serve",
            str(collection_dir),
            "--name",
            "pics",
            "--media-root",
            str(tmp_path / "media"),
            "--port",
            "9123",
            "--max-k",
            "7",
            "--cors-origin",
            "*",
            "--hide-field",
            "path",
            "--batch-size",
            "5",
        ]
    )
    assert code == 0
    (config,) = seen
    assert config.collections == {"pics": str(collection_dir)}
    assert config.media_roots == {"pics": str(tmp_path / "media")}
    assert (config.host, config.port, config.max_k, config.api_key) == ("127.0.0.1", 9123, 7, "from-env")
    assert config.cors_origins == ("*",) and config.hidden_fields == ("path",) and config.batch_size == 5
    assert config.allow_image_urls is False

    assert config.reload_key is None and config.show_paths is False

    seen.clear()
    monkeypatch.setenv("RETRIEVAL_RELOAD_KEY", "admin")
    argv = ["serve", str(collection_dir), "--header-timeout", "3", "--body-timeout", "20", "--show-paths"]
    assert main([*argv, "--max-connections", "64", "--max-connections-per-client", "0"]) == 0
    config = seen[0]
    assert (config.header_timeout, config.body_timeout, config.show_paths) == (3.0, 20.0, True)
    assert (config.max_connections, config.max_connections_per_client, config.reload_key) == (64, 0, "admin")
    seen.clear()
    assert main(["serve", str(collection_dir), "--reload-key", "flag"]) == 0
    assert seen[0].reload_key == "flag"

    seen.clear()
    monkeypatch.delenv("RETRIEVAL_API_KEY")
    monkeypatch.delenv("RETRIEVAL_RELOAD_KEY")
    assert main(["serve", f"a={collection_dir}", f"b={collection_dir}", "--media-root", f"b={tmp_path}"]) == 0
    assert seen[0].collections == {"a": str(collection_dir), "b": str(collection_dir)}
    assert seen[0].media_roots == {"b": str(tmp_path)} and seen[0].api_key is None


def test_cli_reads_a_config_file(monkeypatch, tmp_path, collection_dir):
    seen: list[ServeConfig] = []
    monkeypatch.setattr("retrieval.serve.run", seen.append)
    file = tmp_path / "serve.json"
    ServeConfig(collections={"x": str(collection_dir)}, max_k=5, allow_image_urls=True).save(file)
    assert main(["serve", "--config", str(file), "--port", "8111"]) == 0
    assert seen[0].collections == {"x": str(collection_dir)}
    assert (seen[0].max_k, seen[0].allow_image_urls, seen[0].port) == (5, True, 8111)


def test_cli_errors(capsys, collection_dir):
    assert main(["serve"]) == 1
    assert "at least one collection" in capsys.readouterr().err
    assert main(["serve", str(collection_dir), "--host", "0.0.0.0"]) == 1
    assert "API key" in capsys.readouterr().err
    assert main(["serve", f"a={collection_dir}", f"a={collection_dir}"]) == 1
    assert "twice" in capsys.readouterr().err
    assert main(["serve", str(collection_dir.parent / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["serve", str(collection_dir), "--media-root", str(collection_dir / "nope")]) == 1
    assert "not a folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from retrieval.config import ModelConfig
    from retrieval.model import build_model

    config = ModelConfig(
        embed_dim=16,
        image_size=32,
        image_width=8,
        image_layers=1,
        text_width=16,
        text_layers=1,
        vocab_size=200,
        context_length=16,
    )
    model = build_model(config, [f"a {c} square" for c in SQUARES], device="cpu")
    folder = tmp_path_factory.mktemp("model") / "tiny"
    model.save(folder)
    return folder


def test_real_twin_encoder_from_disk(tmp_path, tiny_model_dir):
    from fastapi.testclient import TestClient

    from indexes import Collection
    from retrieval.model import TwinEncoder
    from retrieval.serve import create_app

    model = TwinEncoder.load(tiny_model_dir, device="cpu")
    files = [color_png(tmp_path / "media" / f"{c}.png", c, 32) for c in SQUARES]
    captions = [f"a {c} square" for c in SQUARES]
    image_vecs = model.encode_images([str(f) for f in files]).numpy()
    text_vecs = model.encode_texts(captions).numpy()
    meta = [{"modality": "image", "path": str(f), "caption": c} for f, c in zip(files, captions)]
    meta += [{"modality": "text", "caption": c} for c in captions]
    with Collection.create(
        tmp_path / "coll", dim=model.embed_dim, index="Flat", fingerprint=model.fingerprint()
    ) as c:
        c.add(np.concatenate([image_vecs, text_vecs]), meta)

    config = ServeConfig(
        collections={"tiny": str(tmp_path / "coll")},
        model=str(tiny_model_dir),
        media_roots={"tiny": str(tmp_path / "media")},
        reload_interval=0,
    )
    with TestClient(create_app(config), base_url="http://localhost") as client:
        info = client.get("/collections/tiny").json()
        assert info["model_fingerprint"] == info["fingerprint"] == model.fingerprint()
        # text -> text: a caption finds itself first (same encoder, same text)
        r = client.post(
            "/collections/tiny/search/text", json={"text": "a blue square", "k": 1, "modality": "text"}
        )
        assert r.status_code == 200, r.text
        top = r.json()["hits"][0]
        assert top["metadata"]["caption"] == "a blue square" and top["score"] == pytest.approx(1.0, abs=1e-4)
        # image -> image: an uploaded copy of a stored image finds it first
        r = client.post(
            "/collections/tiny/search/image",
            files={"image": ("q.png", png_bytes("green", 32), "image/png")},
            data={"k": "1", "modality": "image"},
        )
        assert r.status_code == 200, r.text
        top = r.json()["hits"][0]
        assert top["metadata"]["caption"] == "a green square" and top["score"] == pytest.approx(1.0, abs=1e-4)
        # clip-retrieval client body against the real model
        r = client.post("/knn-service", json={"text": "a red square", "modality": "text", "num_images": 2})
        assert r.status_code == 200 and r.json()[0]["caption"] == "a red square"


def test_retrieval_serve_process_answers_and_stops(collection_dir):
    """The real command in a child process: it binds loopback, answers, and stops on SIGTERM."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "retrieval", "-q", "serve", f"shapes={collection_dir}", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert r.json() == {"status": "ok", "collections": ["shapes"]}
        vec = [1.0] + [0.0] * (DIM - 1)
        r = httpx.post(
            f"http://127.0.0.1:{port}/knn-service", json={"embedding_input": vec, "num_images": 2}, timeout=30
        )
        assert r.status_code == 200 and len(r.json()) == 2, r.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_collections_sharing_a_model_folder_load_it_once(monkeypatch, tmp_path, collection_dir):
    from retrieval.serve import create_app
    from retrieval.serve import service as service_module
    from retrieval.serve.batching import ModelRunner

    from support.keywords import KeywordEncoder

    loads: list[str] = []

    def fake_load(directory, device=None, batch_size=32, runtime="auto"):
        loads.append(directory)
        return ModelRunner(KeywordEncoder(), directory, batch_size)

    monkeypatch.setattr(service_module, "load_model", fake_load)
    cfg = ServeConfig(
        collections={"a": str(collection_dir), "b": str(collection_dir)},
        model=str(tmp_path),
        reload_interval=0,
    )
    app = create_app(cfg)
    service = app.state.service
    assert loads == [str(tmp_path)]
    assert service.collections["a"].model is service.collections["b"].model
    service.close()
