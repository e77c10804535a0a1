"""Run the `data` section of an experiment (`mmrec.data.prep_config.PrepConfig`) as `mmrec prep` would.

`data.options` is loaded into the source's options dataclass (the one that makes `mmrec prep <source>`'s flags),
so its keys are the flag names without dashes (`min_user: 5` is `--min-user 5`) and a config and a command line
can never disagree on what an option means.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from data_prep.cli import SOURCES, source
from mmrec.config import from_dict
from mmrec.data.prep_config import PrepConfig
from mmrec.errors import ConfigError


def load_options(cfg: PrepConfig, where: str = "config") -> Any:
    """`cfg.options` as the options dataclass of `cfg.source`; an unknown key or a wrong type is a ConfigError
    naming `data.options.<key>`."""
    if cfg.source not in SOURCES:
        raise ConfigError(f"{where}: key 'data.source' must be one of {', '.join(SOURCES)}, got {cfg.source!r}")
    _, options_cls = source(cfg.source)
    try:
        return from_dict(options_cls, cfg.options, where=where, prefix="data.options")
    except ConfigError as e:
        raise ConfigError(f"{e} (see `mmrec prep {cfg.source} --help`)") from None


def prep_from_config(cfg: PrepConfig, out: Path, where: str = "config") -> dict[str, Any]:
    """Run the configured source into `out` exactly as `mmrec prep <source> ... --out out` would."""
    options = load_options(cfg, where)
    module, _ = source(cfg.source)
    return module.run(options, Path(out))
