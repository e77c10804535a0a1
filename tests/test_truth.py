"""Truth metrics of the summaries on the synthetic benchmark (mmrec/truth.py), alone and through `mmrec eval`."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from mmrec.data.splits import SplitConfig, load_split, make_split
from mmrec.experiment import ExperimentPaths
from mmrec.truth import named, summary_truth, truth_path


def test_named_matches_whole_words_in_any_case():
    colours, patterns = ("blue", "red"), ("dotted", "solid", "striped")
    assert named("A Red, striped square; not reddish", colours) == {"red"}
    assert named("dotted and SOLID", patterns) == {"dotted", "solid"}
    assert named("", colours) == set() and named(None, patterns) == set() and named("red", ()) == set()


def test_vocabulary_is_what_the_truth_tables_use(synthetic_dataset):
    """Every colour and pattern the generator draws appears in the truth tables the metrics read."""
    from data_prep import synthetic
    from mmrec.truth import vocabulary

    tables = [pd.read_parquet(synthetic_dataset / f) for f in ("item_attributes.parquet", "interaction_truth.parquet")]
    assert vocabulary(*tables) == {"colour": tuple(sorted(synthetic.COLOURS)),
                                   "pattern": tuple(sorted(synthetic.PATTERNS))}


@pytest.fixture(scope="module")
def truth_experiment(synthetic_dataset, tmp_path_factory):
    """A loo split of the shared synthetic dataset with hand-written summaries whose truth is known."""
    root = tmp_path_factory.mktemp("truth")
    exp = root / "exp"
    make_split(synthetic_dataset, SplitConfig(protocol="loo", negatives=20, seed=0), exp / "splits" / "loo")
    split = load_split(exp / "splits" / "loo")
    attrs = pd.read_parquet(synthetic_dataset / "item_attributes.parquet")
    steps = pd.read_parquet(synthetic_dataset / "interaction_truth.parquet").set_index(["user_id", "item_id"])
    # Items: the even ones described truly, the odd ones with a wrong colour and no pattern.
    wrong = {"red": "blue", "orange": "blue", "yellow": "blue", "green": "red", "blue": "red", "purple": "red"}
    items = pd.DataFrame({"item_id": attrs["item_id"], "status": "ok", "summary": [
        f"A {r.pattern} {r.colour} thing." if k % 2 == 0 else f"A {wrong[r.colour]} thing."
        for k, r in enumerate(attrs.itertuples())]})
    paths = ExperimentPaths(exp)
    paths.item_summaries.parent.mkdir(parents=True, exist_ok=True)
    items.to_parquet(paths.item_summaries)
    # Preferences: step 1 names the truth at the last item of block 1, step 2 names nothing.
    rows = []
    for e in split.examples.itertuples():
        history = [str(x) for x in e.history][-6:]
        if len(history) < 4:
            continue
        truth = steps.loc[(e.user_id, history[2])]
        rows.append({"user_id": e.user_id, "stage": e.stage, "preference": "no idea", "n_items": len(history),
                     "block_size": 3, "mode": "recurrent", "status": "ok",
                     "steps": [f"Likes {truth['colour']} {truth['pattern']} things.", "no idea"]})
    pd.DataFrame(rows).to_parquet(paths.user_summaries)
    cfg = {"experiment": {"dir": str(exp), "seed": 0}, "data": {"path": str(synthetic_dataset)},
           "split": {"protocol": "loo", "negatives": 20, "seed": 0}, "models": {"pop": {"kind": "pop"}},
           "eval": {"ks": [1, 10], "stages": ["test"]}}
    (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return root, len(attrs), len(rows)


def test_truth_metrics_of_known_summaries(truth_experiment):
    root, n_items, n_users = truth_experiment
    paths = ExperimentPaths(root / "exp")
    split = load_split(paths.split("loo"))
    truth = summary_truth(split.dataset.root, paths, split.examples)
    items = truth["item_summaries"]
    assert items["n"] == n_items
    assert items["faithful"] == pytest.approx(0.5, abs=0.01) and items["wrong"] == pytest.approx(0.5, abs=0.01)
    assert items["colour"] == pytest.approx(0.5, abs=0.01) and items["pattern"] == pytest.approx(0.5, abs=0.01)
    step1, step2 = truth["preferences"]
    assert step1["step"] == 1 and step1["n"] == n_users and step1["faithful"] == 1.0 and step1["wrong"] == 0.0
    assert step2["step"] == 2 and step2["faithful"] == 0.0 and step2["wrong"] == 0.0


def test_eval_and_report_show_the_truth_metrics(truth_experiment, run_cli):
    root, _, _ = truth_experiment
    cfg = root / "cfg.yaml"
    assert run_cli("finetune", cfg)[0] == 0 and run_cli("score", cfg)[0] == 0
    code, out, err = run_cli("eval", cfg)
    assert code == 0, err
    assert "Summaries against the benchmark's truth" in out
    assert "preferences, step 1" in out and "\nitems " in out
    written = json.loads(truth_path(ExperimentPaths(root / "exp")).read_text())
    assert written["preferences"][0]["faithful"] == 1.0 and written["item_summaries"]["n"] > 0
    code, _, err = run_cli("report", cfg)
    assert code == 0, err
    md, html = (root / "exp" / "report.md").read_text(), (root / "exp" / "report.html").read_text()
    assert "| preferences, step 1 |" in md and "Summaries against the benchmark&#x27;s truth" in html
    assert "<td>preferences, step 2</td>" in html


def test_no_truth_without_the_synthetic_truth_tables(truth_experiment, tmp_path):
    root, _, _ = truth_experiment
    paths = ExperimentPaths(root / "exp")
    split = load_split(paths.split("loo"))
    assert summary_truth(tmp_path, paths, split.examples) is None  # a dataset without item_attributes.parquet
