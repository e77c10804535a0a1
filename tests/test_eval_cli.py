"""`mmrec finetune -> score -> eval` for the popularity baseline on the synthetic split, through the CLI."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from eval.protocol import SCORES_META_KEY
from eval.significance import per_user_path
from eval.throughput import read_throughput
from mmrec.data.splits import SplitConfig, load_split, make_split
from mmrec.experiment import ExperimentPaths
from mmrec.io import hash_json, read_json


@pytest.fixture(scope="module")
def experiment(synthetic_dataset, tmp_path_factory) -> Path:
    """An experiment dir with its own copy of the loo split (20 negatives) of the shared synthetic dataset."""
    root = tmp_path_factory.mktemp("eval_exp")
    make_split(synthetic_dataset, SplitConfig(protocol="loo", negatives=20, seed=0), root / "exp" / "splits" / "loo")
    cfg = {
        "experiment": {"dir": str(root / "exp"), "seed": 0},
        "data": {"path": str(synthetic_dataset)},
        "split": {"protocol": "loo", "negatives": 20, "seed": 0},
        "models": {"pop": {"kind": "pop"}, "pop_valid": {"kind": "pop", "include_valid": True}},
        "eval": {"ks": [1, 5, 10], "stages": ["valid", "test"], "batch_users": 64},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _expected_hr10(split_dir: Path, scores: pd.DataFrame, stage: str) -> float:
    """HR@10 by a plain per-user loop: the target's rank is uniform over its tie group."""
    cands = load_split(split_dir).candidates
    df = cands[cands["stage"] == stage].merge(scores, on=["user_id", "stage", "item_id"])
    hits = []
    for _, g in df.groupby("user_id"):
        t = g.loc[g["label"] == 1, "score"].iloc[0]
        neg = g.loc[g["label"] == 0, "score"]
        above, tied = int((neg > t).sum()), int((neg == t).sum())
        hits.append(min(1.0, max(0.0, (10 - above) / (tied + 1))))
    return float(np.mean(hits))


def test_pop_finetune_score_eval_through_the_cli(experiment, run_cli, caplog) -> None:
    cfg = experiment / "cfg.yaml"
    paths = ExperimentPaths(experiment / "exp")
    assert run_cli("finetune", cfg)[0] == 0
    code, out, err = run_cli("score", cfg)
    assert code == 0, err
    scores = pd.read_parquet(paths.scores("pop"))
    cands = load_split(paths.split("loo")).candidates
    assert len(scores) == len(cands) and scores[["user_id", "stage", "item_id"]].equals(
        cands[["user_id", "stage", "item_id"]].reset_index(drop=True))
    speed = read_throughput(paths.scores("pop"))  # the scoring's own clock, in the scores' metadata
    assert speed["candidates"] == len(cands) and speed["resumed_candidates"] == 0
    assert speed["cpu_s"] > 0 and speed["wall_s"] > 0 and speed["torch_threads"] >= 1 and speed["device"] == "cpu"
    code, out, err = run_cli("eval", cfg, "--compare", "pop", "pop_valid")
    assert code == 0, err
    assert "[test] protocol=sampled tie_policy=expected" in out and "Wilcoxon p=" in out
    result = read_json(paths.metrics("pop"))
    for stage in ("valid", "test"):
        assert result["metrics"][stage]["hr@10"] == pytest.approx(_expected_hr10(paths.split("loo"), scores, stage))
        assert result["counts"][stage]["rows_evaluated"] == 200
    # popularity ties often: the tie rate is reported, and the constant-free model beats chance (HR@10 > 10/21)
    assert result["metrics"]["test"]["tie_rate"] > 0 and result["metrics"]["test"]["hr@10"] > 10 / 21
    m = result["manifest"]
    assert m["protocol"]["candidates_sha256"] == load_split(paths.split("loo")).candidates_sha256
    assert m["protocol"]["candidates_per_example"] == 21 and m["tie_policy"] == "expected"
    assert m["model"]["kind"] == "pop" and m["versions"]["numpy"] and m["seeds"]["split"] == 0
    per_user = pd.read_parquet(per_user_path(paths, "pop"))
    assert len(per_user) == 400 and per_user["ndcg@10"].between(0, 1).all()
    manifest = read_json(paths.manifest)
    assert set(manifest["runs"]) == {"pop", "pop_valid"}
    assert manifest["comparisons"][0]["metric"] == "ndcg@10"
    # validation scores of include_valid are the training counts: identical on valid, so p = 1
    assert manifest["comparisons"][0]["stage"] == "valid" and manifest["comparisons"][0]["t_pvalue"] == 1.0
    # up to date: a second score run skips the work
    caplog.clear()
    assert run_cli("score", cfg)[0] == 0
    assert "pop: scores up to date" in caplog.text
    assert read_throughput(paths.scores("pop")) == speed  # a skipped file keeps the numbers it recorded


