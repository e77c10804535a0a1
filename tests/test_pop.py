"""Popularity: exact counts from the training sequences, stage-aware scores, deterministic."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mmrec.errors import DataError
from mmrec.models.pop import PopScorer, item_counts

EXAMPLES = pd.DataFrame({
    "user_id": ["u", "u", "u", "v", "v", "v"],
    "stage": ["train", "valid", "test"] * 2,
    "history": [["a", "b", "a"], ["a", "b", "a", "c"], ["a", "b", "a", "c", "d"],
                ["b"], ["b", "c"], ["b", "c", "d"]],
    "target": ["c", "d", "e", "c", "d", "a"],
})


def test_counts_are_exact_and_from_training_sequences_only():
    counts = item_counts(EXAMPLES).set_index("item_id")
    # training sequences: u = a b a c, v = b c
    assert counts["train"].to_dict() == {"a": 2, "b": 2, "c": 2, "d": 0}
    assert counts["valid"].to_dict() == {"a": 0, "b": 0, "c": 0, "d": 2}
    assert "e" not in counts.index  # test targets are never counted
    users = item_counts(EXAMPLES, "users").set_index("item_id")
    assert users["train"].to_dict() == {"a": 1, "b": 2, "c": 2, "d": 0}


def test_scores_by_stage_and_unseen_items():
    counts = item_counts(EXAMPLES)
    cands = pd.DataFrame({"user_id": ["u"] * 4, "stage": ["valid", "valid", "test", "test"],
                          "item_id": ["a", "d", "d", "zz"]})
    assert PopScorer(counts, include_valid=False).score(cands).tolist() == [2.0, 0.0, 0.0, 0.0]
    with_valid = PopScorer(counts, include_valid=True)
    assert with_valid.score(cands).tolist() == [2.0, 0.0, 2.0, 0.0]  # valid targets count for the test stage only
    catalogue = with_valid.score_catalogue(EXAMPLES[EXAMPLES["stage"] != "train"].reset_index(drop=True))
    assert with_valid.item_ids == ["a", "b", "c", "d"]
    assert catalogue.shape == (4, 4) and catalogue.dtype == np.float64
    assert catalogue[0].tolist() == [2, 2, 2, 0] and catalogue[1].tolist() == [2, 2, 2, 2]
    # on the experiment's catalogue every item gets a score: an item never counted has count 0 (a real score)
    on_catalogue = PopScorer(counts, include_valid=False, catalogue=["e", "a", "b", "c", "d"])
    assert on_catalogue.item_ids == ["e", "a", "b", "c", "d"]
    assert on_catalogue.score_catalogue(EXAMPLES[EXAMPLES["stage"] == "test"])[0].tolist() == [0, 2, 2, 2, 0]
    with pytest.raises(DataError, match="stage"):
        with_valid.score(pd.DataFrame({"user_id": ["u"], "stage": ["train"], "item_id": ["a"]}))


def test_no_train_rows_is_a_clear_error():
    with pytest.raises(DataError, match="no train rows"):
        item_counts(EXAMPLES[EXAMPLES["stage"] == "test"])


def test_recipe_writes_counts_and_recounts_when_settings_change(tmp_path, synthetic_split):
    import finetune.pop
    from mmrec.data.splits import load_split
    from mmrec.errors import MmrecError
    from mmrec.experiment import ExperimentConfig
    from mmrec.models.base import load_scorer

    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "loo").symlink_to(synthetic_split, target_is_directory=True)
    cfg = ExperimentConfig.from_mapping({"experiment": {"dir": str(tmp_path)}, "split": {"name": "loo"},
                                         "models": {"pop": {"kind": "pop"}}})
    with pytest.raises(MmrecError, match="mmrec finetune"):
        load_scorer(cfg, "pop", tmp_path / "ckpt")
    out = finetune.pop.train(cfg, "pop", tmp_path / "ckpt")
    counts = pd.read_parquet(out / "counts.parquet")
    train = load_split(synthetic_split).examples_for("train")
    assert counts["train"].sum() == train["history"].map(len).sum() + len(train)
    stamp = (out / "counts.parquet").stat().st_mtime_ns
    finetune.pop.train(cfg, "pop", tmp_path / "ckpt")
    assert (out / "counts.parquet").stat().st_mtime_ns == stamp  # finished and unchanged: kept
    changed = cfg.with_overrides(["models.pop.include_valid=true"])
    finetune.pop.train(changed, "pop", tmp_path / "ckpt")
    scorer = load_scorer(changed, "pop", tmp_path / "ckpt")
    test = load_split(synthetic_split).candidates_for("test")
    # recounted: test scores now include the validation targets, validation scores still do not
    assert scorer.score(test).sum() > scorer.score(test.assign(stage="valid")).sum()
