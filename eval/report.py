"""`mmrec report`: gather an experiment's artifacts into one `Report`, then write `report.md` (+ `report_assets/`)
and a self-contained `report.html`.

Every input beyond the metrics is optional: a missing split, dataset, scores file, summary table or training log
removes that part of the report and adds a note saying what to run to get it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from eval import report_data as rd
from eval.report_gallery import GalleryUser, build_gallery, sample_users
from eval.report_images import Thumbnails
from eval.svg import histogram_chart, line_chart
from eval.throughput import model_throughput
from mmrec.errors import DataError, MmrecError
from mmrec.eval_config import ReportConfig
from mmrec.experiment import ExperimentPaths
from mmrec.io import atomic_dir, write_text
from mmrec.truth import read_truth

ASSETS_DIR = "report_assets"
SCORE_PLOT_USERS = 50_000  # score histograms use a seeded sample of users beyond this (bounded memory)


@dataclass
class Plot:
    name: str      # file stem under report_assets/plots/
    caption: str
    svg: str


@dataclass
class Report:
    """Everything the renderers show; built by `gather`, rendered by `report_md` and `report_html`."""

    title: str
    experiment_dir: str
    stage: str
    runs: list[rd.RunResult]
    table: rd.ResultsTable
    shared_manifest: dict[str, str]
    run_manifests: dict[str, dict[str, str]]
    plots: list[Plot] = field(default_factory=list)
    gallery: list[GalleryUser] = field(default_factory=list)
    comparisons: list[dict[str, Any]] = field(default_factory=list)  # eval.significance.compare results
    notes: list[str] = field(default_factory=list)
    truth: dict[str, Any] | None = None  # mmrec.truth metrics of the summaries (synthetic benchmark only)
    distillation: list[dict[str, Any]] = field(default_factory=list)  # eval.report_distill rows
    throughput: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> eval.throughput figures


def _read_parquet(path: Path, what: str, needed: set[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: {what} is not a readable Parquet file ({e})") from None
    missing = needed - set(df.columns)
    if missing:
        raise DataError(f"{path}: {what} lacks column(s) {sorted(missing)}")
    return df


def _find_split(paths: ExperimentPaths, name: str | None, runs: list[rd.RunResult]) -> Path | None:
    """The split directory: the configured name, else the one named in the manifests, else the only one."""
    if name:
        return paths.split(name)
    for r in runs:
        for key in ("split", "split_name", "split.name"):
            v = rd.flatten(r.manifest).get(key)
            if isinstance(v, str) and paths.split(v).is_dir():
                return paths.split(v)
    found = (sorted(p for p in paths.split("x").parent.glob("*") if p.is_dir())
             if paths.split("x").parent.is_dir() else [])
    return found[0] if len(found) == 1 else None


def _load_split(split_dir: Path | None) -> tuple[Any | None, str | None]:
    """(Split, None) or (None, why it is unavailable)."""
    if split_dir is None or not split_dir.is_dir():
        return None, "no split directory found (run `mmrec split`; a config names it in split.name)"
    from mmrec.data.splits import load_split

    try:
        return load_split(split_dir), None
    except MmrecError as e:
        return None, f"split {split_dir} could not be loaded: {e}"


def _training_plots(paths: ExperimentPaths, runs: list[rd.RunResult]) -> list[Plot]:
    """Per model, one chart of its loss curves and one of its other logged values, a line per seed run."""
    curves: dict[str, dict[str, dict[str, list[tuple[float, float]]]]] = {}  # model -> kind -> series
    x_names: dict[str, str] = {}
    for r in runs:
        records = rd.read_train_log(paths, r.run)
        if not records:
            continue
        x_names[r.model], run_curves = rd.train_curves(records)
        for key, points in run_curves.items():
            kind = "loss" if "loss" in key else "speed" if key == "epoch_seconds" else "validation"
            curves.setdefault(r.model, {}).setdefault(kind, {})[(r.run, key)] = points
    plots = []
    for model, kinds in curves.items():
        for kind, series in kinds.items():
            keys = {k for _, k in series}
            named = {(run if len(keys) == 1 else f"{run}: {key}"): pts for (run, key), pts in series.items()}
            label = next(iter(keys)) if len(keys) == 1 else kind
            plots.append(Plot(name=f"train_{kind}_{_safe(model)}",
                              caption=f"Training {kind} curves of {model}, one line per run",
                              svg=line_chart(named, title=f"{model}: {label}", x_label=x_names[model], y_label=label,
                                             markers=max(len(p) for p in named.values()) <= 30)))
    return plots


def _training_speed(paths: ExperimentPaths, runs: list[rd.RunResult]) -> list[str]:
    """One line per run whose training log times its epochs: mean seconds per epoch and examples per second."""
    out = []
    for r in runs:
        records = rd.read_train_log(paths, r.run) or []
        secs = [x["epoch_seconds"] for x in records if isinstance(x.get("epoch_seconds"), (int, float))]
        rates = [x["examples_per_second"] for x in records if isinstance(x.get("examples_per_second"), (int, float))]
        if secs:
            rate = f", {sum(rates) / len(rates):,.0f} training examples/s" if rates else ""
            out.append(f"training speed of {r.run}: {sum(secs) / len(secs):.2f} s per epoch over {len(secs)} "
                       f"epochs{rate}")
    return out


def _comparisons(paths: ExperimentPaths, table: rd.ResultsTable, stage: str, notes: list[str]) -> list[dict[str, Any]]:
    """Paired tests (per-user metric, seeds averaged) of the best model against every other model."""
    from eval.significance import compare

    metric, best = table.primary_metric(), table.best_model()
    out = []
    for other in table.rows if metric and len(table.rows) > 1 else []:
        if other == best:
            continue
        try:
            out.append(compare(paths, best, other, stage, metric))
        except MmrecError as e:
            notes.append(f"paired test {best} vs {other} skipped: {e}")
    return out


def _metric_plots(table: rd.ResultsTable) -> list[Plot]:
    plots = []
    for fam, series in rd.k_curves(table).items():
        label = rd.metric_label(f"{fam}@K")
        plots.append(Plot(name=f"{fam}_at_k", caption=f"{label} per model (mean over seeds)",
                          svg=line_chart(series, title=label, x_label="K", y_label=label.split("@")[0],
                                         integer_x=True)))
    return plots


def _first_run_scores(paths: ExperimentPaths, runs: list[rd.RunResult], stage: str, users: list[str] | None,
                      notes: list[str]) -> dict[str, pd.DataFrame]:
    """Scores (of `users`, when given) of the first run (lowest seed) of every model: what the score plots and
    the gallery show."""
    scores: dict[str, pd.DataFrame] = {}
    first: dict[str, str] = {}
    for r in runs:
        first.setdefault(r.model, r.run)
    for run in first.values():
        df = rd.read_scores(paths, run, stage, users)
        if df is None:
            notes.append(f"no scores for run '{run}' ({paths.scores(run)}): "
                         "its score plot and gallery column are omitted")
            continue
        scores[run] = df
    return scores


def gather(paths: ExperimentPaths, opts: ReportConfig, *, split: str | None = None, seed: int = 0,
           title: str | None = None) -> Report:
    """Read the experiment directory and build the report content (no files written).

    `split` names the split directory (default: the one the manifests name, else the only one); `seed` draws the
    gallery users; `title` is used when `opts.title` is unset."""
    runs = rd.read_runs(paths, opts.stage)
    if not runs:
        raise DataError(f"{paths.metrics('x').parent}: no metrics for stage '{opts.stage}'; "
                        "run `mmrec score` and `mmrec eval` first")
    table = rd.results_table(runs)
    shared, per_run = rd.split_manifest(runs)
    notes: list[str] = []
    comparisons = _comparisons(paths, table, opts.stage, notes)
    plots = _metric_plots(table)
    split_data, why = _load_split(_find_split(paths, split, runs))
    if why:
        notes.append(f"{why}: score distributions and the gallery are omitted")
    scores, gallery_users = {}, []
    if split_data is not None:
        n_users = split_data.candidates.loc[split_data.candidates["stage"] == opts.stage, "user_id"].nunique()
        gallery_users = sample_users(split_data.candidates, opts.stage, opts.gallery_users, seed)
        plotted = sample_users(split_data.candidates, opts.stage, SCORE_PLOT_USERS, seed)
        if n_users > SCORE_PLOT_USERS:
            notes.append(f"score distributions drawn from {SCORE_PLOT_USERS} of {n_users} users (seeded sample)")
        users = sorted(set(plotted) | set(gallery_users)) if n_users > SCORE_PLOT_USERS else None
        scores = _first_run_scores(paths, runs, opts.stage, users, notes)
        for run, df in scores.items():
            df = df[df["user_id"].isin(plotted)] if users is not None else df
            groups = rd.score_groups(rd.labelled_scores(df, split_data.candidates, opts.stage))
            plots.append(Plot(name=f"scores_{_safe(run)}",
                              caption=f"Score distribution of positives vs negatives, {run}",
                              svg=histogram_chart(groups, title=f"scores: {run}", x_label="score",
                                                  bins=opts.histogram_bins)))
    if any(rd.flatten(r.manifest).get("protocol.name") == "full" for r in runs):
        notes.append("metrics rank the full catalogue; score plots and the gallery show the split's persisted "
                     "sampled candidates")
    plots += _training_plots(paths, runs)
    notes += _training_speed(paths, runs)
    if not any(p.name.startswith("train_") for p in plots):
        notes.append("no training logs (checkpoints/<run>/train_log.jsonl): training curves are omitted")
    gallery = _gallery(paths, split_data, runs, table, scores, opts, gallery_users, notes)
    throughput = model_throughput(paths, runs)
    return Report(title=opts.title or title or "mmrec experiment report", experiment_dir=str(paths.root),
                  stage=opts.stage, runs=runs, table=table, shared_manifest=shared, run_manifests=per_run,
                  plots=plots, gallery=gallery, comparisons=comparisons, notes=notes, truth=read_truth(paths),
                  distillation=_distillation(paths, runs, table, throughput), throughput=throughput)


def _distillation(paths: ExperimentPaths, runs: list[rd.RunResult], table: rd.ResultsTable,
                  throughput: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    from eval.report_distill import distillation

    metrics = [m for m in ("auc", table.primary_metric()) if m in table.columns]
    return distillation(paths, runs, list(dict.fromkeys(metrics)), throughput)


def _gallery(paths: ExperimentPaths, split: Any, runs: list[rd.RunResult], table: rd.ResultsTable,
             scores: dict[str, pd.DataFrame], opts: ReportConfig, users: list[str],
             notes: list[str]) -> list[GalleryUser]:
    """The gallery of `users` (empty without a split); optional inputs that are missing become notes."""
    if split is None or not users:
        return []
    model = opts.ranking_model or table.best_model()
    if opts.ranking_model and opts.ranking_model not in table.rows:
        raise DataError(f"report.ranking_model '{opts.ranking_model}' has no metrics (models: {', '.join(table.rows)})")
    ranking_run = next((r.run for r in runs if r.model == model and r.run in scores), None)
    item_summaries = _read_parquet(paths.item_summaries, "item summaries", {"item_id", "summary"})
    user_summaries = _read_parquet(paths.user_summaries, "user summaries", {"user_id", "preference"})
    if item_summaries is None:
        notes.append(f"no item summaries ({paths.item_summaries}): the gallery shows titles only")
    if user_summaries is None:
        notes.append(f"no user preferences ({paths.user_summaries}): the gallery shows no preference text")
    dataset = split.dataset
    thumbs = Thumbnails(dataset.root, opts.thumb_size)
    gallery = build_gallery(users=users, stage=opts.stage, examples=split.examples, candidates=split.candidates,
                            items=dataset.items, scores=scores, ranking_run=ranking_run, item_summaries=item_summaries,
                            user_summaries=user_summaries, thumbs=thumbs, max_history=opts.gallery_history,
                            max_candidates=opts.gallery_candidates)
    _attach_user_metrics(paths, gallery, ranking_run, table.primary_metric(), opts.stage)
    issues = thumbs.policy.counts()
    if issues:
        notes.append("some item images could not be shown: " + ", ".join(f"{n} {k}" for k, n in issues.items()))
    return gallery


def _attach_user_metrics(paths: ExperimentPaths, gallery: list[GalleryUser], run: str | None, metric: str | None,
                         stage: str) -> None:
    """Each gallery user's value of `metric` under the ranking run, from the per-user file `mmrec eval` wrote."""
    from eval.significance import per_user_path

    f = per_user_path(paths, run) if run and metric else None
    df = _read_parquet(f, "per-user metrics", {"user_id", "stage"}) if f is not None else None
    if df is None or metric not in df.columns:
        return
    values = df[df["stage"] == stage].assign(user_id=lambda d: d["user_id"].astype(str)).set_index("user_id")[metric]
    for u in gallery:
        if u.user_id in values.index:
            u.user_metric = (metric, float(values.loc[u.user_id]))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def write_report(report: Report, paths: ExperimentPaths, formats: list[str]) -> list[Path]:
    """Write the requested formats atomically; returns the files written."""
    from eval.report_html import render_html
    from eval.report_md import render_markdown

    written = []
    if "md" in formats:
        text, assets = render_markdown(report, ASSETS_DIR)
        with atomic_dir(paths.root / ASSETS_DIR) as tmp:
            for rel, data in assets.items():
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        written.append(write_text(text, paths.report_md))
    if "html" in formats:
        written.append(write_text(render_html(report), paths.report_html))
    return written
