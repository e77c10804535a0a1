"""Score models on the split's persisted candidates: `mmrec score CONFIG [k=v ...] [--model NAME] [--seeds 0 1]`.

Writes `scores/<run>.parquet` (user_id, stage, item_id, score) with exactly one row per candidate of the
evaluated stages, in the candidate file's order; a model that cannot score a pair returns NaN, which is kept
and counted as a miss. With `eval.protocol: full` it also ranks the whole catalogue for models that can
(`CatalogueScorer`) and writes `scores/<run>.full.parquet`: per example the target and how many catalogue items
scored above it / tied with it (history items excluded when `eval.mask_history`), which is all the metrics need.
Every model ranks one catalogue, the dataset's items (`mmrec.ranking.experiment_catalogue`); an item a model cannot
score (e.g. one SASRec never saw in training) gets the worst-case score: it never ranks above the target, and as
the target it ranks last (a miss). Their number per example is `n_unscored`.

Work is done in chunks of `eval.batch_users` examples saved as they finish, so an interrupted run resumes where
it stopped; a finished scores file whose inputs (candidate file, checkpoint, stages) are unchanged is skipped (and
keeps what it recorded). The sampled scores' metadata records the scoring throughput (`eval.throughput`:
candidates, CPU and wall seconds of the scorer's calls, torch threads, device), which `mmrec report` shows.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from eval.protocol import SCORES_META_KEY, check_candidates, checkpoint_fingerprint, scores_metadata
from eval.throughput import THROUGHPUT_KEY, ScoringClock, pooled_rate
from mmrec.commands import add_config_arguments, load_experiment
from mmrec.config import to_dict
from mmrec.errors import ConfigError, DataError
from mmrec.experiment import ExperimentConfig, ExperimentPaths, runs_of
from mmrec.io import hash_json, read_json, write_json, write_parquet
from mmrec.progress import get_logger, progress
from mmrec.ranking import FULL_COLUMNS, catalogue_columns, catalogue_manifest, experiment_catalogue, rank_catalogue

log = get_logger("score")


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--model", action="append", default=None,
                        help="score only this model (repeatable); default: eval.models or every model")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="score the runs <model>@seed<k> (default: eval.seeds, else experiment.seeds)")
    parser.add_argument("--stage", choices=["test", "valid", "all"], default=None,
                        help="stages to score (default: eval.stages)")
    parser.add_argument("--force", action="store_true", help="re-score even when the scores are up to date")


def full_ranks_path(paths: ExperimentPaths, run: str) -> Path:
    """Where the full-ranking protocol's per-example target ranks go (beside `scores/<run>.parquet`)."""
    return paths.scores(run).with_name(f"{run}.full.parquet")


def selected(cfg: ExperimentConfig, models: list[str] | None, seeds: list[int] | None, stage: str | None
             ) -> tuple[list[str], list[int] | None, list[str]]:
    """(model names, seeds, stages) from command-line choices, else the eval section (seeds: experiment.seeds)."""
    ev = cfg.section("eval")
    names = models or ev.models or cfg.model_names()
    for n in names:
        cfg.model(n)  # validates, and names the config and the model on error
    if not names:
        raise ConfigError(f"{cfg.source}: no models to score; add some under 'models'")
    seeds = seeds or cfg.experiment.seeds
    stages = ["valid", "test"] if stage == "all" else [stage] if stage else list(dict.fromkeys(ev.stages))
    return names, seeds, stages


def write_with_meta(df: pd.DataFrame, path: Path, meta: dict[str, Any]) -> Path:
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           SCORES_META_KEY: json.dumps(meta, sort_keys=True).encode()})
    return write_parquet(table, path)


