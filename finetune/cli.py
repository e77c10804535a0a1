"""Train the models of an experiment: `mmrec finetune CONFIG [key=value ...] [--model NAME ...] [--seeds 0 1 2]`.

Each model kind has one readable recipe module here with `train(cfg, name, out_dir, resume) -> Path`.
The same recipes run under `accelerate launch -m finetune CONFIG ...` on several GPUs or nodes.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from mmrec.commands import add_config_arguments, load_experiment
from mmrec.experiment import ExperimentConfig, runs_of
from mmrec.progress import get_logger

# model kind -> recipe module
RECIPES: dict[str, str] = {
    "pop": "finetune.pop",
    "gru4rec": "finetune.sequential",
    "sasrec": "finetune.sequential",
    "ctr": "finetune.ctr",
    "vlm": "finetune.vlm_lora",
}


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", action="append", default=None,
                        help="train only this model (repeatable); default: every model of the config")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="train one run per seed (<model>@seed<k>); default: experiment.seeds, else one run")
    parser.add_argument("--no-resume", action="store_true",
                        help="start from scratch even if a checkpoint of an interrupted run exists")


def train_model(cfg: ExperimentConfig, name: str, out_dir: Path, resume: bool = True) -> Path:
    """Run the recipe of model `name` into `out_dir`; returns the checkpoint directory."""
    kind = cfg.model(name).kind
    recipe = importlib.import_module(RECIPES[kind])
    return recipe.train(cfg, name, out_dir=Path(out_dir), resume=resume)


def main(args: argparse.Namespace) -> int:
    cfg = load_experiment(args)
    log = get_logger("finetune")
    names = args.model or cfg.model_names()
    for name in names:
        cfg.model(name)  # validate before any work starts
    paths = cfg.paths
    for name, run, run_cfg in runs_of(cfg, names, args.seeds or cfg.experiment.seeds):
        out = train_model(run_cfg, name, paths.checkpoint(run), resume=not args.no_resume)
        log.info(f"{run}: checkpoint at {out}")
    return 0
