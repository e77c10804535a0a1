"""Summarize every user's preference with an LLM, block by block -> summaries/users.parquet.

    mmrec summarize-users CONFIG.yaml [key.path=value ...] [--shard i/n | --shard auto] [--merge]

Reads the `user_summaries` section, the split (`split` section) and summaries/items.parquet. Every recurrence
step is cached under <dir>/cache/user_summaries: a re-run does no model calls for finished steps, an interrupted
run resumes, and shards (split by user) merge into one table when the last finishes, or with `--merge`.
"""
from __future__ import annotations

import argparse

from mmrec.commands import add_config_arguments, load_experiment


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--shard", metavar="i/n",
                        help="do part i of n of the users (0-based), or 'auto' from RANK/WORLD_SIZE")
    parser.add_argument("--merge", action="store_true", help="only write the table from what all shards cached")


def main(args: argparse.Namespace) -> int:
    from mmrec.data.splits import load_split
    from mmrec.progress import get_logger
    from mmrec.summarize.shard import finish_message, parse_shard
    from mmrec.summarize.users import merge_user_summaries, summarize_users

    log = get_logger("summarize-users")
    cfg = load_experiment(args)
    section = cfg.section("user_summaries")
    paths = cfg.paths
    split = load_split(cfg.split_dir)
    cache_dir = paths.cache / "user_summaries"
    if args.merge:
        out = merge_user_summaries(section, split, paths.item_summaries, paths.user_summaries, cache_dir)
        print(f"wrote {out}")
        return 0
    shard = parse_shard(args.shard)
    stats = summarize_users(section, split, paths.item_summaries, paths.user_summaries, cache_dir, shard=shard)
    log.info("summarize-users %s: %s", shard, stats.line())
    print(finish_message(shard, stats.line(), paths.user_summaries, stats.complete))
    return 0
