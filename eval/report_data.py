"""Reading what the report shows: metrics files, the results table across seeds, score distributions, training logs.

Everything here is read-only over an experiment directory and returns plain data; rendering lives in
`report_md` / `report_html`. Optional inputs that are absent give `None` / empty results, never an error;
inputs that are present but malformed raise `DataError` naming the file.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmrec.checkpoint_files import TRAIN_LOG_FILE
from mmrec.errors import DataError
from mmrec.experiment import ExperimentPaths
from mmrec.metrics import mean_ci

RUN_RE = re.compile(r"^(?P<model>.+)@seed(?P<seed>-?\d+)$")
AT_K_RE = re.compile(r"^(?P<family>[a-z_]+)@(?P<k>\d+)$")
# Column order of the results table: metric@K families first (in this order, then by K), then value metrics.
FAMILY_ORDER = ("hr", "hit", "recall", "precision", "ndcg", "mrr", "map")
VALUE_ORDER = ("auc", "gauc", "tie_rate", "invalid_rate")


@dataclass
class RunResult:
    """One evaluated run: `<model>` or `<model>@seed<k>`, its metrics on one stage, and its protocol manifest."""

    run: str
    model: str
    seed: int | None
    stage: str
    metrics: dict[str, float]
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def parse_run_id(run: str) -> tuple[str, int | None]:
    """`sasrec@seed3` -> ("sasrec", 3); `pop` -> ("pop", None). Inverse of `ExperimentPaths.run_id`."""
    m = RUN_RE.match(run)
    return (m["model"], int(m["seed"])) if m else (run, None)


def is_table_metric(name: str) -> bool:
    """Metric@K values and the value metrics/diagnostics the results table shows (not counts like `rows`)."""
    return bool(AT_K_RE.match(name)) or name in VALUE_ORDER


def _numeric(d: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)) or v is None:
            out[str(k).lower()] = float("nan") if v is None else float(v)
    return out


def _stage_metrics(obj: dict[str, Any], stage: str, where: Path) -> dict[str, float] | None:
    """The metrics of `stage` in a metrics file: `metrics` either maps names to numbers or stages to such maps."""
    metrics = obj.get("metrics")
    if not isinstance(metrics, dict):
        raise DataError(f"{where}: no 'metrics' mapping; re-run `mmrec eval` to rewrite it")
    if any(isinstance(v, dict) for v in metrics.values()):
        inner = metrics.get(stage)
        return _numeric(inner) if isinstance(inner, dict) else None
    file_stage = obj.get("stage") or (obj.get("manifest") or {}).get("stage")
    if file_stage is not None and str(file_stage) != stage:
        return None
    return _numeric(metrics)


def read_runs(paths: ExperimentPaths, stage: str) -> list[RunResult]:
    """Every `metrics/<run>.json` that has metrics for `stage`, sorted by model then seed."""
    folder = paths.metrics("x").parent
    runs = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            obj = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{f}: not a readable metrics file ({e}); re-run `mmrec eval`") from None
        if not isinstance(obj, dict):
            raise DataError(f"{f}: a metrics file must hold a JSON object; re-run `mmrec eval`")
        metrics = _stage_metrics(obj, stage, f)
        if metrics is None:
            continue
        run = str(obj.get("run") or f.stem)
        model, seed = parse_run_id(run)
        runs.append(RunResult(run=run, model=str(obj.get("model") or model), seed=seed, stage=stage,
                              metrics=metrics, manifest=obj.get("manifest") or {}, path=f))
    return sorted(runs, key=lambda r: (r.model, -1 if r.seed is None else r.seed))


def metric_sort_key(name: str) -> tuple:
    m = AT_K_RE.match(name)
    if m:
        fam = m["family"]
        return (0, FAMILY_ORDER.index(fam) if fam in FAMILY_ORDER else len(FAMILY_ORDER), fam, int(m["k"]))
    if name in VALUE_ORDER:
        return (1, VALUE_ORDER.index(name), name, 0)
    return (2, 0, name, 0)


@dataclass
class ResultsTable:
    """One row per model: (mean, 95% half-width, n seeds) for every metric column."""

    columns: list[str]
    rows: dict[str, dict[str, tuple[float, float, int]]]
    seeds: dict[str, list[int | None]]

    def primary_metric(self) -> str | None:
        """NDCG at the largest K when evaluated, else the first column: what 'best model' means in the report."""
        ndcg = [c for c in self.columns if c.startswith("ndcg@")]
        return max(ndcg, key=lambda c: int(c.split("@")[1])) if ndcg else (self.columns[0] if self.columns else None)

    def best_model(self, metric: str | None = None) -> str | None:
        """The model with the highest mean on `metric` (default: `primary_metric`)."""
        if not self.rows:
            return None
        metric = metric or self.primary_metric()
        if metric is None:
            return next(iter(self.rows))
        scored = [(v[metric][0], m) for m, v in self.rows.items() if metric in v and math.isfinite(v[metric][0])]
        return max(scored)[1] if scored else next(iter(self.rows))


def results_table(runs: list[RunResult]) -> ResultsTable:
    names = sorted({k for r in runs for k in r.metrics if is_table_metric(k)}, key=metric_sort_key)
    by_model: dict[str, list[RunResult]] = {}
    for r in runs:
        by_model.setdefault(r.model, []).append(r)
    rows = {m: {c: mean_ci([r.metrics.get(c, float("nan")) for r in rs]) for c in names} for m, rs in by_model.items()}
    return ResultsTable(columns=names, rows=rows, seeds={m: [r.seed for r in rs] for m, rs in by_model.items()})


def k_curves(table: ResultsTable) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """family -> model -> [(K, mean)] for every metric@K family with at least two cutoffs."""
    ks: dict[str, list[int]] = {}
    for c in table.columns:
        m = AT_K_RE.match(c)
        if m:
            ks.setdefault(m["family"], []).append(int(m["k"]))
    return {fam: {model: [(k, row[f"{fam}@{k}"][0]) for k in sorted(kk)] for model, row in table.rows.items()}
            for fam, kk in ks.items() if len(kk) >= 2}


def read_scores(paths: ExperimentPaths, run: str, stage: str, users: list[str] | None = None) -> pd.DataFrame | None:
    """`scores/<run>.parquet` rows of `stage` (and of `users` when given, so memory stays bounded on a large
    evaluation) as user_id, stage, item_id, score; None when the run was not scored."""
    import pyarrow.parquet as pq

    f = paths.scores(run)
    if not f.is_file():
        return None
    try:
        names = set(pq.read_schema(f).names)
        missing = {"user_id", "stage", "item_id", "score"} - names
        if missing:
            raise DataError(f"{f}: missing column(s) {sorted(missing)}; re-run `mmrec score`")
        filters = [("stage", "=", stage)] + ([("user_id", "in", users)] if users is not None else [])
        df = pq.read_table(f, columns=["user_id", "stage", "item_id", "score"], filters=filters).to_pandas()
    except DataError:
        raise
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{f}: not a readable Parquet file ({e}); re-run `mmrec score`") from None
    return df.astype({"user_id": str, "stage": str, "item_id": str, "score": np.float64})


def labelled_scores(scores: pd.DataFrame, candidates: pd.DataFrame, stage: str) -> pd.DataFrame:
    """The candidates of `stage` with each run's score joined on (user, item); a candidate without a score gets NaN."""
    cands = candidates[candidates["stage"] == stage][["user_id", "item_id", "label"]]
    s = scores[scores["stage"] == stage][["user_id", "item_id", "score"]]
    return cands.merge(s.drop_duplicates(["user_id", "item_id"]), on=["user_id", "item_id"], how="left")


