"""The `data` section of an experiment: which `mmrec prep` source to run and with which options, or an already
prepared dataset. The `data_prep/` stage package runs it: `options` is loaded into the source's options dataclass
(the one that makes its flags), so its keys are the flag names without dashes (`min_user: 5` is `--min-user 5`).
It stays a plain mapping here, because its keys depend on `source` and the library does not import the importers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class PrepConfig:
    source: str = "synthetic"
    options: dict[str, Any] = field(default_factory=dict)
    # An already prepared canonical dataset to use instead of preparing one (then `source`/`options` are ignored).
    path: Path | None = None
