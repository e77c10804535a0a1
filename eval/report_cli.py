"""Markdown and self-contained HTML report of an experiment: results across models and seeds with the protocol
manifest, metric@K / score-distribution / training plots, and a gallery of users with their history, preferences
and ranked candidates.

  mmrec report CONFIG.yaml [key.path=value ...]     # the experiment of a config (report.* keys set the content)
  mmrec report --dir runs/exp [report.gallery_users=4 ...]   # any experiment directory, default settings
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mmrec.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="experiment YAML (optional with --dir)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="override config values, e.g. report.gallery_users=4 report.stage=valid")
    parser.add_argument("--dir", type=Path, help="experiment directory to report on (instead of, or overriding, "
                        "the config's experiment.dir)")


def _experiment(args: argparse.Namespace):
    from mmrec.config import apply_overrides
    from mmrec.experiment import ExperimentConfig

    overrides = list(args.overrides)
    config = args.config
    if config is not None and "=" in config and not Path(config).is_file():
        overrides.insert(0, config)  # `mmrec report --dir D key=value`: the first override landed in `config`
        config = None
    if config is None and args.dir is None:
        raise ConfigError("give an experiment config (mmrec report CONFIG.yaml) "
                          "or a directory (mmrec report --dir DIR)")
    if args.dir is not None:
        overrides.append(f"experiment.dir={args.dir}")
    if config is None:
        return ExperimentConfig.from_mapping(apply_overrides({}, overrides, where="command line"),
                                             source="command line")
    return ExperimentConfig.load(config, overrides)


def main(args: argparse.Namespace) -> int:
    from eval.report import gather, write_report
    from mmrec.errors import DataError

    cfg = _experiment(args)
    paths = cfg.paths
    if not paths.root.is_dir():
        raise DataError(f"{paths.root}: experiment directory not found (check experiment.dir or --dir)")
    opts = cfg.section("report")
    split = cfg.section("split").dir_name
    split = split if paths.split(split).is_dir() else None  # else: the one the manifests name, or the only one
    report = gather(paths, opts, split=split, seed=cfg.seed, title=f"{cfg.experiment.name}: report")
    for path in write_report(report, paths, list(opts.formats)):
        print(f"wrote {path}")
    for note in report.notes:
        print(f"note: {note}")
    return 0
