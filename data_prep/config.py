"""Run the `data` section of an experiment (`mmrec.data.prep_config.PrepConfig`) as `mmrec prep` would.

`options` uses the source's command-line flag names without dashes (`min_user: 5` is `--min-user 5`), so a
config and a command line can never disagree on what an option means.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from mmrec.data.prep_config import PrepConfig
from mmrec.errors import ConfigError


def options_to_argv(options: dict[str, Any]) -> list[str]:
    """{'min_user': 5, 'require_image': True, 'tags': ['a','b']}
    -> ['--min-user', '5', '--require-image', '--tags', 'a', 'b']."""
    argv: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def prep_from_config(cfg: PrepConfig, out: Path, where: str = "config") -> dict[str, Any]:
    """Run the configured source into `out` exactly as `mmrec prep <source> ... --out out` would."""
    import importlib

    from data_prep.cli import SOURCES

    if cfg.source not in SOURCES:
        raise ConfigError(f"{where}: key 'data.source' must be one of {', '.join(SOURCES)}, got {cfg.source!r}")
    module = importlib.import_module(SOURCES[cfg.source][0])
    parser = argparse.ArgumentParser(prog=f"mmrec prep {cfg.source}", exit_on_error=False)
    module.configure(parser)
    argv = options_to_argv(cfg.options) + ["--out", str(out)]
    try:
        args = parser.parse_args(argv)
    except (argparse.ArgumentError, SystemExit) as e:
        raise ConfigError(f"{where}: 'data.options' are not valid for source {cfg.source!r}: {e} "
                          f"(see `mmrec prep {cfg.source} --help`)") from None
    return module.run(args)
