"""The report's distillation table: for every distilled student (a run whose `run.json` config has a `distill`
section), its teacher, the same student without distillation, and the share of the teacher-student gap closed
(mean ± 95% CI over seeds; `mmrec.distill.summary`), and each model's candidates per second as `mmrec score`
recorded them (`eval.throughput`)."""
from __future__ import annotations

import math
from html import escape
from typing import Any

from eval.report_data import RunResult, fmt_cell, metric_label
from eval.throughput import RATE_LABEL, fmt_rate
from mmrec.checkpoint_files import RUN_FILE
from mmrec.experiment import ExperimentPaths
from mmrec.io import read_json
from mmrec.metrics import mean_ci

IGNORED = ("distill", "device", "score_batch_size")


def _config(paths: ExperimentPaths, run: str) -> dict[str, Any] | None:
    path = paths.checkpoint(run) / RUN_FILE
    return read_json(path).get("config") if path.is_file() else None


def distillation(paths: ExperimentPaths, runs: list[RunResult], metrics: list[str],
                 throughput: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One row per (distilled model, metric): teacher, plain and distilled cells and the gap closed; the first
    row of a model also carries the three models' candidates/s (`eval.throughput.model_throughput`)."""
    throughput = throughput or {}
    from mmrec.distill.summary import gap_summary

    by_model: dict[str, list[RunResult]] = {}
    for r in runs:
        by_model.setdefault(r.model, []).append(r)
    configs = {m: _config(paths, rs[0].run) for m, rs in by_model.items()}
    rows = []
    for model, cfg in configs.items():
        if not cfg or not cfg.get("distill"):
            continue
        teacher = cfg["distill"]["teacher"]
        bare = {k: v for k, v in cfg.items() if k not in IGNORED}
        plain = next((m for m, c in configs.items() if m != model and c and not c.get("distill")
                      and {k: v for k, v in c.items() if k not in IGNORED} == bare), None)
        if teacher not in by_model or plain is None:
            continue
        seeds = {r.seed: r for r in by_model[plain]}
        speed = {role: throughput.get(m) for role, m in (("teacher", teacher), ("plain", plain), ("distilled", model))}
        for i, metric in enumerate(metrics):
            pairs = [(seeds[r.seed].metrics.get(metric, math.nan), r.metrics.get(metric, math.nan))
                     for r in by_model[model] if r.seed in seeds]
            t_runs = {r.seed: r.metrics.get(metric, math.nan) for r in by_model[teacher]}
            t_vals = [t_runs[r.seed] for r in by_model[model] if r.seed in seeds and r.seed in t_runs] \
                or list(t_runs.values())[:1]
            gap = gap_summary(t_vals, [p for p, _ in pairs], [d for _, d in pairs])
            rows.append({"model": model, "plain": plain, "teacher": teacher, "metric": metric,
                         "teacher_cell": mean_ci(list(t_runs.values())),
                         "plain_cell": mean_ci([p for p, _ in pairs]), "distilled_cell": mean_ci([d for _, d in pairs]),
                         "gap": gap, "speed": speed if i == 0 else None})
    return rows


def _gap(g: dict[str, Any]) -> str:
    if not math.isfinite(g["mean"]):
        return "n/a (the plain student is not below the teacher)"
    return f"{g['mean']:.3f}" + (f" ± {g['ci95']:.3f}" if math.isfinite(g["ci95"]) else "")


def _speed(speed: dict[str, dict[str, Any] | None] | None) -> list[str]:
    """Candidates/s of teacher, plain and distilled, and distilled / teacher when both use the same clock (CPU or
    wall seconds, `eval.throughput.pooled_rate`); blank on a model's later rows."""
    if speed is None:
        return [""] * 4
    t, d = speed["teacher"], speed["distilled"]
    ratio = f"{d['rate'] / t['rate']:,.0f}x" if t and d and t["clock"] == d["clock"] else "–"
    return [fmt_rate(t), fmt_rate(speed["plain"]), fmt_rate(d), ratio]


HEADER = ["distilled", "teacher", "plain", "metric", "teacher", "plain", "distilled", "gap closed",
          f"teacher {RATE_LABEL}", f"plain {RATE_LABEL}", f"distilled {RATE_LABEL}", "x teacher"]
NOTE = ("Gap closed = (distilled − plain) / (teacher − plain), per seed, mean ± 95% CI. "
        f"{RATE_LABEL}: candidates scored per CPU second of `mmrec score` on the machine that scored, per wall "
        "second where marked (wall): scored on an accelerator (see the results table's note for threads and "
        "device); x teacher = distilled / teacher, when both are rated on the same clock.")


def cells(row: dict[str, Any]) -> list[str]:
    return [row["model"], row["teacher"], row["plain"], metric_label(row["metric"]), fmt_cell(row["teacher_cell"]),
            fmt_cell(row["plain_cell"]), fmt_cell(row["distilled_cell"]), _gap(row["gap"])] + _speed(row.get("speed"))


def markdown(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    out = ["## Distillation", "", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in cells(r)) + " |" for r in rows]
    return out + ["", NOTE, ""]


def html(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{escape(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells(r)) + "</tr>" for r in rows)
    return (f"<h2 id='distillation'>Distillation</h2><div class='wrap'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></div><p class='label'>{escape(NOTE)}</p>")
