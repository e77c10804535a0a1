"""Render a `Report` as Markdown; plots and thumbnails become files under the assets folder it references."""
from __future__ import annotations

import hashlib
from html import escape
from typing import TYPE_CHECKING

from eval.report_data import fmt_cell, key_facts, metric_label, table_layout
from eval.report_gallery import GalleryItem, GalleryUser, fmt_score
from eval.throughput import RATE_LABEL, fmt_rate, rate_note
from mmrec.truth import TRUTH_CAPTION, TRUTH_HEADER, truth_rows

if TYPE_CHECKING:
    from eval.report import Report


def md_cell(text: object) -> str:
    """Text safe inside a Markdown table cell: HTML-escaped, pipes escaped, one line."""
    return escape(str(text)).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


class _Assets:
    """Files the Markdown references, content-addressed so a thumbnail shared by many users is stored once."""

    def __init__(self, folder: str):
        self.folder = folder
        self.files: dict[str, bytes] = {}

    def add(self, sub: str, data: bytes, ext: str, stem: str | None = None) -> str:
        rel = f"{sub}/{stem or hashlib.sha256(data).hexdigest()[:16]}.{ext}"
        self.files[rel] = data
        return f"{self.folder}/{rel}"


def _thumb(item: GalleryItem, assets: _Assets) -> str:
    if item.thumb is None:
        return "(no image)"
    return f"![{md_cell(item.title or item.item_id)}]({assets.add('thumbs', item.thumb, 'png')})"


def _user(u: GalleryUser, assets: _Assets) -> list[str]:
    out = [f"### User `{md_cell(u.user_id)}` ({u.stage})", ""]
    shown = f"last {len(u.history)} of {u.history_total}" if u.history_total > len(u.history) else f"{u.history_total}"
    out += [f"**History** ({shown} items, oldest first)", ""]
    if u.history:
        out += _table(["#", "image", "item", "summary"],
                      [[str(u.history_total - len(u.history) + i + 1), _thumb(it, assets),
                        f"{md_cell(it.title)} `{md_cell(it.item_id)}`", md_cell(it.summary or "")]
                       for i, it in enumerate(u.history)])
    else:
        out.append("(empty history)")
    out.append("")
    if u.steps or u.preference:
        out += ["**Preference at every recurrence step**", ""]
        out += [f"{i}. {md_cell(s)}" for i, s in enumerate(u.steps, start=1)] or [f"1. {md_cell(u.preference)}"]
        out.append("")
    ranked_by = f"ranked by `{md_cell(u.ranking_run)}`" if u.ranking_run else "in candidate-file order (no scores)"
    if u.user_metric:
        ranked_by += f"; {metric_label(u.user_metric[0])} on this user: {u.user_metric[1]:.4f}"
    out += [f"**Candidates** ({len(u.candidates)} of {u.n_candidates} shown, {ranked_by}; ✅ = the true item)", ""]
    header = ["rank", "image", "item", "true"] + [f"{md_cell(r)} score (rank)" for r in u.runs]
    rows = []
    for c in u.candidates:
        rank = str(c.ranks.get(u.ranking_run, "")) if u.ranking_run else ""
        true = "✅" if c.label == 1 else ""
        name = f"{md_cell(c.item.title)} `{md_cell(c.item.item_id)}`"
        if c.label == 1:
            name = f"**{name}**"
        rows.append([rank, _thumb(c.item, assets), name, true]
                    + [f"{fmt_score(c.scores[r])} ({c.ranks[r]})" for r in u.runs])
    out += _table(header, rows) + [""]
    return out


