"""What the stage packages register with the library through their package metadata (`pyproject.toml`'s
entry points): the `mmrec.commands` group (read by `mmrec.commands`) and the `mmrec.hooks` group, named functions
the library calls: `prepare_dataset` (the `prep` stage of `mmrec run`) and `check_data_options` (`data.options`
checked against its source when a config is validated)."""
from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Callable

from mmrec.errors import MmrecError

NOT_INSTALLED = ("the stage commands and hooks register through mmrec's package metadata, which is missing: install "
                 "the project (`pip install -e .` from the repository root)")


@cache
def registered(group: str) -> dict[str, str]:
    """Entry point name -> `module:attribute` (or module) of one group."""
    return {ep.name: ep.value for ep in entry_points(group=group)}


def hook(name: str) -> Callable[..., Any]:
    """A function a stage package registered under `mmrec.hooks` (e.g. `prepare_dataset`)."""
    spec = registered("mmrec.hooks").get(name)
    if spec is None:
        raise MmrecError(f"no '{name}' hook is registered; {NOT_INSTALLED}")
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)
