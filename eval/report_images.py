"""Item thumbnails for the report gallery: small PNGs, made once per item, bad images skipped and counted."""
from __future__ import annotations

import base64
import io
from pathlib import Path

from mmrec.data.images import ImagePolicy, safe_join


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """`data:` URI embedding `data`, so the HTML page needs no file beside it."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class Thumbnails:
    """item image (path relative to the dataset dir) -> PNG bytes at most `size` pixels on the long side.

    Unreadable images (missing, corrupt, outside the dataset dir) give None and are counted in `policy.counts()`,
    so one bad file never stops a report.
    """

    def __init__(self, dataset_root: Path, size: int = 96):
        self.root = Path(dataset_root)
        self.size = size
        self.policy = ImagePolicy("skip")
        self._cache: dict[str, bytes | None] = {}

    def get(self, rel: str | None) -> bytes | None:
        if not rel or not isinstance(rel, str):
            return None
        if rel not in self._cache:
            self._cache[rel] = self._make(rel)
        return self._cache[rel]

    def _make(self, rel: str) -> bytes | None:
        path = self.policy.apply(safe_join, self.root, rel)
        img = self.policy.load(path) if path is not None else None
        if img is None:
            return None
        img.thumbnail((self.size, self.size))
        buf = io.BytesIO()
        img.save(buf, format="PNG", optimize=True)
        return buf.getvalue()