def render_markdown(report: "Report", assets_folder: str) -> tuple[str, dict[str, bytes]]:
    """(Markdown text, {path relative to the assets folder: bytes})."""
    assets = _Assets(assets_folder)
    t = report.table
    out = [f"# {md_cell(report.title)}", "",
           f"Experiment `{md_cell(report.experiment_dir)}` · stage **{report.stage}** · "
           f"{len(report.runs)} run(s) of {len(t.rows)} model(s)", "", "## Results", ""]
    seeds = {m: ", ".join("–" if s is None else str(s) for s in t.seeds[m]) for m in t.rows}
    families, ks, values = table_layout(t)
    if families:
        out += _table(["metric", "model"] + [f"@{k}" for k in ks],
                      [[metric_label(fam) if i == 0 else "", f"**{md_cell(m)}**"]
                       + [fmt_cell(t.rows[m].get(f"{fam}@{k}")) for k in ks]
                       for fam in families for i, m in enumerate(t.rows)])
        out.append("")
    speed = report.throughput
    out += _table(["model", "seeds"] + [metric_label(c) for c in values] + ([RATE_LABEL] if speed else []),
                  [[f"**{md_cell(m)}**", md_cell(seeds[m])] + [fmt_cell(t.rows[m].get(c)) for c in values]
                   + ([fmt_rate(speed.get(m))] if speed else []) for m in t.rows])
    out += ["", "Cells are the mean ± the 95% t-interval half-width over seeds (one value when a model ran once). "
            "Invalid scores count as misses; tie and invalid rates are diagnostics."
            + (f" {md_cell(rate_note(speed))}" if speed else ""), ""]
    if report.comparisons:
        out += ["Paired tests of the best model against each other one (per-user metric, seeds averaged):", ""]
        out += _table(["A vs B", "metric", "users", "A", "B", "A − B [95% CI]", "paired t p", "Wilcoxon p"],
                      [[f"{md_cell(c['a'])} vs {md_cell(c['b'])}", metric_label(c["metric"]), str(c["n"]),
                        f"{c['mean_a']:.4f}", f"{c['mean_b']:.4f}",
                        f"{c['mean_diff']:+.4f} [{c['ci95_low']:+.4f}, {c['ci95_high']:+.4f}]",
                        f"{c['t_pvalue']:.3g}", f"{c['wilcoxon_pvalue']:.3g}"] for c in report.comparisons])
        out.append("")
    if report.truth:
        out += [f"{TRUTH_CAPTION}:", ""] + _table(TRUTH_HEADER, truth_rows(report.truth)) + [""]
    from eval.report_distill import markdown as distill_markdown

    out += distill_markdown(report.distillation)
    out += ["## Protocol manifest", ""]
    facts = key_facts(report.shared_manifest)
    if report.shared_manifest:
        out += _table(["key", "value"],
                      [[f"`{md_cell(k)}`", md_cell(v)] for k, v in (facts or report.shared_manifest).items()])
        if facts and len(facts) < len(report.shared_manifest):
            out += ["", f"<details><summary>Full shared manifest ({len(report.shared_manifest)} entries)</summary>", ""]
            out += _table(["key", "value"],
                          [[f"`{md_cell(k)}`", md_cell(v)] for k, v in report.shared_manifest.items()])
            out += ["", "</details>"]
    else:
        out.append("(the metrics files carry no shared manifest)")
    for run, entries in report.run_manifests.items():
        out += ["", f"<details><summary>Entries specific to {md_cell(run)}</summary>", ""]
        out += _table(["key", "value"], [[f"`{md_cell(k)}`", md_cell(v)] for k, v in entries.items()])
        out += ["", "</details>"]
    out.append("")
    if report.plots:
        out += ["## Plots", ""]
        for p in report.plots:
            out += [f"![{md_cell(p.caption)}]({assets.add('plots', p.svg.encode('utf-8'), 'svg', p.name)})", "",
                    f"*{md_cell(p.caption)}*", ""]
    if report.gallery:
        out += ["## Gallery", ""]
        for u in report.gallery:
            out += _user(u, assets)
    if report.notes:
        out += ["## Notes", ""] + [f"- {md_cell(n)}" for n in report.notes] + [""]
    return "\n".join(out), assets.files
