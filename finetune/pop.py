"""Popularity "training": count items in the split's training sequences and write the counts atomically."""
from __future__ import annotations

import os
from pathlib import Path

from mmrec.checkpoint_files import RUN_FILE
from mmrec.config import to_dict
from mmrec.experiment import ExperimentConfig
from mmrec.io import atomic_dir, read_json, write_json, write_parquet
from mmrec.models.pop import COUNTS_FILE, item_counts
from mmrec.progress import get_logger


def train(cfg: ExperimentConfig, name: str, out_dir: Path, resume: bool = True) -> Path:
    from mmrec.data.splits import load_split

    log = get_logger("finetune.pop")
    if int(os.environ.get("RANK", "0")) != 0:  # under a multi-process launcher only rank 0 counts and writes
        return Path(out_dir)
    mcfg = cfg.model(name)
    split_dir = cfg.split_dir
    split = load_split(split_dir)
    fingerprint = cfg.fingerprint(f"models.{name}")
    run_file = Path(out_dir) / RUN_FILE
    if resume and run_file.is_file():
        done = read_json(run_file)
        if done.get("fingerprint") == fingerprint and done.get("candidates_sha256") == split.candidates_sha256:
            log.info(f"{name}: counts already computed for this config and split, kept")
            return Path(out_dir)
    counts = item_counts(split.examples, mcfg.count)
    with atomic_dir(out_dir) as tmp:
        write_parquet(counts, tmp / COUNTS_FILE)
        write_json({"kind": "pop", "config": to_dict(mcfg), "fingerprint": fingerprint, "finished": True,
                    "split": str(split_dir), "candidates_sha256": split.candidates_sha256,
                    "items": len(counts), "train_interactions": int(counts["train"].sum())}, tmp / RUN_FILE)
    log.info(f"{name}: counted {int(counts['train'].sum())} training interactions over {len(counts)} items")
    return Path(out_dir)
