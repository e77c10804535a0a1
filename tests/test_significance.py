"""Paired tests against scipy on known data, and the refusal to pair runs on different candidates."""
from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from eval.significance import compare, paired_test, per_user_path, shared_stages
from mmrec.errors import DataError, MmrecError
from mmrec.experiment import ExperimentPaths
from mmrec.io import write_json


def test_paired_test_matches_scipy_and_its_interval() -> None:
    gen = np.random.default_rng(0)
    b = gen.random(50)
    a = b + 0.05 + gen.normal(scale=0.05, size=50)
    r = paired_test(a, b)
    assert r["t_pvalue"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert r["wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(a - b).pvalue)
    d = a - b
    half = stats.t.ppf(0.975, 49) * d.std(ddof=1) / np.sqrt(50)
    assert (r["ci95_low"], r["ci95_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert r["t_pvalue"] < 0.001 and r["n"] == 50


def test_identical_runs_and_nans() -> None:
    x = np.array([0.1, 0.5, np.nan, 1.0])
    r = paired_test(x, x)
    assert r["t_pvalue"] == 1.0 and r["wilcoxon_pvalue"] == 1.0 and r["dropped_nan"] == 1 and r["n"] == 3


def _write_run(paths: ExperimentPaths, run: str, values: list[float], sha: str, stages: tuple[str, ...] = ("test",),
               **manifest: Any) -> None:
    """A run's per-user metrics and metrics file as `mmrec eval` writes them; `manifest` overrides its entries
    (`protocol` entries are merged into the default protocol)."""
    df = pd.concat([pd.DataFrame({"user_id": [f"u{i}" for i in range(len(values))], "stage": s, "ndcg@10": values})
                    for s in stages])
    per_user_path(paths, run).parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(per_user_path(paths, run), index=False)
    protocol = {"name": "full", "stages": list(stages), "mask_history": False, "candidates_per_example": 21,
                "candidates_sha256": sha, "catalogue": {"items": 120, "sha256": "cat"},
                **manifest.pop("protocol", {})}
    write_json({"run": run, "manifest": {"protocol": protocol, "tie_policy": "expected", "ks": [5, 10],
                                         "metrics": ["hr", "ndcg"], **manifest}}, paths.metrics(run))


@pytest.mark.parametrize("difference, named", [
    ({"tie_policy": "pessimistic"}, "tie_policy (expected vs pessimistic)"),
    ({"ks": [10, 20]}, "ks ([5, 10] vs [10, 20])"),
    ({"protocol": {"name": "sampled"}}, "protocol.name (full vs sampled)"),
    ({"protocol": {"mask_history": True}}, "protocol.mask_history (False vs True)"),
    ({"protocol": {"catalogue": {"items": 119, "sha256": "other"}}}, "protocol.catalogue"),
])
def test_compare_refuses_runs_evaluated_differently_and_names_the_difference(tmp_path, difference, named) -> None:
    paths = ExperimentPaths(tmp_path)
    _write_run(paths, "a", [1.0, 0.5, 0.0, 0.2], "x")
    _write_run(paths, "b", [0.5, 0.5, 0.0, 0.3], "x", **difference)
    with pytest.raises(DataError, match=re.escape(named)):
        compare(paths, "a", "b", "test", "ndcg@10")


def test_compare_on_a_shared_stage_of_runs_evaluated_on_different_stage_lists(tmp_path) -> None:
    paths = ExperimentPaths(tmp_path)
    _write_run(paths, "a", [1.0, 0.5, 0.0, 0.2], "x", stages=("valid", "test"), metrics=["hr", "ndcg", "mrr"])
    _write_run(paths, "b", [0.5, 0.5, 0.0, 0.3], "x")
    assert shared_stages(paths, "a", "b") == ["test"]
    c = compare(paths, "a", "b", "test", "ndcg@10")  # the metric list and the stage list change no number
    assert c["n"] == 4 and c["mean_diff"] == pytest.approx(0.1)
    with pytest.raises(DataError, match="'b' was not evaluated on stage 'valid'"):
        compare(paths, "a", "b", "valid", "ndcg@10")


def test_compare_averages_seed_runs_and_checks_candidates(tmp_path) -> None:
    paths = ExperimentPaths(tmp_path)
    _write_run(paths, "a@seed0", [1.0, 0.5, 0.0, 0.2], "x")
    _write_run(paths, "a@seed9", [1.0, 0.5, 0.0, 0.2], "x", tie_policy="optimistic")
    with pytest.raises(DataError, match=r"runs of 'a' were evaluated differently .*tie_policy"):
        compare(paths, "a", "a@seed0", "test", "ndcg@10")
    per_user_path(paths, "a@seed9").unlink()
    paths.metrics("a@seed9").unlink()
    _write_run(paths, "a@seed1", [0.0, 0.5, 0.0, 0.4], "x")
    _write_run(paths, "b", [0.5, 0.5, 0.0, 0.3], "x")
    c = compare(paths, "a", "b", "test", "ndcg@10")  # a = per-user mean over its two seeds == b
    assert c["mean_diff"] == pytest.approx(0.0) and c["n"] == 4
    _write_run(paths, "c", [0.5, 0.5, 0.0, 0.3], "y")
    with pytest.raises(DataError, match="different candidate files"):
        compare(paths, "a", "c", "test", "ndcg@10")
    with pytest.raises(MmrecError, match="no evaluated run 'zzz'"):
        compare(paths, "a", "zzz", "test", "ndcg@10")
    with pytest.raises(MmrecError, match="no per-user metric 'hr@99'"):
        compare(paths, "a", "b", "test", "hr@99")
