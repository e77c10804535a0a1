"""Print what every stage of an experiment will need before anything loads a weight, and refuse a config whose
`max_length` cannot hold its longest image prompt.

    mmrec plan CONFIG.yaml [key.path=value ...]

Per stage: prompt tokens (max and median, images included), the configured length limit and what it needs, GPU
memory of one process (weights, LoRA state, activations, logits, key/value caches) and host memory of the caches.
Works offline from the checkpoints' config.json and processor files (docs/plan.md says how it estimates).
"""
from __future__ import annotations

import argparse

from mmrec.commands import add_config_arguments, load_experiment


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from mmrec.plan import make_plan

    cfg = load_experiment(args)
    cfg.validate_all()
    plan = make_plan(cfg)
    print(plan.text(), flush=True)
    plan.check()
    return 0
