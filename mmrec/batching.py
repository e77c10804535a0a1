"""Cutting `n` rows into consecutive batches, for training loops and scorers that index their own arrays."""
from __future__ import annotations

from typing import Iterator


def batches(n: int, size: int) -> Iterator[slice]:
    """Slices [0, size), [size, 2 * size), ... covering rows 0..n-1; the last one may be shorter."""
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))
