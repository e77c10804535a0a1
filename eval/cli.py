"""Metrics for every scored run: `mmrec eval CONFIG [k=v ...] [--model NAME] [--compare A B]`.

Writes, per run, `metrics/<run>.json` (metrics per stage, counts, and the protocol manifest) and
`metrics/<run>.per_user.parquet` (every example's metrics, for paired tests and the report); prints a table;
aggregates `<model>@seed<k>` runs into mean ± 95% t-interval; writes the experiment's `manifest.json`. On the
synthetic benchmark it also scores the item and user summaries against the known truth (`mmrec/truth.py`,
`metrics/truth/summaries.json`).
Scores produced on another candidate file than the split's current one are refused.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from eval.protocol import build_manifest, check_candidates, check_scores_match, library_versions
from eval.score_cli import full_ranks_path, selected
from eval.significance import compare, format_comparison, per_user_path, shared_stages
from mmrec.commands import add_config_arguments, load_experiment
from mmrec.config import to_dict
from mmrec.errors import DataError
from mmrec.experiment import ExperimentConfig, ExperimentPaths, runs_of
from mmrec.io import read_json, write_json, write_parquet
from mmrec.metrics import (
    display_name,
    evaluate_long,
)
from mmrec.progress import get_logger
from mmrec.ranking import catalogue_manifest, experiment_catalogue, full_ranking_result

log = get_logger("eval")
RATES = ("tie_rate", "invalid_rate", "invalid_positive_rate")


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", action="append", default=None,
                        help="evaluate only this model (repeatable); default: eval.models or every model")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="evaluate the runs <model>@seed<k> (default: experiment.seeds)")
    parser.add_argument("--stage", choices=["test", "valid", "all"], default=None,
                        help="stages to evaluate (default: eval.stages)")
    parser.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"), default=None,
                        help="paired test between two runs or models on the same candidates, on every stage both were "
                             "evaluated on (repeatable); refused when they were evaluated differently")
    parser.add_argument("--metric", default=None,
                        help="per-user metric of --compare (default: ndcg@<largest K>)")


def read_scores(path: Path, run: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: no scores for run '{run}'; run `mmrec score` first")
    df = pd.read_parquet(path)
    missing = {"user_id", "stage", "item_id", "score"} - set(df.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; re-run `mmrec score`")
    return df


def join_scores(candidates: pd.DataFrame, scores: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, int]:
    """Candidates with their score (NaN where the scores file has none); errors on duplicates and on scores
    of pairs that are not candidates. Returns the joined frame and the number of missing scores."""
    key = ["user_id", "stage", "item_id"]
    scores = scores[scores["stage"].isin(candidates["stage"].unique())]
    dup = scores.duplicated(key)
    if dup.any():
        row = scores[dup].iloc[0]
        raise DataError(f"{path}: {int(dup.sum())} duplicate (user_id, stage, item_id) rows, e.g. "
                        f"({row['user_id']}, {row['stage']}, {row['item_id']}); re-run `mmrec score`")
    joined = candidates[key + ["label"]].merge(scores[key + ["score"]], on=key, how="left", indicator=True)
    extra = len(scores) - int((joined["_merge"] == "both").sum())
    if extra:
        raise DataError(f"{path}: {extra} score rows match no candidate of the split; the scores belong to "
                        "another split — re-run `mmrec score`")
    missing = int((joined["_merge"] == "left_only").sum())
    return joined.drop(columns="_merge"), missing


def per_user_frame(keys: pd.DataFrame, per_row: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.concat([keys.reset_index(drop=True), pd.DataFrame(per_row)], axis=1).rename(columns={"auc": "auc_user"})


def evaluate_sampled(cfg: ExperimentConfig, run: str, split: Any, stages: list[str], cands_sha: str
                     ) -> tuple[dict, dict, pd.DataFrame, dict]:
    ev = cfg.section("eval")
    path = cfg.paths.scores(run)
    scores = read_scores(path, run)
    meta = check_scores_match(path, cands_sha)
    metrics, counts, frames = {}, {}, []
    for stage in stages:
        cands = split.candidates[split.candidates["stage"] == stage]
        if cands.empty:
            raise DataError(f"the split has no candidates for stage {stage!r}")
        joined, missing = join_scores(cands, scores[scores["stage"] == stage], path)
        groups = joined.groupby("user_id", sort=False).ngroup().to_numpy()
        res = evaluate_long(groups, joined["label"].to_numpy() == 1, joined["score"].to_numpy(np.float64),
                            ks=ev.ks, tie_policy=ev.tie_policy, metrics=ev.metrics)
        metrics[stage] = {**res.summary, **{r: res.counts[r] for r in RATES}}
        counts[stage] = {**res.counts, "missing_scores": missing}
        keys = joined.drop_duplicates("user_id")[["user_id"]].assign(stage=stage)
        frames.append(per_user_frame(keys, res.per_row))
        if missing:
            log.warning(f"{run}/{stage}: {missing} candidates have no score; counted as invalid (misses)")
    return metrics, counts, pd.concat(frames, ignore_index=True), meta


def evaluate_full(cfg: ExperimentConfig, run: str, split: Any, stages: list[str], cands_sha: str
                  ) -> tuple[dict, dict, pd.DataFrame, dict]:
    ev = cfg.section("eval")
    path = full_ranks_path(cfg.paths, run)
    if not path.is_file():
        raise DataError(f"{path}: no full-ranking scores for run '{run}'; run `mmrec score` with eval.protocol=full")
    meta = check_scores_match(path, cands_sha)
    catalogue = catalogue_manifest(experiment_catalogue(split))
    if meta.get("catalogue") != catalogue:
        raise DataError(f"{path}: ranked over another catalogue ({meta.get('catalogue')}) than the experiment's "
                        f"({catalogue}); re-run `mmrec score`")
    if meta.get("mask_history") != ev.mask_history:
        raise DataError(f"{path}: ranked with mask_history={meta.get('mask_history')} but eval.mask_history="
                        f"{ev.mask_history}; re-run `mmrec score`")
    ranks = pd.read_parquet(path)
    metrics, counts, frames = {}, {}, []
    for stage in stages:
        examples = split.examples[split.examples["stage"] == stage][["user_id"]]
        r = examples.merge(ranks[ranks["stage"] == stage], on="user_id", how="left")
        if r["n_ranked"].isna().any():
            raise DataError(f"{path}: {int(r['n_ranked'].isna().sum())} examples of stage {stage!r} were not ranked; "
                            "re-run `mmrec score --force`")
        res = full_ranking_result(r, ev.ks, ev.tie_policy, ev.metrics)
        metrics[stage] = {**res.summary, **{k: res.counts[k] for k in RATES}}
        counts[stage] = {**res.counts, "items_masked_mean": float(r["n_masked"].mean()) if len(r) else 0.0,
                         "items_unscored_mean": float(r["n_unscored"].mean()) if len(r) else 0.0}
        frames.append(per_user_frame(r[["user_id"]].assign(stage=stage), res.per_row))
    return metrics, counts, pd.concat(frames, ignore_index=True), meta


def evaluate_run(cfg: ExperimentConfig, run_cfg: ExperimentConfig, name: str, run: str, seed: int | None,
                 split: Any, split_dir: Path, stages: list[str], cands_sha: str) -> dict[str, Any]:
    """Evaluate one run, write its metrics JSON and per-user Parquet; returns the JSON object."""
    ev = cfg.section("eval")
    paths = cfg.paths
    fn = evaluate_full if ev.protocol == "full" else evaluate_sampled
    metrics, counts, per_user, meta = fn(cfg, run, split, stages, cands_sha)
    n_cands = split.candidates[split.candidates["stage"].isin(stages)].groupby(["stage", "user_id"]).size()
    protocol = {"name": ev.protocol, "stages": stages,
                "mask_history": ev.mask_history if ev.protocol == "full" else None,
                "candidates_per_example": int(n_cands.max()) if len(n_cands) else 0}
    if ev.protocol == "full":
        protocol["catalogue"] = meta["catalogue"]
    manifest = build_manifest(cfg=run_cfg, model=name, run=run, split=split, split_dir=split_dir,
                              candidates_sha256=cands_sha, protocol=protocol, score_meta=meta)
    write_parquet(per_user, per_user_path(paths, run))
    obj = {"run": run, "model": name, "seed": seed, "metrics": metrics, "counts": counts, "manifest": manifest,
           "per_user": per_user_path(paths, run).name}
    write_json(obj, paths.metrics(run))
    return obj


def aggregate(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """stage -> model -> metric -> {mean, ci95, n} over the model's runs (ci95 = t-interval half-width)."""
    from mmrec.metrics import mean_ci

    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_model.setdefault(r["model"], []).append(r)
    for model, rs in by_model.items():
        for stage in rs[0]["metrics"]:
            names = rs[0]["metrics"][stage]
            cells = {}
            for m in names:
                mean, half, n = mean_ci([r["metrics"][stage].get(m, float("nan")) for r in rs])
                cells[m] = {"mean": mean, "ci95": half, "n": n}
            out.setdefault(stage, {})[model] = cells
    return out