def test_compare_pairs_shared_stages_and_refuses_another_tie_policy(experiment, run_cli) -> None:
    cfg = experiment / "cfg.yaml"
    assert run_cli("finetune", cfg)[0] == 0 and run_cli("score", cfg)[0] == 0
    assert run_cli("eval", cfg, "--model", "pop")[0] == 0                        # valid and test
    code, out, err = run_cli("eval", cfg, "--model", "pop_valid", "--stage", "test", "--compare", "pop", "pop_valid")
    assert code == 0, err
    assert "on test" in out and "on valid" not in out                           # the stage both have
    assert run_cli("eval", cfg, "--model", "pop", "eval.tie_policy=pessimistic")[0] == 0
    code, out, err = run_cli("eval", cfg, "--model", "pop_valid", "--compare", "pop", "pop_valid")
    assert code != 0 and "tie_policy (pessimistic vs expected)" in err


def test_full_protocol_with_history_masking(experiment, run_cli) -> None:
    cfg = experiment / "cfg.yaml"
    paths = ExperimentPaths(experiment / "exp")
    assert run_cli("finetune", cfg, "--model", "pop")[0] == 0
    over = ["eval.protocol=full", "eval.mask_history=true"]
    code, _, err = run_cli("score", cfg, *over, "--model", "pop")
    assert code == 0, err
    ranks = pd.read_parquet(paths.scores("pop").with_name("pop.full.parquet"))
    n_items = len(load_split(paths.split("loo")).dataset.items)
    assert (ranks["n_ranked"] + ranks["n_masked"] == n_items).all() and (ranks["n_masked"] > 0).all()
    code, out, err = run_cli("eval", cfg, *over, "--model", "pop")
    assert code == 0, err
    assert "protocol=full" in out
    m = read_json(paths.metrics("pop"))
    assert m["manifest"]["protocol"]["mask_history"] is True and "auc" not in m["metrics"]["test"]
    # one catalogue, the dataset's items, recorded in the run's and the experiment's manifest
    items = list(load_split(paths.split("loo")).dataset.items["item_id"])
    assert m["manifest"]["protocol"]["catalogue"] == {"items": n_items, "sha256": hash_json(sorted(items))}
    assert read_json(paths.manifest)["catalogue"] == m["manifest"]["protocol"]["catalogue"]
    assert m["counts"]["test"]["items_unscored_mean"] == 0  # popularity scores every item (0 = never counted)
    # ranking against every item is harder than against 20 sampled negatives
    assert m["metrics"]["test"]["hr@10"] < 1.0
    code, _, err = run_cli("eval", cfg, "eval.protocol=full", "--model", "pop")
    assert code == 2 and "mask_history" in err


def test_seeds_are_aggregated(experiment, run_cli) -> None:
    cfg = experiment / "cfg.yaml"
    assert run_cli("finetune", cfg, "--model", "pop", "--seeds", "1", "2")[0] == 0
    assert run_cli("score", cfg, "--model", "pop", "--seeds", "1", "2")[0] == 0
    code, out, err = run_cli("eval", cfg, "--model", "pop", "--seeds", "1", "2", "--stage", "test")
    assert code == 0, err
    assert "pop@seed1" in out and "pop (mean)" in out and "± 95% CI" in out
    agg = read_json(ExperimentPaths(experiment / "exp").manifest)["aggregates"]["test"]["pop"]
    assert agg["hr@10"]["n"] == 2 and agg["hr@10"]["ci95"] == pytest.approx(0.0)  # popularity is deterministic


def test_tampered_candidates_and_foreign_scores_are_refused(experiment, run_cli, tmp_path) -> None:
    cfg = experiment / "cfg.yaml"
    paths = ExperimentPaths(experiment / "exp")
    assert run_cli("finetune", cfg, "--model", "pop")[0] == 0
    assert run_cli("score", cfg, "--model", "pop")[0] == 0
    scores_file = paths.scores("pop")
    backup = tmp_path / "pop.parquet"
    shutil.copy(scores_file, backup)
    try:
        # scores written on another candidate file
        import pyarrow.parquet as pq

        t = pq.read_table(scores_file)
        meta = json.loads(t.schema.metadata[SCORES_META_KEY])
        meta["candidates_sha256"] = "0" * 64
        pq.write_table(t.replace_schema_metadata({**t.schema.metadata, SCORES_META_KEY: json.dumps(meta).encode()}),
                       scores_file)
        code, _, err = run_cli("eval", cfg, "--model", "pop")
        assert code == 2 and "re-run `mmrec score`" in err
        # a scores file with a row that is not a candidate
        df = pd.read_parquet(backup)
        extra = df.iloc[[0]].assign(item_id="not-a-candidate")
        pd.concat([df, extra]).to_parquet(scores_file, index=False)
        code, _, err = run_cli("eval", cfg, "--model", "pop")
        assert code == 2 and "match no candidate" in err
        # missing and NaN scores are kept as misses and counted
        df.loc[df.index[:5], "score"] = np.nan
        df.iloc[5:].to_parquet(scores_file, index=False)
        code, _, err = run_cli("eval", cfg, "--model", "pop", "--stage", "valid")
        assert code == 0, err
        c = read_json(paths.metrics("pop"))["counts"]["valid"]
        assert c["missing_scores"] == 5 and c["invalid_scores"] == 5 and c["rows_evaluated"] == 200
    finally:
        shutil.copy(backup, scores_file)
    code, _, err = run_cli("eval", cfg, "--model", "nope")
    assert code == 2 and "no model 'nope'" in err