def run_chunks(n_chunks: int, compute: Callable[[int], pd.DataFrame], parts_dir: Path, key: str,
               desc: str) -> pd.DataFrame:
    """Compute chunks 0..n-1, saving each as it finishes; chunks saved under the same `key` are reused."""
    key_file = parts_dir / "key.json"
    if parts_dir.exists() and (not key_file.is_file() or read_json(key_file).get("key") != key):
        shutil.rmtree(parts_dir)  # parts of a different model/candidate file: unusable
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_json({"key": key}, key_file)
    done = 0
    for i in progress(range(n_chunks), desc=desc, unit="chunk"):
        part = parts_dir / f"part-{i:06d}.parquet"
        if part.is_file():
            done += 1
            continue
        write_parquet(compute(i), part)
    if done:
        log.info(f"{desc}: resumed, {done}/{n_chunks} chunks were already scored")
    frames = [pd.read_parquet(parts_dir / f"part-{i:06d}.parquet") for i in range(n_chunks)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _as_scores(values: Any, n: int, run: str) -> np.ndarray:
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise DataError(f"model run '{run}' returned scores that are not numbers ({e})") from None
    if out.shape != (n,):
        raise DataError(f"model run '{run}' returned scores of shape {out.shape} for {n} candidates; a scorer must "
                        "return one score per candidate row, in order")
    return out


def score_sampled(scorer: Any, candidates: pd.DataFrame, batch_users: int, parts_dir: Path, key: str, run: str,
                  clock: ScoringClock | None = None) -> pd.DataFrame:
    """One score per candidate row (same order), computed `batch_users` examples at a time; `clock` times the
    scorer's calls (chunks resumed from disk count as resumed)."""
    cands = candidates[["user_id", "stage", "item_id"]].reset_index(drop=True)
    chunk = cands.groupby(["stage", "user_id"], sort=False).ngroup().to_numpy() // batch_users
    order = np.argsort(chunk, kind="stable")  # the identity unless an example's candidates are not contiguous
    cands, chunk = cands.iloc[order].reset_index(drop=True), chunk[order]
    starts = np.searchsorted(chunk, np.arange(chunk.max() + 2)) if len(chunk) else np.array([0])

    clock = clock or ScoringClock()

    def compute(i: int) -> pd.DataFrame:
        rows = cands.iloc[starts[i]:starts[i + 1]].reset_index(drop=True)
        given = rows.copy()
        return rows.assign(score=_as_scores(clock.time(len(rows), lambda: scorer.score(given)), len(rows), run))

    scored = run_chunks(len(starts) - 1, compute, parts_dir, key, f"score {run}")
    clock.resumed_candidates = len(scored) - clock.candidates
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return scored.iloc[inverse].reset_index(drop=True)  # back to the candidate file's order


def score_full(scorer: Any, examples: pd.DataFrame, mask_history: bool, batch_users: int, parts_dir: Path,
               key: str, run: str, catalogue: list[str] | None = None, mask_items: pd.Series | None = None
               ) -> pd.DataFrame:
    """Rank the experiment's `catalogue` (default: the model's `item_ids`) for every example, `batch_users` at a
    time with resumable chunks, and keep the target's counts (`rank_catalogue`). With `mask_history`, `mask_items`
    (aligned with `examples`; default: each example's history) are left out."""
    catalogue = list(scorer.item_ids) if catalogue is None else list(catalogue)
    catalogue_columns(list(scorer.item_ids), catalogue, run)  # fail before any work
    ex = examples[["user_id", "stage", "history", "target"]].reset_index(drop=True)
    ex["mask_items"] = ex["history"] if mask_items is None else mask_items.to_numpy()
    n_chunks = (len(ex) + batch_users - 1) // batch_users

    def compute(i: int) -> pd.DataFrame:
        rows = ex.iloc[i * batch_users:(i + 1) * batch_users].reset_index(drop=True)
        return rank_catalogue(scorer, rows, catalogue, mask_history, run)

    return run_chunks(n_chunks, compute, parts_dir, key, f"rank catalogue {run}")[FULL_COLUMNS]


def score_run(cfg: ExperimentConfig, run_cfg: ExperimentConfig, name: str, run: str, split: Any, split_dir: Path,
              stages: list[str], force: bool = False) -> list[Path]:
    """Score one run on the sampled candidates (and the catalogue under the full protocol); returns files written."""
    from mmrec.models.base import CatalogueScorer, load_scorer

    paths = cfg.paths
    ev = cfg.section("eval")
    cands_sha = check_candidates(split, split_dir)
    ckpt = paths.checkpoint(run)
    if not ckpt.exists():
        raise DataError(f"{ckpt}: no checkpoint for run '{run}'; "
                        f"run `mmrec finetune {cfg.source} --model {name}` first")
    base = {"run": run, "model": name, "stages": stages, "candidates_sha256": cands_sha,
            "checkpoint_fingerprint": checkpoint_fingerprint(ckpt),
            "model_config": hash_json(to_dict(run_cfg.model(name))), "experiment_seed": run_cfg.seed}
    jobs: list[tuple[str, Path, dict[str, Any]]] = [("sampled", paths.scores(run), {**base, "protocol": "sampled"})]
    catalogue = experiment_catalogue(split) if ev.protocol == "full" else []
    if ev.protocol == "full":
        # in the key, so ranks masked from the truncated history (before this was fixed) are re-scored
        masked = {"masked": "pre_target_items"} if ev.mask_history else {}
        jobs.append(("full", full_ranks_path(paths, run),
                     {**base, "protocol": "full", "mask_history": ev.mask_history, **masked,
                      "catalogue": catalogue_manifest(catalogue)}))
    todo = [(p, out, meta) for p, out, meta in jobs
            if force or not out.is_file() or scores_metadata(out).get("key") != hash_json(meta)]
    if not todo:
        log.info(f"{run}: scores up to date ({paths.scores(run)})")
        return []
    scorer = load_scorer(run_cfg, name, ckpt)
    written = []
    for protocol, out, meta in todo:
        key = hash_json(meta)
        parts = out.with_name(f".{out.stem}.parts")
        if protocol == "sampled":
            cands = split.candidates[split.candidates["stage"].isin(stages)]
            if cands.empty:
                raise DataError(f"{split_dir}: candidates.parquet has no rows for stage(s) {', '.join(stages)}")
            clock = ScoringClock()
            df = score_sampled(scorer, cands, ev.batch_users, parts, key, run, clock)
            if len(df) != len(cands):
                raise DataError(f"{run}: {len(df)} scores for {len(cands)} candidates; delete {parts} and re-run")
            n_nan = int(df["score"].isna().sum())
            speed = clock.record(scorer)
            extra = {THROUGHPUT_KEY: speed}
            pooled = pooled_rate([speed])
            rate = (f"{pooled['rate']:,.0f} candidates per {'CPU' if pooled['clock'] == 'cpu' else 'wall'} second"
                    if pooled else "no candidates timed")
            summary = (f"{len(df)} candidates, {n_nan} invalid (NaN) scores; {rate} "
                       f"({speed['torch_threads']} torch thread(s), {speed['device']})")
        else:
            extra = {}
            if not isinstance(scorer, CatalogueScorer):
                raise ConfigError(f"{cfg.source}: model '{name}' (kind {run_cfg.model(name).kind}) "
                                  "cannot rank the whole catalogue; use eval.protocol=sampled "
                                  "or leave it out with eval.models")
            examples = split.examples[split.examples["stage"].isin(stages)]
            masked = split.pre_target_items(examples) if ev.mask_history else None
            df = score_full(scorer, examples, ev.mask_history, ev.batch_users, parts, key, run, catalogue, masked)
            n_nan = int(df["score"].isna().sum())
            summary = (f"{len(df)} examples ranked over the experiment's {len(catalogue)} items "
                       f"({len(scorer.item_ids)} scored by the model, the others worst-case), "
                       f"{n_nan} targets without a score")
        write_with_meta(df, out, {**meta, "key": key, "invalid_scores": n_nan, **extra})
        shutil.rmtree(parts, ignore_errors=True)
        log.info(f"{run}: {summary} -> {out}")
        written.append(out)
    return written


def main(args: argparse.Namespace) -> int:
    from mmrec.data.splits import load_split

    cfg = load_experiment(args)
    names, seeds, stages = selected(cfg, args.model, args.seeds, args.stage)
    split_dir = cfg.split_dir
    split = load_split(split_dir)
    for name, run, run_cfg in runs_of(cfg, names, seeds):
        score_run(cfg, run_cfg, name, run, split, split_dir, stages, force=args.force)
    return 0
