"""Render a `Report` as one self-contained HTML page: inline CSS, plots and thumbnails as data URIs, no scripts,
no external resources; every piece of text goes through `html.escape`."""
from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING

from eval.report_data import best_of, fmt_cell, key_facts, metric_label, table_layout
from eval.report_gallery import GalleryItem, GalleryUser, fmt_score
from eval.report_images import data_uri
from eval.throughput import RATE_LABEL, fmt_rate, rate_note
from mmrec.truth import TRUTH_CAPTION, TRUTH_HEADER, truth_rows

if TYPE_CHECKING:
    from eval.report import Report

SVG = "image/svg+xml"

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;\
margin:0;color:#1d1d1f;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:26px}\
h2{margin:32px 0 12px;font-size:20px;border-bottom:2px solid #e3e6ea;padding-bottom:4px}
h3{margin:0 0 8px;font-size:16px}.sub{color:#5f6368;margin:6px 0 16px;font-size:13px}
nav a{margin-right:14px;color:#0b57d0;text-decoration:none;font-size:14px}
table{border-collapse:collapse;background:#fff;font-size:13px}\
th,td{border:1px solid #e3e6ea;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.best{font-weight:700;color:#0b57d0}.wrap{overflow-x:auto}
.tables{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.tables>p{flex-basis:100%;margin:0}
.manifest{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}.manifest>div{flex:1 1 300px;min-width:0}
details summary{cursor:pointer;font-size:13px;font-weight:600;margin:8px 0}
.manifest td{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px;word-break:break-all}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:16px}
figure{margin:0;background:#fff;border:1px solid #e3e6ea;border-radius:6px;padding:8px}
figure img{width:100%;max-width:620px;height:auto;display:block;margin:0 auto}\
figcaption{font-size:12px;color:#5f6368;margin-top:4px}
.card{background:#fff;border:1px solid #e3e6ea;border-radius:8px;padding:16px;margin-bottom:20px}
.history{display:flex;gap:10px;overflow-x:auto;padding-bottom:6px}
.item{flex:0 0 132px;font-size:11px}.item .t{font-weight:600;margin-top:3px}\
.item .s{color:#5f6368;margin-top:2px;max-height:10em;overflow-y:auto}
.cands .s{color:#5f6368;font-size:12px;max-height:4.5em;overflow-y:auto}
.thumb{width:96px;height:96px;object-fit:contain;background:#f0f2f5;border-radius:4px;display:block}
.noimg{width:96px;height:96px;background:#eceff3;border-radius:4px;display:flex;align-items:center;justify-content:center;color:#9aa0a6;font-size:11px}
.cands .thumb,.cands .noimg{width:48px;height:48px}
tr.true td{background:#e6f4ea}.badge{background:#188038;color:#fff;border-radius:3px;padding:1px 5px;font-size:11px}
ol.steps{margin:4px 0 12px;padding-left:22px;font-size:13px}ol.steps li{margin-bottom:4px}
.label{font-size:13px;font-weight:600;margin:12px 0 6px}.notes li{font-size:13px;color:#5f6368}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
"""


def _img(item: GalleryItem, cls: str = "thumb") -> str:
    alt = escape(item.title or item.item_id)
    if item.thumb is None:
        return f"<div class='noimg' title='{alt}'>no image</div>"
    return f"<img class='{cls}' src='{data_uri(item.thumb)}' alt='{alt}'>"


def _cell(table, model: str, column: str, best: float | None, bold_model: bool = False) -> str:
    cell = table.rows[model].get(column)
    mean, _, pm = fmt_cell(cell).partition(" ± ")
    ci = f"<br><small>± {escape(pm)}</small>" if pm else ""
    cls = "num best" if best is not None and cell is not None and cell[0] == best else "num"
    return f"<td class='{cls}'>{escape(mean)}{ci}</td>"


def _results(report: "Report") -> str:
    """A grid of metric@K (family and model as rows, K as columns), then the value metrics per model."""
    t = report.table
    families, ks, values = table_layout(t)
    seeds = {m: ", ".join("–" if s is None else str(s) for s in t.seeds[m]) for m in t.rows}
    parts = []
    if families:
        head = "<th>metric</th><th>model</th>" + "".join(f"<th>@{k}</th>" for k in ks)
        rows = []
        for fam in families:
            for i, m in enumerate(t.rows):
                first = f"<th rowspan='{len(t.rows)}'>{escape(metric_label(fam))}</th>" if i == 0 else ""
                cells = "".join(_cell(t, m, f"{fam}@{k}", best_of(t, f"{fam}@{k}")) for k in ks)
                rows.append(f"<tr>{first}<td><b>{escape(m)}</b></td>{cells}</tr>")
        parts.append(f"<div class='wrap'><table><thead><tr>{head}</tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table></div>")
    speed = report.throughput
    head = ("<th>model</th><th>seeds</th>" + "".join(f"<th>{escape(metric_label(c))}</th>" for c in values)
            + (f"<th>{escape(RATE_LABEL)}</th>" if speed else ""))
    rate = {m: f"<td class='num'>{escape(fmt_rate(speed.get(m)))}</td>" if speed else ""
            for m in t.rows}
    rows = "".join(f"<tr><td><b>{escape(m)}</b></td><td>{escape(seeds[m])}</td>"
                   + "".join(_cell(t, m, c, best_of(t, c)) for c in values) + rate[m] + "</tr>" for m in t.rows)
    parts.append(f"<div class='wrap'><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")
    parts.append("<p class='sub'>Mean ± 95% t-interval half-width over seeds (one value when a model ran once); "
                 "best in blue. Invalid scores count as misses; tie and invalid rates are diagnostics "
                 "(lower is better)." + (f" {escape(rate_note(speed))}" if speed else "") + "</p>")
    return "<div class='tables'>" + "".join(parts) + "</div>"


def _distillation(report: "Report") -> str:
    from eval.report_distill import html

    return html(report.distillation)


def _comparisons(report: "Report") -> str:
    if not report.comparisons:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("A vs B", "metric", "users", "A", "B", "A − B [95% CI]",
                                               "paired t p", "Wilcoxon p"))
    rows = "".join(
        f"<tr><td>{escape(c['a'])} vs {escape(c['b'])}</td><td>{escape(metric_label(c['metric']))}</td>"
        f"<td class='num'>{c['n']}</td><td class='num'>{c['mean_a']:.4f}</td><td class='num'>{c['mean_b']:.4f}</td>"
        f"<td class='num'>{c['mean_diff']:+.4f} [{c['ci95_low']:+.4f}, {c['ci95_high']:+.4f}]</td>"
        f"<td class='num'>{c['t_pvalue']:.3g}</td><td class='num'>{c['wilcoxon_pvalue']:.3g}</td></tr>"
        for c in report.comparisons)
    return ("<p class='label'>Paired tests: the best model against each other one, per-user metric "
            f"(seeds averaged)</p><div class='wrap'><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table></div>")


def _truth(report: "Report") -> str:
    if not report.truth:
        return ""
    head = "".join(f"<th>{escape(h)}</th>" for h in TRUTH_HEADER)
    rows = "".join(f"<tr><td>{escape(r[0])}</td>" + "".join(f"<td class='num'>{escape(c)}</td>" for c in r[1:])
                   + "</tr>" for r in truth_rows(report.truth))
    return (f"<p class='label'>{escape(TRUTH_CAPTION)}</p>"
            f"<div class='wrap'><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>")


def _kv_table(entries: dict[str, str]) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>" for k, v in entries.items())
    return f"<table>{rows}</table>"


def _manifest(report: "Report") -> str:
    """Key facts shared by every run (what makes the numbers comparable), the full manifest and each run's own
    entries folded below them."""
    if not report.shared_manifest and not report.run_manifests:
        return "<p>(the metrics files carry no manifest)</p>"
    facts = key_facts(report.shared_manifest)
    parts = [f"<div><p class='label'>Shared by every run</p>{_kv_table(facts or report.shared_manifest)}"]
    if facts and len(facts) < len(report.shared_manifest):
        parts.append(f"<details><summary>full shared manifest ({len(report.shared_manifest)} entries)</summary>"
                     f"{_kv_table(report.shared_manifest)}</details>")
    parts.append("</div>")
    if report.run_manifests:
        runs = "".join(f"<details><summary>{escape(run)}</summary>{_kv_table(entries)}</details>"
                       for run, entries in report.run_manifests.items())
        parts.append(f"<div><p class='label'>Specific to each run</p>{runs}</div>")
    return f"<div class='manifest'>{''.join(parts)}</div>"


def _user(u: GalleryUser) -> str:
    shown = (f"last {len(u.history)} of {u.history_total}" if u.history_total > len(u.history)
             else str(u.history_total))
    hist = "".join(f"<div class='item'>{_img(it)}<div class='t'>{escape(it.title or it.item_id)}</div>"
                   f"<div class='s'>{escape(it.summary or '')}</div></div>"
                   for it in u.history) or "<p>(empty history)</p>"
    parts = [f"<div class='card' id='user-{escape(u.user_id)}'><h3>User <code>{escape(u.user_id)}</code> · "
             f"{escape(u.stage)}</h3>",
             f"<p class='label'>History ({shown} items, oldest first)</p><div class='history'>{hist}</div>"]
    steps = u.steps or ([u.preference] if u.preference else [])
    if steps:
        parts.append("<p class='label'>Preference at every recurrence step</p><ol class='steps'>"
                     + "".join(f"<li>{escape(s)}</li>" for s in steps) + "</ol>")
    ranked_by = (f"ranked by <code>{escape(u.ranking_run)}</code>" if u.ranking_run
                 else "in candidate-file order (no scores)")
    head = "".join(f"<th>{escape(h)}</th>" for h in ["rank", "", "item"]) + "".join(
        f"<th>{escape(r)}<br><small>score (rank)</small></th>" for r in u.runs)
    rows = []
    for c in u.candidates:
        rank = c.ranks.get(u.ranking_run, "") if u.ranking_run else ""
        badge = " <span class='badge'>true item</span>" if c.label == 1 else ""
        cells = [f"<td class='num'>{rank}</td>", f"<td>{_img(c.item)}</td>",
                 f"<td>{escape(c.item.title or '')} <code>{escape(c.item.item_id)}</code>{badge}"
                 f"<div class='s'>{escape(c.item.summary or '')}</div></td>"]
        cells += [f"<td class='num'>{escape(fmt_score(c.scores[r]))} ({c.ranks[r]})</td>" for r in u.runs]
        rows.append(f"<tr class='{'true' if c.label == 1 else ''}'>" + "".join(cells) + "</tr>")
    if u.user_metric:
        ranked_by += f"; {escape(metric_label(u.user_metric[0]))} on this user: {u.user_metric[1]:.4f}"
    parts.append(f"<p class='label'>Candidates ({len(u.candidates)} of {u.n_candidates} shown, {ranked_by})</p>"
                 f"<div class='wrap'><table class='cands'><thead><tr>{head}</tr></thead>"
                 f"<tbody>{''.join(rows)}</tbody></table></div></div>")
    return "".join(parts)


def render_html(report: "Report") -> str:
    t = report.table
    sections = (["results", "manifest"] + (["plots"] if report.plots else [])
                + (["gallery"] if report.gallery else []) + (["notes"] if report.notes else []))
    body = [f"<h1>{escape(report.title)}</h1>",
            f"<p class='sub'>Experiment <code>{escape(report.experiment_dir)}</code> · "
            f"stage <b>{escape(report.stage)}</b> · "
            f"{len(report.runs)} run(s) of {len(t.rows)} model(s)</p>",
            "<nav>" + "".join(f"<a href='#{s}'>{s.capitalize()}</a>" for s in sections) + "</nav>",
            f"<h2 id='results'>Results</h2>{_results(report)}{_comparisons(report)}{_truth(report)}"
            f"{_distillation(report)}",
            f"<h2 id='manifest'>Protocol manifest</h2>{_manifest(report)}"]
    if report.plots:
        figs = "".join(f"<figure><img src='{data_uri(p.svg.encode(), SVG)}' alt='{escape(p.caption)}'>"
                       f"<figcaption>{escape(p.caption)}</figcaption></figure>" for p in report.plots)
        body.append(f"<h2 id='plots'>Plots</h2><div class='plots'>{figs}</div>")
    if report.gallery:
        body.append("<h2 id='gallery'>Gallery</h2>" + "".join(_user(u) for u in report.gallery))
    if report.notes:
        body.append("<h2 id='notes'>Notes</h2><ul class='notes'>"
                    + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{escape(report.title)}</title><style>{CSS}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")

