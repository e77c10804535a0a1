"""Summarize every item image (and text) with a vision-language model -> summaries/items.parquet.

    mmrec summarize-items CONFIG.yaml [key.path=value ...] [--shard i/n | --shard auto] [--merge]

Reads the `item_summaries` section. Generations are cached by content under <dir>/cache/item_summaries, so a
re-run does no model calls for finished items, and an interrupted run resumes where it stopped. With
`--shard i/n`, n processes (one per GPU: torchrun, a job array) each do their part; the last one to finish
writes the merged table, or run `--merge` afterwards.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mmrec.commands import add_config_arguments, load_experiment


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--shard", metavar="i/n", help="do part i of n (0-based), or 'auto' from RANK/WORLD_SIZE")
    parser.add_argument("--merge", action="store_true", help="only write the table from what all shards cached")


def dataset_dir(cfg) -> Path:
    """The experiment's canonical dataset: `data.path` when given, else <dir>/dataset."""

    data = cfg.section("data")
    return Path(data.path) if data.path else cfg.paths.dataset


def main(args: argparse.Namespace) -> int:
    from mmrec.progress import get_logger
    from mmrec.summarize.items import merge_item_summaries, summarize_items
    from mmrec.summarize.shard import finish_message, parse_shard

    log = get_logger("summarize-items")
    cfg = load_experiment(args)
    section = cfg.section("item_summaries")
    paths = cfg.paths
    cache_dir = paths.cache / "item_summaries"
    if args.merge:
        out = merge_item_summaries(section, dataset_dir(cfg), paths.item_summaries, cache_dir)
        print(f"wrote {out}")
        return 0
    shard = parse_shard(args.shard)
    stats = summarize_items(section, dataset_dir(cfg), paths.item_summaries, cache_dir, shard=shard)
    log.info("summarize-items %s: %s", shard, stats.line())
    print(finish_message(shard, stats.line(), paths.item_summaries, stats.complete))
    return 0
