"""The torch device a config's `device: auto | cpu | cuda` setting means on this machine."""
from __future__ import annotations

import torch

from mmrec.errors import ConfigError


def resolve_device(device: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is a config error, not a crash."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device; use device: auto or cpu")
    return torch.device(device)
