"""mmrec.data.images: every Pillow mode to RGB, EXIF orientation, bombs, bad files, path escapes, the policy."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrec.data.images import ImageError, ImagePolicy, inspect_image, load_image, safe_join
from mmrec.errors import ConfigError, DataError
from mmrec.io import sha256_file


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header claims side x side pixels (decoding it would need ~10 GB)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    data += _png_chunk(b"IEND", b"")
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("mode,color", [("L", 128), ("1", 1), ("CMYK", (0, 255, 255, 0)), ("RGB", (10, 20, 30))])
def test_modes_become_rgb(tmp_path, mode, color):
    path = tmp_path / f"x_{mode}.{'tif' if mode == 'CMYK' else 'png'}"
    Image.new(mode, (7, 5), color).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (7, 5)
    if mode == "CMYK":  # full magenta + yellow ink = red
        assert img.getpixel((0, 0)) == (255, 0, 0)
    if mode == "L":
        assert img.getpixel((3, 3)) == (128, 128, 128)


def test_palette_with_transparency_composited_on_white(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # transparent black -> white, not black
    assert out.getpixel((1, 1)) == (255, 0, 0)


def test_rgba_alpha_composited(tmp_path):
    arr = np.zeros((2, 2, 4), np.uint8)
    arr[0, 0] = (0, 0, 255, 255)    # opaque blue
    arr[0, 1] = (0, 0, 0, 0)        # fully transparent
    arr[1, 0] = (0, 0, 0, 128)      # half-transparent black
    path = tmp_path / "a.png"
    Image.fromarray(arr, "RGBA").save(path)
    out = load_image(path)
    assert out.getpixel((0, 0)) == (0, 0, 255)
    assert out.getpixel((1, 0)) == (255, 255, 255)
    assert 120 <= out.getpixel((0, 1))[0] <= 130


def test_16bit_grayscale_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_float_image_scaled(tmp_path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F").save(path)
    out = load_image(path)
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 127, 255]


def test_exif_orientation_applied(tmp_path):
    img = Image.new("RGB", (6, 3), (0, 255, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    out = load_image(path)
    assert out.size == (3, 6)
    info = inspect_image(path)
    assert (info.width, info.height) == (3, 6)
    assert info.sha256 == sha256_file(path)


def test_bomb_refused_before_decoding(tmp_path):
    path = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ImageError, match="decompression bomb") as e:
        load_image(path)
    assert e.value.kind == "too_large" and str(path) in str(e.value)
    small = tmp_path / "s.png"
    Image.new("RGB", (40, 40)).save(small)
    with pytest.raises(ImageError, match="over the limit of 1000"):
        load_image(small, max_pixels=1000)


def test_bad_files_raise_clear_data_errors(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good, quality=95)
    data = good.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"this is not an image at all")
    cases = {"trunc.jpg": "truncated", "zero.jpg": "empty", "junk.jpg": "corrupt", "nope.jpg": "missing"}
    for name, kind in cases.items():
        with pytest.raises(DataError) as e:
            load_image(tmp_path / name)
        assert e.value.kind == kind, name
        assert str(tmp_path / name) in str(e.value)
    assert load_image(good).size == (64, 64)


def test_safe_join(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"x")
    root = tmp_path / "images"
    assert safe_join(root, "a.png") == (root / "a.png").resolve()
    assert safe_join(root, "sub/../a.png") == (root / "a.png").resolve()
    for bad in ["../secret.png", "/etc/passwd", "sub/../../x.png", ""]:
        with pytest.raises(ImageError, match="absolute|outside"):
            safe_join(root, bad)
    (tmp_path / "outside.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(ImageError, match="outside"):
        safe_join(root, "link.png")


def test_policy_skip_counts_and_logs(tmp_path, caplog):
    good = tmp_path / "good.png"
    Image.new("RGB", (3, 2)).save(good)
    (tmp_path / "zero.png").write_bytes(b"")
    policy = ImagePolicy("skip")
    assert policy.inspect(good).width == 3
    assert policy.inspect(tmp_path / "zero.png") is None
    assert policy.inspect(tmp_path / "gone.png") is None
    assert policy.load(tmp_path / "gone2.png") is None
    assert policy.counts() == {"empty": 1, "missing": 2}
    assert str(tmp_path / "zero.png") in policy.skipped


def test_policy_fail_raises_with_hint(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"zero\.png: image file is empty .*--image-policy skip"):
        ImagePolicy("fail").inspect(tmp_path / "zero.png")
    with pytest.raises(ConfigError, match="skip, fail"):
        ImagePolicy("ignore")
