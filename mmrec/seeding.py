"""Seeds: one global seed per run, and independent named streams derived from it."""
from __future__ import annotations

import random

import numpy as np

from mmrec.io import hash_json


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed derived from `seed` and names, so separate draws (e.g. test vs train negatives) never share
    a stream."""
    return int(hash_json([seed, *keys])[:15], 16)


def rng(seed: int, *keys: object) -> np.random.Generator:
    """A numpy Generator for the named stream `keys` under `seed`."""
    return np.random.default_rng(derive_seed(seed, *keys))


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (if installed); optionally ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency, kept optional for light tools
        return
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if hasattr(torch.backends, "cudnn"):
            torch.backends.cudnn.benchmark = False
