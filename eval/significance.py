"""Is model A better than model B on the same candidates? Paired tests over per-user metrics.

Both runs must have been evaluated on the same candidate file and catalogue under the same protocol, history
masking, tie policy and cut-offs (checked from their manifests; a difference is named), so each user's metric
under A pairs with the same user's metric under B; runs evaluated on different stage lists are compared on the
stages they share. Reported: the mean difference with its 95% t-interval, the paired t-test and the Wilcoxon
signed-rank test (scipy). A model trained under several seeds enters with each user's metric averaged over its
seeds.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmrec.errors import DataError, MmrecError
from mmrec.experiment import ExperimentPaths
from mmrec.io import read_json

KEY = ["user_id", "stage"]


def per_user_path(paths: ExperimentPaths, run: str) -> Path:
    """`metrics/<run>.per_user.parquet`: one row per evaluated example, the metrics the run got on it."""
    return paths.metrics(run).with_name(f"{run}.per_user.parquet")


def paired_test(a: np.ndarray, b: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """Paired t-test and Wilcoxon signed-rank test of a - b (users with a NaN on either side are dropped
    and counted); p-values are 1 when every difference is zero."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have one shape, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    d = a - b
    n = int(d.size)
    out = {"n": n, "dropped_nan": int((~keep).sum()), "mean_a": float(a.mean()) if n else math.nan,
           "mean_b": float(b.mean()) if n else math.nan, "mean_diff": float(d.mean()) if n else math.nan}
    if n < 2:
        return {**out, "ci95_low": math.nan, "ci95_high": math.nan, "t_stat": math.nan, "t_pvalue": math.nan,
                "wilcoxon_stat": math.nan, "wilcoxon_pvalue": math.nan}
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    if not np.any(d):
        t_stat = w_stat = 0.0
        t_p = w_p = 1.0
    else:
        t = stats.ttest_rel(a, b)
        w = stats.wilcoxon(d, zero_method="wilcox")
        t_stat, t_p, w_stat, w_p = float(t.statistic), float(t.pvalue), float(w.statistic), float(w.pvalue)
    return {**out, "ci95_low": out["mean_diff"] - half, "ci95_high": out["mean_diff"] + half,
            "t_stat": t_stat, "t_pvalue": t_p, "wilcoxon_stat": w_stat, "wilcoxon_pvalue": w_p}


def runs_of_side(paths: ExperimentPaths, side: str) -> list[str]:
    """A run id as given, or every `<model>@seed<k>` run of a model name that has evaluated seed runs."""
    if paths.metrics(side).is_file():
        return [side]
    folder = paths.metrics(side).parent
    runs = sorted(p.stem for p in folder.glob(f"{side}@seed*.json")) if folder.is_dir() else []
    if not runs:
        raise MmrecError(f"no evaluated run '{side}' in {folder}; run `mmrec eval` first (names are runs such as "
                         f"'sasrec' or 'sasrec@seed1', or a model name whose seed runs were evaluated)")
    return runs


# Manifest entries that change a metric's value: two runs are paired only when these agree. The stage list and
# the metric list are not among them (a stage's numbers do not depend on which other stages were evaluated).
PROTOCOL_IGNORED = ("stages", "candidates_per_example")


def evaluation_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """What a run's numbers depend on besides its scores: the protocol (name, candidate file, catalogue,
    history masking), the tie policy and the cut-offs, flattened to `protocol.<key>`, `tie_policy`, `ks`."""
    protocol = manifest.get("protocol") or {}
    out = {f"protocol.{k}": v for k, v in protocol.items() if k not in PROTOCOL_IGNORED}
    out.update(tie_policy=manifest.get("tie_policy"), ks=manifest.get("ks"))
    return out


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "; ".join(f"{k} ({a.get(k)} vs {b.get(k)})" for k in keys)


def _stages(manifest: dict[str, Any]) -> list[str] | None:
    return (manifest.get("protocol") or {}).get("stages")


