"""Run every stage of an experiment config in order, skipping stages whose outputs are up to date.

    mmrec run CONFIG.yaml [key.path=value ...] [--dry-run] [--from STAGE] [--only STAGE ...]

Stages: prep, split, summarize-items, summarize-users, finetune:<model>, score:<model>, eval, report.
A changed config section or input re-runs that stage and what depends on it, nothing else; an interrupted
stage resumes. `--only finetune` or `--from score` accept a stage kind for all models. Before any stage runs,
`mmrec plan`'s budget is printed and a config whose max_length cannot hold its longest image prompt is refused
(a dry run says it would refuse; `--no-plan` skips the plan).
"""
from __future__ import annotations

import argparse

from mmrec.commands import add_config_arguments, load_experiment


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="print what would run and why; run nothing")
    parser.add_argument("--from", dest="start", metavar="STAGE", help="re-run this stage and every one after it")
    parser.add_argument("--only", action="append", metavar="STAGE", help="run only this stage (repeatable)")
    parser.add_argument("--no-plan", dest="plan", action="store_false",
                        help="skip `mmrec plan`'s check that every max_length fits its longest image prompt")


def main(args: argparse.Namespace) -> int:
    from mmrec.pipeline import Pipeline

    cfg = load_experiment(args)
    cfg.validate_all()
    pipeline = Pipeline(cfg, args.config, args.overrides)
    pipeline.run(only=args.only, start=args.start, dry_run=args.dry_run, check_plan=args.plan)
    return 0