def print_table(results: list[dict[str, Any]], agg: dict, ks: list[int], stages: list[str]) -> None:
    """One line per run (and per model over seeds); HR, NDCG, MRR at every K plus the value metrics."""
    for stage in stages:
        first = results[0]["metrics"][stage]
        cols = [m for fam in ("hr", "ndcg", "mrr") for k in sorted(ks) if (m := f"{fam}@{k}") in first]
        cols += [m for m in ("gauc", "auc", "tie_rate", "invalid_rate") if m in first]
        width = max(12, *(len(r["run"]) for r in results))
        print(f"\n[{stage}] protocol={results[0]['manifest']['protocol']['name']} "
              f"tie_policy={results[0]['manifest']['tie_policy']}")
        header = {"tie_rate": "ties", "invalid_rate": "invalid"}
        print(f"{'run':<{width}} " + " ".join(f"{header.get(c) or display_name(c):>9}" for c in cols))
        for r in results:
            print(f"{r['run']:<{width}} " + " ".join(f"{r['metrics'][stage].get(c, float('nan')):>9.4f}" for c in cols))
        for model, cells in agg.get(stage, {}).items():
            if next(iter(cells.values()))["n"] > 1:
                print(f"{model + ' (mean)':<{width}} " + " ".join(f"{cells[c]['mean']:>9.4f}" for c in cols))
                print(f"{'  ± 95% CI':<{width}} " + " ".join(f"{cells[c]['ci95']:>9.4f}" for c in cols))


