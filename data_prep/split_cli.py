"""Split a canonical dataset and write its persisted candidate sets.

    mmrec split DATASET_DIR --protocol loo --negatives 100 --seed 7 [--out DIR]

Writes examples.parquet, candidates.parquet, train_negatives.parquet and split.json (docs/artifacts.md) to
DIR (default DATASET_DIR/splits/<name or protocol>), then runs the leakage check. Re-running with the same
options keeps the existing split; different options need --force (candidates are written once).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmrec.config import from_dict
from mmrec.data.splits import SplitConfig, make_split

_FIELDS = {  # SplitConfig field -> (type, help); an option left out keeps the dataclass default
    "protocol": (str, "loo (leave-one-out), temporal (global cut times) or paper (MLLM-MSR)"),
    "name": (str, "split name, the directory under DATASET/splits/ (default: the protocol)"),
    "seed": (int, "seed of every draw"),
    "negatives": (int, "test negatives per evaluated example"),
    "valid_negatives": (int, "valid negatives (default: --negatives, or 1 for paper)"),
    "sampling": (str, "negatives drawn uniformly or by popularity"),
    "popularity_alpha": (float, "popularity sampling weight = count ** alpha"),
    "train_negatives": (int, "training negatives per train example"),
    "max_history": (int, "keep only the last N history items (default: all)"),
    "valid_quantile": (float, "temporal: valid cut time as a quantile of all timestamps"),
    "test_quantile": (float, "temporal: test cut time as a quantile of all timestamps"),
    "valid_time": (int, "temporal: absolute valid cut timestamp"),
    "test_time": (int, "temporal: absolute test cut timestamp"),
    "top_k": (int, "paper: most popular items kept per user (6 MicroLens, 11 Amazon)"),
    "sampling_data": (str, "what the samplers know: train (training interactions) or all (MLLM-MSR, RecBole popN)"),
    "unsorted": (str, "interactions not in time order per user: sort them stably (counted) or stop with an error"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="canonical dataset directory (from `mmrec prep`)")
    parser.add_argument("--out", type=Path, help="split directory (default DATASET/splits/<name or protocol>)")
    parser.add_argument("--force", action="store_true", help="replace an existing split made with other options")
    choices = {"protocol": ["loo", "temporal", "paper"], "sampling": ["uniform", "popularity"],
               "unsorted": ["sort", "error"], "sampling_data": ["train", "all"]}
    for name, (typ, helptext) in _FIELDS.items():
        default = SplitConfig.__dataclass_fields__[name].default
        parser.add_argument("--" + name.replace("_", "-"), type=typ, default=None, choices=choices.get(name),
                            help=helptext if default is None else f"{helptext} (default {default})")
    parser.add_argument("--user-fractions", type=float, nargs=3, metavar=("TRAIN", "VALID", "TEST"),
                        help="paper protocol: user fractions (default 0.8 0.1 0.1)")


def main(args: argparse.Namespace) -> int:
    values = {k: getattr(args, k) for k in _FIELDS if getattr(args, k) is not None}
    if args.user_fractions is not None:
        values["user_fractions"] = list(args.user_fractions)
    cfg = from_dict(SplitConfig, values, where="command line")
    out = args.out or args.dataset / "splits" / cfg.dir_name
    split = make_split(args.dataset, cfg, out, overwrite=args.force)
    counts = split.info["counts"]
    print(json.dumps({"split": str(split.root), "examples": counts["examples"], "candidates": counts["candidates"],
                      "candidates_sha256": split.candidates_sha256, "leakage_check": split.info["leakage_check"]},
                     indent=2))
    return 0
