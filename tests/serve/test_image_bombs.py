"""Image work bounded by the output: a strip of 1 x 39,000 pixels (a few hundred bytes of PNG) costs
about what an ordinary image costs, through every door an image comes in (upload, base64, URL, the
readers of embed and train); ordinary images give exactly the pixels they gave before."""

from __future__ import annotations

import base64
import http.server
import io
import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.config import ServeConfig
from retrieval.data.transforms import _RESAMPLE, ImageTransform, ProcessorTransform, resize_center_crop

from support.tiny import tiny_config

STATUS = Path("/proc/self/status")
LIMIT_MB = 200.0
LIMIT_S = 2.0


def _reference_resize_center_crop(image: Image.Image, size: int, resample: str = "bicubic") -> Image.Image:
    """The transform as it was: the shorter side resized to ``size``, then the central square."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), _RESAMPLE[resample])
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def _random_image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _strip_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class _Peak:
    """Peak resident memory of this process above its level at the start, in MB (Linux)."""

    def __enter__(self) -> _Peak:
        if not STATUS.exists():
            pytest.skip("needs Linux /proc to measure peak memory")
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        except OSError:
            pytest.skip("cannot reset the peak memory counter here")
        self.start = self._kb("VmRSS")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.t0
        self.mb = (self._kb("VmHWM") - self.start) / 1024

    @staticmethod
    def _kb(key: str) -> int:
        for line in STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {key} in {STATUS}")


# -- ordinary images are unchanged -----------------------------------------------------------


def test_ordinary_shapes_give_the_pixels_they_gave_before():
    rng = random.Random(0)
    for trial in range(80):
        short = rng.randint(1, 300) if trial % 4 == 0 else rng.randint(1, 40)
        aspect = rng.uniform(1.0, 2.0) if trial % 4 == 0 else rng.uniform(1.0, 64.0)
        width, height = short, max(1, int(short * aspect))
        if trial % 2:
            width, height = height, width
        image = _random_image(width, height, trial)
        size, resample = rng.choice([32, 224]), rng.choice(["bicubic", "bilinear"])
        expected = np.asarray(_reference_resize_center_crop(image, size, resample))
        got = np.asarray(resize_center_crop(image, size, resample))
        assert np.array_equal(got, expected), (width, height, size, resample)


def test_processor_transform_is_unchanged_on_ordinary_shapes():
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    transform = ProcessorTransform(processor)
    for seed, (width, height) in enumerate([(80, 60), (60, 300), (1000, 40), (33, 33)]):
        image = _random_image(width, height, seed)
        expected = processor(images=image, return_tensors="pt")["pixel_values"][0]
        assert np.array_equal(transform(image).numpy(), expected.numpy()), (width, height)


# -- extreme strips cost little, through every door ------------------------------------------


@pytest.fixture(scope="module")
def model():
    import torch

    from retrieval.model import build_model

    torch.manual_seed(0)
    # a 224 px input, as the pretrained towers take: what makes a strip expensive when resized first
    return build_model(tiny_config(image_size=224, embed_dim=16), ["a red strip"], device="cpu").eval()


@pytest.fixture(scope="module")
def served(tmp_path_factory, model):
    from fastapi.testclient import TestClient

    from indexes import Collection
    from retrieval.serve import create_app

    root = tmp_path_factory.mktemp("strips")
    vectors = np.random.default_rng(0).normal(size=(8, model.embed_dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with Collection.create(
        root / "coll", dim=model.embed_dim, index="Flat", fingerprint=model.fingerprint()
    ) as c:
        c.add(vectors, [{"modality": "image", "n": i} for i in range(8)])
    config = ServeConfig(
        collections={"strips": str(root / "coll")},
        reload_interval=0,
        allow_image_urls=True,
        allow_private_urls=True,
        workers=2,
    )
    with TestClient(create_app(config, model=model), base_url="http://localhost") as client:
        client.post("/collections/strips/search/text", json={"text": "warm up", "k": 1})
        yield client


class _StripHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = _strip_png(1, 39_000)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def strip_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StripHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/strip.png"
    server.shutdown()
    server.server_close()


def _upload(client, width, height):
    files = {"image": ("strip.png", _strip_png(width, height), "image/png")}
    return client.post("/collections/strips/search/image", files=files, data={"k": "3"})


def _base64(client, width, height):
    body = {"image": base64.b64encode(_strip_png(width, height)).decode(), "num_images": 3}
    return client.post("/knn-service", json=body)


@pytest.mark.parametrize(
    ("door", "width", "height"),
    [
        ("upload", 1, 39_000),
        ("upload", 39_000, 1),
        ("base64", 1, 8_000),
        ("base64", 1, 39_000),
        ("url", 1, 39_000),
    ],
)
def test_a_strip_query_costs_what_an_ordinary_one_costs(served, strip_url, door, width, height):
    assert len(_strip_png(width, height)) < 1000  # a few hundred bytes
    with _Peak() as peak:
        if door == "upload":
            r = _upload(served, width, height)
        elif door == "base64":
            r = _base64(served, width, height)
        else:
            r = served.post("/collections/strips/search/url", json={"url": strip_url, "k": 3})
    assert r.status_code == 200, r.text
    assert peak.mb < LIMIT_MB and peak.seconds < LIMIT_S, (peak.mb, peak.seconds)


def test_the_readers_of_embed_and_train_are_bounded_too(tmp_path, model):
    from transformers import CLIPImageProcessor

    from retrieval import encoding

    strip = tmp_path / "strip.png"
    strip.write_bytes(_strip_png(1, 39_000))
    image = Image.open(strip).convert("RGB")
    processor = CLIPImageProcessor()  # shortest edge 224, then a 224 crop
    with _Peak() as peak:
        vectors = encoding.encode_images(model, [str(strip)], progress=False).vectors  # embed, eval
        train = ImageTransform(224, (0.5,) * 3, (0.5,) * 3, train=True)(image)
        evaluated = ImageTransform(224, (0.5,) * 3, (0.5,) * 3)(image)
        pretrained = ProcessorTransform(processor)(image)
    assert tuple(vectors.shape) == (1, model.embed_dim)
    assert train.shape == evaluated.shape == pretrained.shape == (3, 224, 224)
    assert peak.mb < LIMIT_MB and peak.seconds < LIMIT_S, (peak.mb, peak.seconds)
