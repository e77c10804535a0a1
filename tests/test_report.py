"""`mmrec report` end to end on a hand-built experiment: the HTML is well-formed, self-contained and shows the
numbers of the metrics files; the Markdown references assets that exist; missing inputs become notes."""
from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest
from test_report_fixtures import make_experiment

VOID = {"meta", "img", "br", "hr", "input", "link", "area", "base", "col", "source", "wbr"}


class Page(HTMLParser):
    """Collects tags, checks nesting, and records every URL-bearing attribute and table cell."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.imgs: list[dict] = []
        self.cells: list[str] = []
        self.tags: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        if tag == "img":
            self.imgs.append(a)
        if tag in ("td", "th"):
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_page(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    assert not page.errors, page.errors[:5]
    assert page.stack == [], f"unclosed tags: {page.stack}"
    return page


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    return make_experiment(tmp_path_factory.mktemp("exp") / "exp")


def test_report_html_is_self_contained_and_shows_the_metrics(experiment, run_cli):
    code, out, err = run_cli("report", "--dir", experiment.root, "report.gallery_users=2", "report.title=My <exp>")
    assert code == 0, err
    assert "report.html" in out and "report.md" in out
    html = experiment.report_html.read_text()
    page = parse_page(html)
    # nothing is fetched: every src/href is a data URI or an in-page anchor; no scripts
    assert page.urls and all(u.startswith(("data:", "#")) for u in page.urls), [u[:40] for u in page.urls]
    assert "script" not in page.tags and "link" not in page.tags
    assert "<title>My &lt;exp&gt;</title>" in html
    # results: pop ran once (plain values); sasrec over seeds 0 and 1 -> mean ± t(0.975, 1) * sd / sqrt(2)
    assert {"pop", "sasrec"} <= set(page.cells)
    assert "0.2500" in page.cells and "0.5500" in page.cells  # pop hr@1, auc
    assert "0.6000± 1.2706" in page.cells  # sasrec hr@1: mean 0.6, sd 0.1414, t(0.975, 1) = 12.706
    assert "1.0000± 0.0000" in page.cells  # sasrec hr@3: identical seeds
    assert "0.1250± 1.5883" in page.cells  # invalid_rate over seeds: 0 and 0.25
    # scoring throughput from the scores' metadata: pop 1000 / 0.01 s, sasrec (3000 + 3000) / (0.002 + 0.004) s
    assert "cand/s" in page.cells and "100,000" in page.cells and "1,000,000" in page.cells
    assert "per CPU second (time.process_time" in html and "1 thread(s), device cpu" in html
    # the manifest beside it: shared entries once, run-specific ones per run
    assert "c0ffee" * 4 in html and "tie_policy" in page.cells
    # plots: metric@K curves, score histograms per model, the training curves of sasrec@seed0; all valid SVG
    svgs = [base64.b64decode(i["src"].split(",", 1)[1]) for i in page.imgs if i["src"].startswith("data:image/svg")]
    titles = [ET.fromstring(s).find("{http://www.w3.org/2000/svg}title").text for s in svgs]
    assert {"HR@K", "NDCG@K", "scores: pop", "scores: sasrec@seed0", "sasrec: loss", "sasrec: valid_ndcg@10",
            "sasrec: epoch_seconds"} <= set(titles)
    assert "sasrec: examples_per_second" not in titles  # a rate is stated in the notes, not drawn as a curve
    assert "training speed of sasrec@seed0: 2.00 s per epoch over 5 epochs, 500 training examples/s" in html
    # gallery thumbnails are real PNGs
    pngs = [base64.b64decode(i["src"].split(",", 1)[1]) for i in page.imgs if i["src"].startswith("data:image/png")]
    assert pngs and all(p.startswith(b"\x89PNG") for p in pngs)


def test_report_gallery_content(experiment, run_cli):
    code, _, err = run_cli("report", "--dir", experiment.root, "report.gallery_users=3", "report.formats=[html]")
    assert code == 0, err
    html = experiment.report_html.read_text()
    page = parse_page(html)
    assert html.count("class='card'") == 3
    # escaped item titles and summaries, preference steps, the true item marked once per user
    assert "Item &lt;3&gt; &amp; co" in html and "A photo of thing 3 &lt;img&gt;" in html
    assert "u1 step 1" in html and "u1 step 2" in html
    assert html.count("<span class='badge'>true item</span>") == 3
    # sasrec (best on NDCG) orders the gallery: its target score 0.8 beats every negative -> rank 1 for every user
    assert "ranked by <code>sasrec@seed0</code>" in html
    for row in re.findall(r"<tr class='true'>(.*?)</tr>", html):
        assert row.startswith("<td class='num'>1</td>")
    # the corrupt image of i8 becomes a placeholder and a note, not a crash
    assert "no image" in html and "1 corrupt" in html
    # one column per model (its first run): pop and sasrec@seed0, not sasrec@seed1
    assert "sasrec@seed0score (rank)" in page.cells and "popscore (rank)" in page.cells
    assert "sasrec@seed1score (rank)" not in page.cells


def test_report_markdown_and_assets(experiment, run_cli):
    code, _, err = run_cli("report", "--dir", experiment.root, "report.formats=[md]")
    assert code == 0, err
    md = experiment.report_md.read_text()
    assert md.startswith("# ")
    # metric@K grid (family, model, one column per K) and the value metrics per model
    assert "| HR | **pop** | 0.2500 | 0.5000 |" in md
    assert "|  | **sasrec** | 0.6000 ± 1.2706 | 1.0000 ± 0.0000 |" in md
    assert "| **pop** | – | 0.5500 | 0.5000 | 0.1000 | 0.0000 | 100,000 |" in md  # the last: cand/s
    assert "| invalid rate | cand/s |" in md
    # paired test: sasrec (best on NDCG@3) vs pop on per-user NDCG@3, seeds averaged: [1, .75, .75] - [.5, 0, 1]
    assert re.search(r"\| sasrec vs pop \| NDCG@3 \| 3 \| 0\.8333 \| 0\.5000 \| \+0\.3333 \[", md)
    refs = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert any(r.endswith(".svg") for r in refs) and any(r.endswith(".png") for r in refs)
    for ref in refs:
        assert (experiment.root / ref).is_file(), ref
        if ref.endswith(".svg"):
            ET.fromstring((experiment.root / ref).read_text())
    assert "Item &lt;3&gt; &amp; co" in md and "✅" in md and "u2 step 2" in md


def test_missing_optional_inputs_become_notes(tmp_path, run_cli):
    paths = make_experiment(tmp_path / "exp", summaries=False, logs=False)
    paths.scores("pop").unlink()
    code, out, err = run_cli("report", "--dir", paths.root)
    assert code == 0, err
    assert "no item summaries" in out and "no user preferences" in out and "no training logs" in out
    assert "no scores for run 'pop'" in out
    html = paths.report_html.read_text()
    parse_page(html)
    assert "Notes" in html and "class='card'" in html


def test_report_without_split_still_has_the_table(tmp_path, run_cli):
    import shutil

    paths = make_experiment(tmp_path / "exp", summaries=False, logs=False)
    shutil.rmtree(paths.split("loo"))
    code, out, err = run_cli("report", "--dir", paths.root, "report.formats=[html]")
    assert code == 0, err
    assert "no split directory found" in out
    page = parse_page(paths.report_html.read_text())
    assert "0.6000± 1.2706" in page.cells and "Gallery" not in paths.report_html.read_text()


def test_report_errors_are_one_line(tmp_path, run_cli):
    code, _, err = run_cli("report", "--dir", tmp_path / "nope")
    assert code == 2 and "experiment directory not found" in err
    (tmp_path / "exp" / "metrics").mkdir(parents=True)
    code, _, err = run_cli("report", "--dir", tmp_path / "exp")
    assert code == 2 and "no metrics for stage 'test'" in err and "mmrec eval" in err
    (tmp_path / "exp" / "metrics" / "bad.json").write_text("{not json")
    code, _, err = run_cli("report", "--dir", tmp_path / "exp")
    assert code == 2 and "bad.json" in err and "Traceback" not in err
    code, _, err = run_cli("report")
    assert code == 2 and "--dir" in err
    code, _, err = run_cli("report", "--dir", tmp_path / "exp", "report.thumb_size=2")
    assert code == 2 and "thumb_size" in err


def test_report_from_config_file(experiment, tmp_path, run_cli):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"experiment:\n  name: demo\n  dir: {experiment.root}\n  seed: 3\nsplit:\n  name: loo\n"
                   "report:\n  gallery_users: 1\n  formats: [html]\n")
    code, out, err = run_cli("report", cfg, "report.gallery_candidates=2")
    assert code == 0, err
    html = experiment.report_html.read_text()
    assert "<title>demo: report</title>" in html and html.count("class='card'") == 1
    assert "(2 of 4 shown" in html


def test_gallery_shows_the_users_metric_from_eval(experiment, run_cli):
    code, _, err = run_cli("report", "--dir", experiment.root, "report.gallery_users=3", "report.formats=[md]")
    assert code == 0, err
    md = experiment.report_md.read_text()
    # per-user NDCG@3 of sasrec@seed0 (the ranking run) from its per-user file: u1 1.0, u2 0.5, u3 1.0
    assert md.count("NDCG@3 on this user: 1.0000") == 2 and md.count("NDCG@3 on this user: 0.5000") == 1


def test_gallery_always_shows_the_true_item_and_ranking_model_is_checked(experiment, run_cli):
    # pop scores the target 0.5 under a 0.6 negative: with one candidate shown, the true item is added below it
    code, _, err = run_cli("report", "--dir", experiment.root, "report.ranking_model=pop", "report.gallery_users=3",
                           "report.gallery_candidates=1", "report.formats=[html]")
    assert code == 0, err
    html = experiment.report_html.read_text()
    assert html.count("(2 of 4 shown, ranked by <code>pop</code>") == 3
    assert len(re.findall(r"<tr class='true'><td class='num'>[23]</td>", html)) == 3
    code, _, err = run_cli("report", "--dir", experiment.root, "report.ranking_model=nope")
    assert code == 2 and "ranking_model 'nope'" in err


def test_score_plots_sample_users_on_large_evaluations(tmp_path, run_cli, monkeypatch):
    import base64 as b64

    paths = make_experiment(tmp_path / "exp", summaries=False, logs=False)
    monkeypatch.setattr("eval.report.SCORE_PLOT_USERS", 2)
    code, out, err = run_cli("report", "--dir", paths.root, "report.gallery_users=3", "report.formats=[html]")
    assert code == 0, err
    assert "score distributions drawn from 2 of 3 users" in out
    page = parse_page(paths.report_html.read_text())
    svgs = [b64.b64decode(i["src"].split(",", 1)[1]).decode()
            for i in page.imgs if i["src"].startswith("data:image/svg")]
    assert any("positives (n=2)" in s and "negatives (n=6)" in s for s in svgs)
    assert paths.report_html.read_text().count("class='card'") == 3  # the gallery's users are read regardless


def test_bad_scores_file_is_a_one_line_error(tmp_path, run_cli):
    import pandas as pd

    paths = make_experiment(tmp_path / "exp", summaries=False, logs=False)
    pd.DataFrame({"user_id": ["u1"], "stage": ["test"], "item_id": ["i1"]}).to_parquet(paths.scores("pop"))
    code, _, err = run_cli("report", "--dir", paths.root)
    assert code == 2 and "pop.parquet" in err and "['score']" in err and "mmrec score" in err
