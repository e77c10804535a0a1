"""The `data` section of an experiment: which `mmrec prep` source to run and with which options, or an already
prepared dataset. The `data_prep/` stage package runs it; `options` uses the source's command-line flag names
without dashes (`min_user: 5` is `--min-user 5`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class PrepConfig:
    source: str = "synthetic"
    options: dict[str, Any] = field(default_factory=dict)
    # An already prepared canonical dataset to use instead of preparing one (then `source`/`options` are ignored).
    path: str | None = None
