"""Import a raw dataset into the canonical form (items.parquet, interactions.parquet, stats.json).

    mmrec prep <source> [source options] --out DIR [cleaning options]

Each source lives in its own module of `data_prep` providing an options dataclass and `run(options, out) -> dict`
(the stats written). The dataclass is the one source of the source's `--flag-name` options (`mmrec prep <source>
--help` lists them) and of the keys of a config's `data.options` (`data_prep.config`).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
from pathlib import Path
from types import ModuleType

from data_prep.common import CleaningOptions
from mmrec.config import add_options, from_dict, options_from_args

# source name -> ("module:OptionsDataclass", help)
SOURCES: dict[str, tuple[str, str]] = {
    "synthetic": ("data_prep.synthetic:SyntheticOptions",
                  "generate the synthetic multimodal benchmark (known ground truth)"),
    "amazon2023": ("data_prep.amazon2023:AmazonOptions",
                   "Amazon Reviews 2023: <Category>.jsonl(.gz) + meta_<Category>.jsonl(.gz) + images"),
    "microlens": ("data_prep.microlens:MicroLensOptions",
                  "MicroLens: pairs CSV (user,item,timestamp) + titles CSV + covers folder"),
    "movielens": ("data_prep.movielens:MovieLensOptions",
                  "MovieLens ml-100k / ml-1m / ml-latest(-small) + optional posters folder"),
    "recbole": ("data_prep.recbole:RecBoleOptions", "RecBole atomic files (.inter, .item with name:type headers)"),
    "generic": ("data_prep.generic:GenericOptions", "generic CSV/JSONL interactions + items with a column mapping"),
}


def source(name: str) -> tuple[ModuleType, type]:
    """The module of source `name` (which has `run(options, out)`) and its options dataclass."""
    module_name, _, options_name = SOURCES[name][0].partition(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, options_name)


def add_source_options(parser: argparse.ArgumentParser, options_cls: type) -> None:
    """The source's own options, then `--out` and the cleaning options (when the source has them) in a group."""
    cleaning = [f.name for f in dataclasses.fields(CleaningOptions)] if issubclass(options_cls, CleaningOptions) else []
    add_options(parser, options_cls, skip=cleaning)
    group = parser.add_argument_group("output and cleaning" if cleaning else "output")
    group.add_argument("--out", required=True, type=Path,
                       help="output dataset directory (replaced atomically on success)")
    if cleaning:
        add_options(group, CleaningOptions)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", required=True, metavar="SOURCE")
    for name, (_, helptext) in SOURCES.items():
        module, options_cls = source(name)
        p = sub.add_parser(name, help=helptext, description=(module.__doc__ or helptext).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        add_source_options(p, options_cls)


def main(args: argparse.Namespace) -> int:
    module, options_cls = source(args.source)
    options = from_dict(options_cls, options_from_args(args, options_cls), where="command line")
    stats = module.run(options, args.out)
    print(json.dumps(stats, indent=2, sort_keys=True))
    return 0
