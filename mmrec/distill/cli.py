"""Teacher signals for distilled students -> <dir>/distill/<teacher run>.<key>.parquet (+ .json sidecar).

    mmrec distill-signals CONFIG.yaml [key.path=value ...] [--model STUDENT ...] [--seeds 0 1 2] [--shard i/n]

For every model with a `distill:` section (or the ones named), its trained teacher scores the configured training
examples' candidates. Scores are cached by content under <dir>/cache/distill/, so an interrupted run resumes; with
`--shard i/n`, n processes split the users and the last one to finish writes the table.
"""
from __future__ import annotations

import argparse

from mmrec.commands import add_config_arguments, load_experiment


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", action="append", default=None,
                        help="this distilled student only (repeatable); default: every model with a distill section")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="the student runs <model>@seed<k> (default: experiment.seeds, else one run)")
    parser.add_argument("--shard", metavar="i/n", help="do part i of n (0-based), or 'auto' from RANK/WORLD_SIZE")


def main(args: argparse.Namespace) -> int:
    from mmrec.distill.signals import build_signals, distill_section
    from mmrec.errors import ConfigError
    from mmrec.experiment import runs_of
    from mmrec.progress import get_logger
    from mmrec.summarize.shard import parse_shard

    log = get_logger("distill-signals")
    cfg = load_experiment(args)
    names = args.model or [n for n in cfg.model_names() if getattr(cfg.model(n), "distill", None) is not None]
    if not names:
        raise ConfigError(f"{cfg.source}: no model has a 'distill' section; nothing to score")
    for name in names:
        distill_section(cfg, name)  # validate before any work starts
    shard = parse_shard(args.shard)
    done: set[str] = set()
    for name, run, run_cfg in runs_of(cfg, names, args.seeds or cfg.experiment.seeds):
        path, stats = build_signals(run_cfg, name, shard)
        if str(path) in done:
            continue
        done.add(str(path))
        speed = f", teacher {stats.candidates_per_s:.1f} candidates/s" if stats.candidates_per_s else ""
        state = "written" if stats.complete else "this shard done, others missing"
        log.info(f"{run}: {path} {state} ({stats.examples} examples, {stats.pairs} teacher forwards{speed})")
    return 0
