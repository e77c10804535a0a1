"""Load an experiment config, validate every section and model, and print the resolved values."""
from __future__ import annotations

import argparse

import yaml

from mmrec.commands import add_config_arguments, load_experiment
from mmrec.config import to_dict


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="print only OK or the error")


def main(args: argparse.Namespace) -> int:
    cfg = load_experiment(args)
    cfg.validate_all()
    if not args.quiet:
        resolved = {name: to_dict(cfg.section(name)) for name in cfg.raw if name != "models"}
        resolved["models"] = {m: to_dict(cfg.model(m)) for m in cfg.model_names()}
        print(yaml.safe_dump(resolved, sort_keys=False).rstrip())
    print(f"OK: {args.config}")
    return 0
