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

from mmrec.config import add_options, from_dict, options_from_args
from mmrec.data.splits import SplitConfig, make_split


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="canonical dataset directory (from `mmrec prep`)")
    parser.add_argument("--out", type=Path, help="split directory (default DATASET/splits/<name or protocol>)")
    parser.add_argument("--force", action="store_true", help="replace an existing split made with other options")
    add_options(parser, SplitConfig)  # one --option per field of the `split` section, with its help


def main(args: argparse.Namespace) -> int:
    cfg = from_dict(SplitConfig, options_from_args(args, SplitConfig), where="command line")
    out = args.out or args.dataset / "splits" / cfg.dir_name
    split = make_split(args.dataset, cfg, out, overwrite=args.force)
    counts = split.info["counts"]
    print(json.dumps({"split": str(split.root), "examples": counts["examples"], "candidates": counts["candidates"],
                      "candidates_sha256": split.candidates_sha256, "leakage_check": split.info["leakage_check"]},
                     indent=2))
    return 0