def score_groups(labelled: pd.DataFrame) -> dict[str, np.ndarray]:
    """Scores of positives and negatives (finite ones; invalid scores are reported by the metrics, not plotted)."""
    return {"positives": labelled.loc[labelled["label"] == 1, "score"].to_numpy(np.float64),
            "negatives": labelled.loc[labelled["label"] != 1, "score"].to_numpy(np.float64)}


def read_train_log(paths: ExperimentPaths, run: str) -> list[dict[str, Any]] | None:
    """`checkpoints/<run>/train_log.jsonl` as a list of records, or None when absent."""
    f = paths.checkpoint(run) / TRAIN_LOG_FILE
    if not f.is_file():
        return None
    records = []
    lines = f.read_text().splitlines()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):  # a crash mid-write leaves a torn last line: skip it
                break
            raise DataError(f"{f}: line {lineno} is not JSON ({e.msg})") from None
        if isinstance(rec, dict):
            records.append(rec)
    return records


# keys of a training log that are positions or bookkeeping, not curves
_AXIS_KEYS = ("step", "global_step", "epoch", "time", "elapsed", "elapsed_s", "wall_s", "lr", "learning_rate",
              "examples_per_second")


def train_curves(records: list[dict[str, Any]]) -> tuple[str, dict[str, list[tuple[float, float]]]]:
    """(x axis name, metric -> [(x, value)]) from log records; x is `step`, else `epoch`, else the record index."""
    x_key = next((k for k in ("step", "global_step", "epoch") if any(k in r for r in records)), None)
    curves: dict[str, list[tuple[float, float]]] = {}
    for i, rec in enumerate(records):
        x = rec.get(x_key, None) if x_key else i
        if not isinstance(x, (int, float)) or isinstance(x, bool):
            continue
        for k, v in _numeric(rec).items():
            if k not in _AXIS_KEYS:
                curves.setdefault(k, []).append((float(x), v))
    return (x_key or "record"), curves


