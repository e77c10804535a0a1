"""Read back from a split's example rows: each user's training sequence (what the ID models train on) and the
evaluated rows (what their scorers look histories up in)."""
from __future__ import annotations

import pandas as pd

from mmrec.errors import DataError


def training_sequences(examples: pd.DataFrame) -> pd.Series:
    """Each user's training sequence (a train row's `history + [target]`), indexed by user_id."""
    train = examples[examples["stage"] == "train"]
    if train.empty:
        raise DataError("the split has no train rows: nothing to train on")
    if train["user_id"].duplicated().any():
        raise DataError("the split has several train rows for one user; expected one (history + target = the sequence)")
    seqs = [list(h) + [t] for h, t in zip(train["history"], train["target"])]
    return pd.Series(seqs, index=train["user_id"].to_numpy(), dtype=object)


def evaluated_examples(examples: pd.DataFrame) -> pd.DataFrame:
    """The valid and test rows whose histories the ID scorers look up by (user_id, stage): one per pair, the last
    one winning where a split holds several."""
    evaluated = examples[examples["stage"] != "train"]
    return evaluated[~evaluated.duplicated(["user_id", "stage"], keep="last")]
