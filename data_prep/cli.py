"""Import a raw dataset into the canonical form (items.parquet, interactions.parquet, stats.json).

    mmrec prep <source> [source options] --out DIR [cleaning options]

Each source lives in its own module of `data_prep` providing `configure(parser)` and `run(args) -> dict`
(the stats written); `mmrec prep <source> --help` lists its options.
"""
from __future__ import annotations

import argparse
import importlib
import json

# source name -> (module, help)
SOURCES: dict[str, tuple[str, str]] = {
    "synthetic": ("data_prep.synthetic", "generate the synthetic multimodal benchmark (known ground truth)"),
    "amazon2023": ("data_prep.amazon2023",
                   "Amazon Reviews 2023: <Category>.jsonl(.gz) + meta_<Category>.jsonl(.gz) + images"),
    "microlens": ("data_prep.microlens", "MicroLens: pairs CSV (user,item,timestamp) + titles CSV + covers folder"),
    "movielens": ("data_prep.movielens", "MovieLens ml-100k / ml-1m / ml-latest(-small) + optional posters folder"),
    "recbole": ("data_prep.recbole", "RecBole atomic files (.inter, .item with name:type headers)"),
    "generic": ("data_prep.generic", "generic CSV/JSONL interactions + items with a column mapping"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, (module_name, helptext) in SOURCES.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=helptext, description=(module.__doc__ or helptext).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(p)
        p.set_defaults(_source_module=module)


def main(args: argparse.Namespace) -> int:
    stats = args._source_module.run(args)
    print(json.dumps(stats, indent=2, sort_keys=True))
    return 0