def fmt_cell(cell: tuple[float, float, int] | None, digits: int = 4) -> str:
    """`0.4123 ± 0.0110` (mean ± 95% half-width) over seeds, the plain value for one run, `–` when missing."""
    if cell is None or not math.isfinite(cell[0]):
        return "–"
    mean, half, n = cell
    return f"{mean:.{digits}f} ± {half:.{digits}f}" if n > 1 and math.isfinite(half) else f"{mean:.{digits}f}"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> dotted keys (`split.seed`); lists stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def split_manifest(runs: list[RunResult]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """(entries shared by every run's manifest, run -> entries that differ between runs), values as text."""
    flat = {r.run: {k: json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)
                    for k, v in flatten(r.manifest).items()} for r in runs}
    if not flat:
        return {}, {}
    keys = sorted({k for f in flat.values() for k in f})
    shared = {k: next(iter(flat.values()))[k] for k in keys
              if all(k in f for f in flat.values()) and len({f[k] for f in flat.values()}) == 1}
    differing = {run: {k: v for k, v in f.items() if k not in shared} for run, f in flat.items()}
    return shared, {run: d for run, d in differing.items() if d}


# Manifest entries shown first: what decides whether two numbers are comparable (the rest is one click away).
KEY_FACTS = ("protocol", "tie_policy", "ks", "split.name", "split.info.seed", "seeds", "dataset.fingerprint",
             "dataset.path", "versions.mmrec", "versions.torch", "versions.transformers", "versions.peft")


def key_facts(entries: dict[str, str]) -> dict[str, str]:
    """The entries under one of `KEY_FACTS` (a key or a dotted prefix), in manifest order."""
    return {k: v for k, v in entries.items() if any(k == f or k.startswith(f + ".") for f in KEY_FACTS)}


def metric_label(name: str) -> str:
    """`ndcg@10` -> `NDCG@10`, `recall@K` -> `Recall@K`, `tie_rate` -> `tie rate` (the metrics module's names)."""
    from mmrec.metrics import display_name

    return name.replace("_", " ") if name in ("tie_rate", "invalid_rate") else display_name(name)


def table_layout(table: ResultsTable) -> tuple[list[str], list[int], list[str]]:
    """(metric@K families, cutoffs K, value columns) of a results table, for a families-by-K grid plus a small
    table of value metrics (narrow enough to read without scrolling whatever the number of metrics)."""
    families, ks, values = [], set(), []
    for c in table.columns:
        m = AT_K_RE.match(c)
        if m:
            if m["family"] not in families:
                families.append(m["family"])
            ks.add(int(m["k"]))
        else:
            values.append(c)
    return families, sorted(ks), values


def best_of(table: ResultsTable, column: str) -> float | None:
    """The best mean in a column (lowest for rates, highest otherwise); None when fewer than two models differ."""
    means = [row[column][0] for row in table.rows.values() if column in row and math.isfinite(row[column][0])]
    if len(set(means)) < 2:
        return None
    return min(means) if column in ("tie_rate", "invalid_rate") else max(means)
