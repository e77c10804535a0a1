"""Print what every stage of an experiment will need before anything loads a weight, and refuse a config whose
`max_length` cannot hold its longest image prompt.

    mmrec plan CONFIG.yaml [key.path=value ...] [--gpu h100|h200|a100|l40s|4090] [--mfu 0.4] [--users N]

Per stage: prompt tokens (max and median, images included), the configured length limit and what it needs, GPU
memory of one process (weights, LoRA state, activations, logits, key/value caches), host memory of the caches, and
an estimate of the GPU time of training, scoring and the distillation signals (FLOPs over an assumed GPU and
utilisation; `--users` stands for the dataset's user count where the dataset is not prepared).
Works offline from the checkpoints' config.json and processor files (docs/plan.md says how it estimates).
"""
from __future__ import annotations

import argparse

from mmrec.commands import add_config_arguments, load_experiment


def configure(parser: argparse.ArgumentParser) -> None:
    from mmrec.plan_time import DEFAULT_GPU, DEFAULT_MFU, GPUS

    add_config_arguments(parser)
    parser.add_argument("--gpu", choices=sorted(GPUS), default=DEFAULT_GPU,
                        help=f"GPU type the time estimate assumes (default {DEFAULT_GPU}; dense bf16 peak)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help=f"assumed share of the GPU's peak FLOP/s the stages reach (default {DEFAULT_MFU})")
    parser.add_argument("--users", type=int, default=None,
                        help="users of the dataset, for the time estimate where the dataset is not prepared "
                             "(default: counted from the dataset)")


def main(args: argparse.Namespace) -> int:
    from mmrec.plan import make_plan
    from mmrec.plan_time import Assumptions

    assumed = Assumptions(args.gpu, args.mfu, args.users)
    cfg = load_experiment(args)
    cfg.validate_all()
    plan = make_plan(cfg, assumed=assumed)
    print(plan.text(), flush=True)
    plan.check()
    return 0
