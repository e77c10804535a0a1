"""Popularity: score an item by how often it occurs in the training data. Exact and deterministic, unlike
RecBole's Pop (which also counts sampled training negatives and updates once per item per batch).

Counts come from the train rows' `history + [target]` (the sequences the sequential baselines train on).
`include_valid: true` also counts the validation targets when scoring the test stage (the test histories
already contain them, so no test information leaks); validation scores always use the training counts.
Ties (items with equal counts) are left as ties for the evaluation's declared tie policy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from mmrec.checkpoint_files import RUN_FILE
from mmrec.errors import DataError, MmrecError
from mmrec.io import read_json

if TYPE_CHECKING:
    from mmrec.experiment import ExperimentConfig

COUNTS_FILE = "counts.parquet"   # item_id, train, valid (int64): occurrences in training sequences / as valid targets


@dataclass
class PopConfig:
    """`count: interactions` counts every occurrence; `users` counts each user once per item (repeats ignored)."""

    kind: Literal["pop"] = "pop"
    count: Literal["interactions", "users"] = "interactions"
    include_valid: bool = False


def item_counts(examples: pd.DataFrame, count: str = "interactions") -> pd.DataFrame:
    """Counts per item: `train` over the training sequences, `valid` over the validation targets."""
    train = examples[examples["stage"] == "train"]
    if train.empty:
        raise DataError("the split has no train rows: popularity has nothing to count")
    seq = pd.DataFrame({"user_id": np.repeat(train["user_id"].to_numpy(), train["history"].map(len).to_numpy() + 1),
                        "item_id": [i for h, t in zip(train["history"], train["target"]) for i in (*h, t)]})
    if count == "users":
        seq = seq.drop_duplicates()
    counts = seq.groupby("item_id", sort=True).size().rename("train")
    valid = examples.loc[examples["stage"] == "valid", ["user_id", "target"]].rename(columns={"target": "item_id"})
    if count == "users":
        seq_pairs = set(zip(seq["user_id"], seq["item_id"]))
        valid = valid[[p not in seq_pairs for p in zip(valid["user_id"], valid["item_id"])]]
    vcounts = valid.groupby("item_id", sort=True).size().rename("valid")
    out = pd.concat([counts, vcounts], axis=1).fillna(0).astype("int64").sort_index()
    return out.rename_axis("item_id").reset_index()


class PopScorer:
    """Scores = counts; an item absent from the counted data scores 0 (it really was never seen). `catalogue`
    (the experiment's items) is what `score_catalogue` ranks, so popularity scores every item of the catalogue."""

    def __init__(self, counts: pd.DataFrame, include_valid: bool, catalogue: list[str] | None = None):
        train = counts.set_index("item_id")["train"].astype("float64")
        test = (train + counts.set_index("item_id")["valid"]) if include_valid else train
        self.by_stage = {"valid": train, "test": test}
        self.item_ids = list(catalogue) if catalogue is not None else counts["item_id"].tolist()

    def _stage(self, stage: str) -> pd.Series:
        if stage not in self.by_stage:
            raise DataError(f"popularity scores stages valid and test, got stage {stage!r}")
        return self.by_stage[stage]

    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        out = np.zeros(len(candidates), dtype=np.float64)
        for stage, rows in candidates.groupby("stage", sort=False).indices.items():
            out[rows] = self._stage(stage).reindex(candidates["item_id"].to_numpy()[rows]).fillna(0.0).to_numpy()
        return out

    def score_catalogue(self, examples: pd.DataFrame) -> np.ndarray:
        out = np.empty((len(examples), len(self.item_ids)), dtype=np.float64)
        for stage, rows in examples.groupby("stage", sort=False).indices.items():
            out[rows] = self._stage(stage).reindex(self.item_ids).fillna(0.0).to_numpy()[None, :]
        return out


def load_scorer(cfg: "ExperimentConfig", name: str, ckpt_dir: Path) -> PopScorer:
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / RUN_FILE).is_file():
        raise MmrecError(f"{ckpt_dir}: no popularity counts of model '{name}'; "
                         f"run `mmrec finetune {cfg.source} --model {name}` first")
    from mmrec.data.splits import load_split
    from mmrec.ranking import experiment_catalogue

    run = read_json(ckpt_dir / RUN_FILE)
    return PopScorer(pd.read_parquet(ckpt_dir / COUNTS_FILE), bool(run["config"]["include_valid"]),
                     experiment_catalogue(load_split(cfg.split_dir)))