def write_experiment_manifest(cfg: ExperimentConfig, results: list[dict[str, Any]], agg: dict,
                              comparisons: list[dict[str, Any]], cands_sha: str) -> Path:
    """`manifest.json`: the protocol and every evaluated run (runs evaluated earlier are kept)."""
    paths = cfg.paths
    old = read_json(paths.manifest) if paths.manifest.is_file() else {}
    runs = {**old.get("runs", {}), **{r["run"]: {"model": r["model"], "seed": r["seed"],
                                                 "metrics": str(paths.metrics(r["run"]).relative_to(paths.root)),
                                                 "protocol": r["manifest"]["protocol"]} for r in results}}
    manifest = {"experiment": to_dict(cfg.experiment), "eval": to_dict(cfg.section("eval")),
                "split": results[0]["manifest"]["split"] if results else old.get("split"),
                "dataset": results[0]["manifest"]["dataset"] if results else old.get("dataset"),
                "candidates_sha256": cands_sha,
                "catalogue": (results[0]["manifest"]["protocol"].get("catalogue") if results else old.get("catalogue")),
                "runs": runs, "aggregates": agg,
                "comparisons": comparisons or old.get("comparisons", []), "versions": library_versions()}
    return write_json(manifest, paths.manifest)


def main(args: argparse.Namespace) -> int:
    from mmrec.data.splits import load_split

    cfg = load_experiment(args)
    ev = cfg.section("eval")
    names, seeds, stages = selected(cfg, args.model, args.seeds, args.stage)
    paths = cfg.paths
    split_dir = cfg.split_dir
    split = load_split(split_dir)
    cands_sha = check_candidates(split, split_dir)
    results = []
    for name, run, run_cfg in runs_of(cfg, names, seeds):
        results.append(evaluate_run(cfg, run_cfg, name, run, run_cfg.seed if seeds else None, split, split_dir,
                                    stages, cands_sha))
        log.info(f"{run}: metrics -> {paths.metrics(run)}")
    agg = aggregate(results)
    print_table(results, agg, ev.ks, stages)
    comparisons = []
    metric = args.metric or f"ndcg@{max(ev.ks)}"
    for a, b in args.compare or []:
        common = [s for s in shared_stages(paths, a, b) if s in stages]
        if not common:
            raise DataError(f"--compare {a} {b}: the two share no evaluated stage among {', '.join(stages)}; "
                            "evaluate both on one stage")
        for stage in common:
            c = compare(paths, a, b, stage, metric)
            comparisons.append(c)
            print(format_comparison(c))
    write_experiment_manifest(cfg, results, agg, comparisons, cands_sha)
    write_summary_truth(paths, split)
    return 0


def write_summary_truth(paths: ExperimentPaths, split: Any) -> None:
    """On a benchmark with known truth (synthetic), score the summaries against it: print and write the metrics."""
    from mmrec.truth import format_truth, summary_truth, truth_path

    truth = summary_truth(split.dataset.root, paths, split.examples)
    if truth is None:
        truth_path(paths).unlink(missing_ok=True)  # metrics of summaries that are gone would be stale
        return
    print("\n" + format_truth(truth))
    write_json(truth, truth_path(paths))
    log.info(f"summary truth metrics -> {truth_path(paths)}")
