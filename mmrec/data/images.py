"""Opening item images safely: one place that every stage (prep, VLM summaries, CLIP encoder) goes through.

- `load_image(path)` -> an RGB `PIL.Image`: EXIF orientation applied; palette, RGBA/LA (composited on white),
  CMYK, 16-bit and float grayscale converted; images larger than `max_pixels` refused *before* decoding
  (decompression bombs); missing, zero-byte, corrupt and truncated files raise `ImageError` naming the file.
- `inspect_image(path)` -> `ImageInfo(sha256, width, height)` of the fully decoded image (so a truncated file
  is caught at import time, not during a GPU job hours later).
- `safe_join(root, rel)` -> the absolute path of `rel` under `root`, rejecting paths that escape it.
- `ImagePolicy("skip"|"fail")` decides what a bad image does: `fail` raises, `skip` logs the file and counts it.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, NamedTuple, TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmrec.errors import ConfigError, DataError
from mmrec.io import sha256_file
from mmrec.progress import get_logger

log = get_logger("mmrec.images")

# Pillow's own default (about 89 M pixels, a 9459 x 9459 image); larger images are refused, never decoded.
DEFAULT_MAX_PIXELS = 89_478_485
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")

T = TypeVar("T")


class ImageError(DataError):
    """A bad image file. `kind` is one of: missing, empty, corrupt, truncated, too_large, outside_root."""

    def __init__(self, path: str | Path, kind: str, detail: str):
        self.path = str(path)
        self.kind = kind
        self.detail = detail
        super().__init__(f"{path}: {detail}")


class ImageInfo(NamedTuple):
    sha256: str
    width: int
    height: int


def safe_join(root: str | Path, rel: str | Path) -> Path:
    """`root / rel`, refusing absolute paths and paths that leave `root` (by `..` or a symlink pointing out)."""
    rel_s = str(rel)
    if not rel_s or os.path.isabs(rel_s) or rel_s.startswith(("/", "\\")):
        raise ImageError(rel_s, "outside_root", f"image path must be relative to {root}, got an absolute or empty path")
    root_r = Path(root).resolve()
    full = (root_r / rel_s).resolve()
    if full != root_r and root_r not in full.parents:
        raise ImageError(rel_s, "outside_root", f"image path points outside its image root {root}; refusing it")
    return full


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, with transparency composited on white (black would invent dark content)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        elif mode.startswith("I;16") or (arr.size and np.nanmax(arr) > 255):
            arr = arr / 257.0  # 16-bit range 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8), mode="L")
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and normalise an image to RGB; raise `ImageError` (a `DataError`) on a bad file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(path, "missing", "image file not found") from None
    except OSError as e:
        raise ImageError(path, "missing", f"image file cannot be read ({e.strerror})") from None
    if not path.is_file():
        raise ImageError(path, "missing", "image path is not a file")
    if size == 0:
        raise ImageError(path, "empty", "image file is empty (0 bytes)")
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels  # a larger limit asked for explicitly: Pillow's guard must not refuse first
    with warnings.catch_warnings():
        # We enforce the pixel limit ourselves below, before decoding, with a clear message.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageError(path, "too_large", f"image is {w}x{h} = {w * h} pixels, over the limit of "
                                     f"{max_pixels} (possible decompression bomb); refusing to decode it")
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                img.load()
                try:
                    oriented = ImageOps.exif_transpose(img)
                except Exception as e:  # broken EXIF block: keep the pixels, say so
                    log.warning("%s: ignoring unreadable EXIF orientation (%s)", path, e)
                    oriented = img
                rgb = _to_rgb(oriented)
                if rgb is img:
                    rgb = img.copy()  # detach from the file handle closed by `with`
                return rgb
        except ImageError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageError(path, "too_large", f"refused as a possible decompression bomb ({e})") from None
        except UnidentifiedImageError:
            raise ImageError(path, "corrupt", "not a readable image (unknown or corrupt format)") from None
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            kind = "truncated" if "truncat" in str(e).lower() else "corrupt"
            raise ImageError(path, kind, f"image cannot be decoded ({kind}: {e})") from None


def inspect_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageInfo:
    """Content hash and (EXIF-oriented) size of a fully decodable image; `ImageError` otherwise."""
    img = load_image(path, max_pixels=max_pixels)
    return ImageInfo(sha256_file(path), int(img.width), int(img.height))


class ImagePolicy:
    """What a bad image does: `fail` raises its `ImageError`; `skip` logs the file, counts it by kind, returns None."""

    MODES = ("skip", "fail")

    def __init__(self, mode: str = "skip", max_pixels: int = DEFAULT_MAX_PIXELS):
        if mode not in self.MODES:
            raise ConfigError(f"image policy must be one of {', '.join(self.MODES)}, got {mode!r}")
        self.mode = mode
        self.max_pixels = max_pixels
        self.skipped: dict[str, str] = {}  # path -> kind, in the order met
        self._counts: Counter[str] = Counter()

    def apply(self, func: Callable[..., T], path: str | Path, *args: object) -> T | None:
        """`func(path, *args)`, with an `ImageError` handled by the policy."""
        try:
            return func(path, *args)
        except ImageError as e:
            if self.mode == "fail":
                raise ImageError(e.path, e.kind, f"{e.detail} (use --image-policy skip to drop bad images "
                                 "and count them instead)") from None
            self.skipped[e.path] = e.kind
            self._counts[e.kind] += 1
            log.warning("skipping image %s", e)
            return None

    def inspect(self, path: str | Path) -> ImageInfo | None:
        return self.apply(inspect_image, path, self.max_pixels)

    def load(self, path: str | Path) -> Image.Image | None:
        return self.apply(load_image, path, self.max_pixels)

    def counts(self) -> dict[str, int]:
        """Skipped images by kind (missing, empty, corrupt, truncated, too_large, outside_root)."""
        return dict(sorted(self._counts.items()))