def load_side(paths: ExperimentPaths, side: str, stage: str, metric: str) -> tuple[pd.Series, dict[str, Any]]:
    """Per-user `metric` of one side (averaged over seed runs) and the evaluation settings it was computed under."""
    series, settings = [], []
    for run in runs_of_side(paths, side):
        manifest = read_json(paths.metrics(run))["manifest"]
        stages = _stages(manifest)
        if stages is not None and stage not in stages:
            raise DataError(f"'{run}' was not evaluated on stage {stage!r} (its stages: {', '.join(stages)}); "
                            f"run `mmrec eval --stage {stage}` or compare on a stage both runs have")
        f = per_user_path(paths, run)
        if not f.is_file():
            raise DataError(f"{f}: missing; re-run `mmrec eval` to write per-user metrics")
        df = pd.read_parquet(f)
        df = df[df["stage"] == stage]
        if metric not in df.columns:
            have = [c for c in df.columns if c not in (*KEY, "n_pos", "n_neg", "n_invalid", "tied")]
            raise MmrecError(f"{f}: no per-user metric '{metric}' (have: {', '.join(have)})")
        series.append(df.set_index(KEY)[metric])
        settings.append(evaluation_settings(manifest))
    for s in settings[1:]:
        if s != settings[0]:
            raise DataError(f"runs of '{side}' were evaluated differently ({_differences(settings[0], s)}); "
                            "re-run `mmrec eval` for all of them")
    values = pd.concat(series, axis=1).mean(axis=1, skipna=False) if len(series) > 1 else series[0]
    return values, settings[0]


def shared_stages(paths: ExperimentPaths, a: str, b: str) -> list[str]:
    """Stages every run of both sides was evaluated on, in (valid, test) order."""
    stages = {"valid", "test"}
    for side in (a, b):
        for run in runs_of_side(paths, side):
            own = _stages(read_json(paths.metrics(run))["manifest"])
            stages &= set(own if own is not None else stages)
    return [s for s in ("valid", "test") if s in stages]


def compare(paths: ExperimentPaths, a: str, b: str, stage: str, metric: str) -> dict[str, Any]:
    """Paired comparison of `a` and `b` (run ids or model names) on `metric` for one stage. Refused, naming the
    difference, when the two were evaluated under settings that change a number (`evaluation_settings`)."""
    va, pa_ = load_side(paths, a, stage, metric)
    vb, pb = load_side(paths, b, stage, metric)
    if pa_.get("protocol.candidates_sha256") != pb.get("protocol.candidates_sha256"):
        raise DataError(f"'{a}' and '{b}' were evaluated on different candidate files "
                        f"({str(pa_.get('protocol.candidates_sha256'))[:12]}… vs "
                        f"{str(pb.get('protocol.candidates_sha256'))[:12]}…); "
                        "a paired test needs identical candidates: re-score both on the current split")
    if pa_ != pb:
        raise DataError(f"'{a}' and '{b}' were evaluated under different settings, so their numbers are not "
                        f"comparable: {_differences(pa_, pb)}; evaluate both with one eval section")
    if va.empty:
        raise DataError(f"'{a}' has no evaluated examples at stage {stage!r}")
    if set(va.index) != set(vb.index):
        raise DataError(f"'{a}' and '{b}' were evaluated on different examples at stage {stage!r}")
    vb = vb.reindex(va.index)
    return {"a": a, "b": b, "stage": stage, "metric": metric, **paired_test(va.to_numpy(), vb.to_numpy())}


def format_comparison(c: dict[str, Any]) -> str:
    """One readable paragraph for the terminal."""
    return (f"{c['a']} vs {c['b']} — {c['metric']} on {c['stage']} ({c['n']} users): "
            f"{c['mean_a']:.4f} vs {c['mean_b']:.4f}, difference {c['mean_diff']:+.4f} "
            f"[95% CI {c['ci95_low']:+.4f}, {c['ci95_high']:+.4f}]; paired t p={c['t_pvalue']:.3g}, "
            f"Wilcoxon p={c['wilcoxon_pvalue']:.3g}")
