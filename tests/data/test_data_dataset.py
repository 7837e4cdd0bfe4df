from __future__ import annotations

import pickle
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader

from retrieval.data import ImageTransform, Pair, PairDataset, collate_pairs
from retrieval.data.transforms import random_resized_crop_box, resize_center_crop, to_tensor

from support.images import jpeg_bytes, rgb_image

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def test_loader_skips_and_counts_broken_items(tmp_path: Path) -> None:
    rgb_image(seed=1).save(tmp_path / "ok1.png")
    rgb_image(seed=2).save(tmp_path / "ok2.jpg")
    (tmp_path / "corrupt.jpg").write_bytes(b"nope")
    data = jpeg_bytes(rgb_image(64, 64))
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    Image.new("L", (300, 300)).save(tmp_path / "bomb.png")
    pairs = [
        Pair(str(tmp_path / "ok1.png"), "one", "1"),
        Pair(str(tmp_path / "corrupt.jpg"), "corrupt", "2"),
        Pair(str(tmp_path / "missing.jpg"), "missing", "3"),
        Pair(str(tmp_path / "cut.jpg"), "cut", "4"),
        Pair(str(tmp_path / "bomb.png"), "bomb", "5"),
        Pair(str(tmp_path / "ok2.jpg"), "  ", "6"),
        Pair(str(tmp_path / "ok2.jpg"), "two", "6"),
    ]
    dataset = PairDataset(pairs, ImageTransform(16, MEAN, STD), max_pixels=50_000)
    loader = DataLoader(dataset, batch_size=3, num_workers=0, collate_fn=collate_pairs)
    batches = list(loader)
    assert sum(b["skipped"] for b in batches) == 5
    assert [c for b in batches for c in b["captions"]] == ["one", "two"]
    assert [i for b in batches for i in b["image_ids"]] == ["1", "6"]
    assert [i for b in batches for i in b["indices"]] == [0, 6]
    assert batches[1]["pixel_values"].shape == (0, 3, 0, 0) and batches[1]["captions"] == []
    assert batches[0]["pixel_values"].shape == (1, 3, 16, 16)
    assert batches[0]["pixel_values"].dtype == torch.float32


def test_eval_transform_resizes_crops_and_normalises() -> None:
    image = Image.new("RGB", (40, 20), (128, 64, 255))
    out = ImageTransform(16, MEAN, STD)(image)
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    expected = (torch.tensor([128, 64, 255]) / 255.0 - 0.5) / 0.25
    assert torch.allclose(out[:, 8, 8], expected, atol=1e-6)
    assert resize_center_crop(image, 10).size == (10, 10)


def test_to_tensor_is_the_normalisation_formula_for_every_image_mode() -> None:
    """Pixels in channel order as ``(pixel / 255 - mean) / std``, in float32, whatever the mode."""
    import numpy as np

    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, size=(9, 13, 3), dtype=np.uint8))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for image in (rgb, rgb.convert("L"), rgb.convert("RGBA"), rgb.convert("P"), rgb.convert("CMYK")):
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)  # [H, W, 3]
        expected = ((pixels / 255 - np.array(mean)) / np.array(std)).transpose(2, 0, 1)  # [3, H, W]
        out = to_tensor(image, mean, std)
        assert out.dtype == torch.float32 and out.shape == (3, 9, 13) and out.is_contiguous()
        np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=2e-6)
    assert float(to_tensor(rgb).max()) <= 1.0 and float(to_tensor(rgb).min()) >= 0.0  # defaults: pixel / 255


def test_train_transform_is_seeded_and_augments() -> None:
    image = rgb_image(50, 40)
    transform = ImageTransform(16, MEAN, STD, train=True)
    torch.manual_seed(0)
    first = transform(image)
    torch.manual_seed(0)
    again = transform(image)
    other = transform(image)
    assert first.shape == (3, 16, 16)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, ImageTransform(16, MEAN, STD)(image))


def test_random_resized_crop_box_stays_inside() -> None:
    torch.manual_seed(0)
    for _ in range(50):
        left, top, right, bottom = random_resized_crop_box(30, 10)
        assert 0 <= left < right <= 30 and 0 <= top < bottom <= 10


def test_transform_and_dataset_pickle(tmp_path: Path) -> None:
    dataset = PairDataset([Pair("x", "c", "x")], ImageTransform(8, MEAN, STD, train=True))
    assert len(pickle.loads(pickle.dumps(dataset))) == 1


def test_loader_with_worker_processes(tmp_path: Path) -> None:
    for i in range(6):
        rgb_image(seed=i).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"broken")
    pairs = [Pair(str(tmp_path / f"{i}.png"), f"caption {i}", str(i)) for i in range(6)]
    pairs.insert(3, Pair(str(tmp_path / "bad.png"), "bad", "bad"))
    dataset = PairDataset(pairs, ImageTransform(8, MEAN, STD, train=True))
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_pairs)
    batches = list(loader)
    assert sum(b["skipped"] for b in batches) == 1
    assert sorted(i for b in batches for i in b["image_ids"]) == [str(i) for i in range(6)]
