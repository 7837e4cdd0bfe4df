from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.data import ImageDecodeError, load_image, tar_ref

from support.images import jpeg_bytes, rgb_image


def test_rgb_file_round_trip(tmp_path: Path) -> None:
    rgb_image().save(tmp_path / "x.png")
    image = load_image(tmp_path / "x.png")
    assert image.mode == "RGB" and image.size == (24, 16)
    assert np.array_equal(np.asarray(image), np.asarray(rgb_image()))


def test_bytes_input() -> None:
    image = load_image(jpeg_bytes(rgb_image()))
    assert image.mode == "RGB" and image.size == (24, 16)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    rgb_image(30, 10).save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "rot.jpg").size == (10, 30)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    image.putpixel((0, 0), (255, 0, 0, 255))
    image.save(tmp_path / "t.png")
    loaded = load_image(tmp_path / "t.png")
    assert loaded.mode == "RGB"
    assert loaded.getpixel((1, 1)) == (255, 255, 255)
    assert loaded.getpixel((0, 0)) == (255, 0, 0)


def test_la_is_composited_on_white(tmp_path: Path) -> None:
    Image.new("LA", (3, 3), (0, 0)).save(tmp_path / "la.png")
    assert load_image(tmp_path / "la.png").getpixel((1, 1)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    image.save(tmp_path / "p.gif", transparency=0)
    for name in ("p.png", "p.gif"):
        assert load_image(tmp_path / name).getpixel((2, 2)) == (255, 255, 255)


def test_palette_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    image.save(tmp_path / "p.png")
    assert load_image(tmp_path / "p.png").getpixel((0, 0)) == (0, 255, 0)


@pytest.mark.parametrize("mode", ["L", "1", "I;16", "CMYK"])
def test_other_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    Image.new(mode, (5, 5)).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (5, 5)


def test_grayscale_values_preserved(tmp_path: Path) -> None:
    Image.new("L", (2, 2), 77).save(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png").getpixel((0, 0)) == (77, 77, 77)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="cannot read image"):
        load_image(tmp_path / "nope.jpg")


def test_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"this is not an image")
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        load_image(tmp_path / "bad.jpg")


def test_truncated_file(tmp_path: Path) -> None:
    data = jpeg_bytes(rgb_image(64, 64))
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError):
        load_image(tmp_path / "cut.jpg")


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    Image.new("L", (1000, 1000)).save(tmp_path / "big.png")
    with pytest.raises(ImageDecodeError, match="max_pixels"):
        load_image(tmp_path / "big.png", max_pixels=10_000)
    assert load_image(tmp_path / "big.png", max_pixels=None).size == (1000, 1000)


def test_bomb_error_is_a_value_error(tmp_path: Path) -> None:
    assert issubclass(ImageDecodeError, ValueError)


def test_tar_reference(tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    data = jpeg_bytes(rgb_image())
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("k1.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    assert load_image(tar_ref(shard, "k1.jpg")).size == (24, 16)
    with pytest.raises(ImageDecodeError):
        load_image(tar_ref(shard, "missing.jpg"))
    with pytest.raises(ImageDecodeError, match="malformed"):
        load_image("tar://nohash")


def test_tar_members_read_through_an_index_and_from_compressed_shards(tmp_path: Path) -> None:
    pictures = {f"{i:04d}.jpg": jpeg_bytes(rgb_image(seed=i)) for i in range(4)}
    for name, mode in (("s.tar", "w"), ("s.tar.gz", "w:gz")):
        with tarfile.open(tmp_path / name, mode) as tar:
            for member, data in pictures.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for member, data in pictures.items():
            expected = np.asarray(load_image(data))
            assert np.array_equal(np.asarray(load_image(tar_ref(tmp_path / name, member))), expected)
    raw = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "cut.tar").write_bytes(raw[:2000])  # the second image's header survives, its data does not
    with pytest.raises(ImageDecodeError):
        load_image(tar_ref(tmp_path / "cut.tar", "0001.jpg"))
    assert load_image(tar_ref(tmp_path / "cut.tar", "0000.jpg")).size == (24, 16)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow reports the corrupt metadata it skips
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
def test_mutated_files_decode_or_raise_image_decode_error(fmt: str) -> None:
    buffer = io.BytesIO()
    rgb_image(12, 9).save(buffer, format=fmt)
    original = buffer.getvalue()
    rng = np.random.default_rng(0)
    for _ in range(60):
        data = bytearray(original)
        for position in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[position] = int(rng.integers(0, 256))
        cut = int(rng.integers(1, len(data) + 1))
        try:
            image = load_image(bytes(data[:cut]), max_pixels=1_000_000)
        except ImageDecodeError:
            continue
        assert image.mode == "RGB"


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n%%EOF\n"


def test_formats_outside_the_raster_list_never_reach_a_decoder(monkeypatch, tmp_path: Path) -> None:
    from PIL import EpsImagePlugin

    opened = []
    real_open = EpsImagePlugin.EpsImageFile._open

    def spy(self):
        opened.append(True)
        return real_open(self)

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    (tmp_path / "x.eps").write_bytes(EPS)
    for ref in (EPS, tmp_path / "x.eps"):
        with pytest.raises(ImageDecodeError, match="JPEG"):  # the message lists the accepted formats
            load_image(ref)
    assert not opened  # Pillow's EPS plugin (which runs Ghostscript) was never tried
    # a raster format Pillow reads but the list leaves out is refused the same way
    buf = io.BytesIO()
    rgb_image().save(buf, format="PCX")
    with pytest.raises(ImageDecodeError, match="format"):
        load_image(buf.getvalue())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_accepted_raster_formats_decode(fmt: str) -> None:
    buf = io.BytesIO()
    rgb_image().save(buf, format=fmt)
    assert load_image(buf.getvalue()).size == (24, 16)
