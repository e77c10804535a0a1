"""Export a split to other toolkits' formats: `mmrec export recbole SPLIT_DIR --out DIR [--name NAME]`.

RecBole: atomic files (`.inter`, `.item`) plus the split as pre-split benchmark files
(`.train/.valid/.test.inter`) and a ready RecBole config (`NAME.yaml`), written to `DIR/NAME/`.
See docs/evaluation.md for what is and is not comparable with mmrec's own numbers.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mmrec.progress import get_logger

log = get_logger("export")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["recbole"], help="target format")
    parser.add_argument("split", type=Path, help="split directory (from `mmrec split`, e.g. EXP/splits/loo)")
    parser.add_argument("--out", type=Path, required=True, help="RecBole data_path; files go to OUT/NAME/")
    parser.add_argument("--name", default=None,
                        help="RecBole dataset name (default: <dataset dir>_<split dir>, e.g. dataset_loo)")
    parser.add_argument("--max-history", type=int, default=50,
                        help="keep the last N history items per row (RecBole's MAX_ITEM_LIST_LENGTH; default 50)")


def main(args: argparse.Namespace) -> int:
    from eval.recbole_export import export_recbole
    from mmrec.data.splits import load_split

    split = load_split(args.split)
    name = args.name or f"{Path(split.dataset.root).name}_{Path(args.split).name}"
    info = export_recbole(split, args.out, name, args.max_history)
    stages = ", ".join(f"{s} {c['rows']} rows" for s, c in info["stages"].items())
    print(f"RecBole files for dataset '{name}' in {Path(args.out) / name} ({stages}); "
          f"config: {Path(args.out) / name / (name + '.yaml')}")
    return 0
