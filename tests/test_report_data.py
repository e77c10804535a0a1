"""The report's gathering helpers, with values computed by hand."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from eval import report_data as rd
from eval.report_gallery import display_ranks, sample_users
from mmrec.errors import DataError
from mmrec.experiment import ExperimentPaths


def test_parse_run_id_inverts_run_id():
    assert rd.parse_run_id(ExperimentPaths.run_id("sasrec", 3)) == ("sasrec", 3)
    assert rd.parse_run_id("pop") == ("pop", None)
    assert rd.parse_run_id("my@model@seed12") == ("my@model", 12)


def test_mean_ci_t_interval():
    # values 1, 2, 3: mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 4.3027 / 1.7321 = 2.4841
    mean, half, n = rd.mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(2.4841, abs=1e-4)
    assert rd.mean_ci([0.5])[0] == 0.5 and math.isnan(rd.mean_ci([0.5])[1])
    assert rd.mean_ci([])[2] == 0


def test_fmt_cell():
    assert rd.fmt_cell((0.5, 0.01, 3)) == "0.5000 ± 0.0100"
    assert rd.fmt_cell((0.5, float("nan"), 1)) == "0.5000"
    assert rd.fmt_cell((float("nan"), float("nan"), 0)) == "–"


def test_columns_are_ordered_by_family_then_k_then_value_metrics():
    names = ["auc", "ndcg@10", "hr@10", "hr@3", "tie_rate", "gauc", "rows", "ndcg@3"]
    assert sorted([n for n in names if rd.is_table_metric(n)], key=rd.metric_sort_key) == \
        ["hr@3", "hr@10", "ndcg@3", "ndcg@10", "auc", "gauc", "tie_rate"]


def test_read_runs_flat_and_per_stage_metrics(tmp_path):
    paths = ExperimentPaths(tmp_path)
    paths.metrics("a").parent.mkdir(parents=True)
    paths.metrics("a").write_text(json.dumps({"metrics": {"test": {"hr@1": 0.5, "rows": 10}, "valid": {"hr@1": 0.1}}}))
    paths.metrics("b@seed2").write_text(json.dumps({"stage": "test", "metrics": {"hr@1": 0.25, "flag": True}}))
    paths.metrics("c").write_text(json.dumps({"stage": "valid", "metrics": {"hr@1": 0.3}}))
    runs = rd.read_runs(paths, "test")
    assert [(r.run, r.model, r.seed) for r in runs] == [("a", "a", None), ("b@seed2", "b", 2)]
    assert runs[0].metrics["hr@1"] == 0.5 and "flag" not in runs[1].metrics
    assert [r.run for r in rd.read_runs(paths, "valid")] == ["a", "c"]
    paths.metrics("d").write_text(json.dumps({"nothing": 1}))
    with pytest.raises(DataError, match=r"d\.json.*'metrics'"):
        rd.read_runs(paths, "test")


def test_results_table_best_model_and_layout():
    runs = [rd.RunResult("m@seed0", "m", 0, "test", {"ndcg@5": 0.2, "ndcg@10": 0.3, "auc": 0.6}),
            rd.RunResult("m@seed1", "m", 1, "test", {"ndcg@5": 0.4, "ndcg@10": 0.5, "auc": 0.7}),
            rd.RunResult("p", "p", None, "test", {"ndcg@5": 0.5, "ndcg@10": 0.35, "auc": 0.9})]
    t = rd.results_table(runs)
    assert t.rows["m"]["ndcg@10"][0] == pytest.approx(0.4) and t.rows["m"]["ndcg@10"][2] == 2
    assert t.primary_metric() == "ndcg@10" and t.best_model() == "m"  # NDCG at the largest K decides
    assert rd.table_layout(t) == (["ndcg"], [5, 10], ["auc"])
    assert rd.best_of(t, "auc") == 0.9
    assert rd.k_curves(t)["ndcg"]["p"] == [(5, 0.5), (10, 0.35)]


def test_split_manifest_shared_and_per_run():
    runs = [rd.RunResult("a", "a", None, "test", {}, {"tie_policy": "expected", "seeds": {"experiment": 0}}),
            rd.RunResult("b", "b", None, "test", {}, {"tie_policy": "expected", "seeds": {"experiment": 1}})]
    shared, per_run = rd.split_manifest(runs)
    assert shared == {"tie_policy": "expected"}
    assert per_run == {"a": {"seeds.experiment": "0"}, "b": {"seeds.experiment": "1"}}


def test_train_log_torn_last_line_is_skipped_a_bad_middle_line_is_an_error(tmp_path):
    paths = ExperimentPaths(tmp_path)
    log = paths.checkpoint("r") / "train_log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text('{"step": 1, "loss": 2.0, "lr": 0.1}\n{"step": 2, "loss": 1.0, "lr": 0.1}\n{"step": 3, "lo')
    records = rd.read_train_log(paths, "r")
    assert len(records) == 2
    assert rd.train_curves(records) == ("step", {"loss": [(1.0, 2.0), (2.0, 1.0)]})  # lr is bookkeeping
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(DataError, match="line 2"):
        rd.read_train_log(paths, "r")
    assert rd.read_train_log(paths, "missing") is None


def test_display_ranks_nan_last_ties_in_input_order():
    assert display_ranks(np.array([0.1, np.nan, 0.5, 0.1])).tolist() == [2, 4, 1, 3]


def test_sample_users_is_seeded_and_sorted():
    cands = pd.DataFrame({"user_id": [f"u{i}" for i in range(20)] + ["v"], "stage": ["test"] * 20 + ["valid"]})
    a = sample_users(cands, "test", 5, seed=1)
    assert a == sample_users(cands, "test", 5, seed=1) and a == sorted(a) and len(set(a)) == 5
    assert a != sample_users(cands, "test", 5, seed=2)
    assert sample_users(cands, "test", 50, seed=1) == sorted(f"u{i}" for i in range(20))
    assert sample_users(cands, "valid", 0, seed=1) == []
