"""`eval.mask_history` masks every item the user interacted with before the target, not the history the split
kept after `split.max_history` (docs/evaluation.md)."""
from __future__ import annotations

import pandas as pd
import yaml

from mmrec.data.splits import SplitConfig, load_split, make_split
from mmrec.experiment import ExperimentConfig, ExperimentPaths
from mmrec.models.base import load_scorer


def test_full_ranking_masks_the_whole_pre_target_history(synthetic_dataset, tmp_path, run_cli) -> None:
    split_cfg = {"protocol": "loo", "negatives": 5, "seed": 0, "max_history": 2}
    split_dir = tmp_path / "exp" / "splits" / "loo"
    make_split(synthetic_dataset, SplitConfig(**split_cfg), split_dir)
    cfg = {"experiment": {"dir": str(tmp_path / "exp"), "seed": 0}, "data": {"path": str(synthetic_dataset)},
           "split": split_cfg, "models": {"pop": {"kind": "pop"}},
           "eval": {"stages": ["valid", "test"], "protocol": "full", "mask_history": True}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert run_cli("finetune", tmp_path / "cfg.yaml")[0] == 0
    code, _, err = run_cli("score", tmp_path / "cfg.yaml")
    assert code == 0, err
    paths = ExperimentPaths(tmp_path / "exp")
    ranks = pd.read_parquet(paths.scores("pop").with_name("pop.full.parquet"))
    catalogue = set(load_scorer(ExperimentConfig.load(tmp_path / "cfg.yaml"), "pop", paths.checkpoint("pop")).item_ids)
    split = load_split(split_dir)
    inter = split.dataset.interactions
    expected = {}
    for ex in split.examples[split.examples.stage != "train"].itertuples():
        seq = inter[inter.user_id == ex.user_id]
        before = seq[seq.timestamp <= ex.target_timestamp].item_id.tolist()
        before = before[:len(before) - before[::-1].index(ex.target) - 1]  # up to the target event
        assert list(ex.history) == before[-2:]
        expected[(ex.user_id, ex.stage)] = len(set(before) & catalogue - {ex.target})
    got = {(r.user_id, r.stage): r.n_masked for r in ranks.itertuples()}
    assert got == expected and max(expected.values()) > 2
