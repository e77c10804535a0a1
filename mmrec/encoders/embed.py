"""Embed many inputs through the cache: each distinct input is encoded once, ever, per encoder."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from mmrec.data.images import ImageError
from mmrec.encoders.cache import EmbeddingCache
from mmrec.encoders.image import ImageEncoder
from mmrec.encoders.text import TextEncoder
from mmrec.io import sha256_file, sha256_text


def embed_texts(encoder: TextEncoder, texts: Sequence[str], cache_root: str | Path,
                desc: str = "embed texts") -> tuple[np.ndarray, EmbeddingCache]:
    """[len(texts), dim] unit vectors keyed by the text's sha256; returns the cache too (hit/miss counts)."""
    cache = EmbeddingCache(cache_root, encoder.identity, encoder.dim)
    keys = [sha256_text(t) for t in texts]
    vectors = cache.get_or_compute(keys, lambda idx: encoder.encode([texts[i] for i in idx], desc=desc))
    return vectors, cache


def _file_hash(path: Path) -> str:
    if not path.is_file():
        raise ImageError(path, "missing", "image file not found")
    return sha256_file(path)


def embed_images(encoder: ImageEncoder, paths: Sequence[Path], cache_root: str | Path,
                 sha256: Sequence[str | None] | None = None,
                 desc: str = "embed images") -> tuple[np.ndarray, EmbeddingCache]:
    """[len(paths), dim] unit vectors keyed by the image file's sha256 (taken from `sha256` where the dataset
    already recorded it, hashed from the file otherwise)."""
    cache = EmbeddingCache(cache_root, encoder.identity, encoder.dim)
    keys = [h if h else _file_hash(Path(p)) for p, h in zip(paths, sha256 or [None] * len(paths))]
    vectors = cache.get_or_compute(keys, lambda idx: encoder.encode([paths[i] for i in idx], desc=desc))
    return vectors, cache
