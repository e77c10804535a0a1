"""Logging and progress bars with one look across the toolkit."""
from __future__ import annotations

import logging
import os
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_CONFIGURED = False


def get_logger(name: str) -> logging.Logger:
    """A logger under the `mmrec` namespace that prints `[mmrec] message` to stderr."""
    global _CONFIGURED
    if not _CONFIGURED:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[mmrec] %(message)s"))
        root = logging.getLogger("mmrec")
        root.addHandler(handler)
        root.setLevel(os.environ.get("MMREC_LOG_LEVEL", "INFO"))
        root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(name if name.startswith("mmrec") else f"mmrec.{name}")


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it") -> Iterator[T] | tqdm:
    """A tqdm bar (rate and ETA) on stderr; silenced with MMREC_NO_PROGRESS=1 (tests, CI logs)."""
    disable = os.environ.get("MMREC_NO_PROGRESS", "") not in ("", "0")
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, file=sys.stderr)
