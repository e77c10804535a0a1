"""Synthetic benchmark: canonical form, determinism, ground-truth files, drift, ties, learnability, CLI."""
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from data_prep import synthetic
from mmrec.config import from_dict
from mmrec.data.canonical import load_dataset
from mmrec.data.splits import load_split
from mmrec.errors import DataError


def _options(**fields) -> synthetic.SyntheticOptions:
    return from_dict(synthetic.SyntheticOptions, fields)


def test_canonical_form(synthetic_dataset):
    ds = load_dataset(synthetic_dataset)
    assert ds.stats["users"] == 200 and ds.stats["items"] == 120 and ds.stats["image_coverage"] == 1.0
    assert ds.stats["timestamp_ties"] > 0 and 15 < ds.stats["seq_len_mean"] < 25
    inter = ds.interactions
    assert not inter.duplicated(["user_id", "item_id"]).any()  # no repeats within a user
    assert (inter.groupby("user_id").timestamp.diff().dropna() >= 0).all()
    item = ds.items.iloc[0]
    with Image.open(ds.image_path(item.item_id)) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    assert ds.items.image_sha256.is_unique  # jitter: no two item images identical
    prep = pd.read_json(synthetic_dataset / "prep.json", typ="series")
    assert prep["source"] == "synthetic" and prep["arguments"]["seed"] == 0


def test_titles_hide_colour_and_pattern(synthetic_dataset):
    items = load_dataset(synthetic_dataset).items
    attrs = pd.read_parquet(synthetic_dataset / "item_attributes.parquet")
    merged = items.merge(attrs, on="item_id")
    text = (merged.title + " " + merged.text).str.lower()
    for word in list(synthetic.COLOURS) + list(synthetic.PATTERNS):
        assert not text.str.contains(word).any()
    assert all(s in t for s, t in zip(merged["shape"], text))  # the shape is the part titles reveal


def test_ground_truth_files(synthetic_dataset):
    prefs = pd.read_parquet(synthetic_dataset / "user_preferences.parquet")
    assert len(prefs) == 200 and prefs.user_id.is_unique
    row = prefs.iloc[0]
    assert row.preference == f"The user likes {row.pattern} {row.colour} {row['shape']} items."
    drifted = (prefs.colour != prefs.initial_colour).mean()
    assert 0.1 < drifted < 0.9  # slow drift: some users but not all
    # interactions follow the latent preference: the preferred colour dominates each user's recent items
    inter = load_dataset(synthetic_dataset).interactions
    attrs = pd.read_parquet(synthetic_dataset / "item_attributes.parquet").set_index("item_id")
    last = inter.groupby("user_id").tail(5).join(attrs, on="item_id").merge(prefs[["user_id", "colour"]], on="user_id",
                                                                               suffixes=("", "_pref"))
    assert (last.colour == last.colour_pref).mean() > 0.4  # chance is 1/6


def test_deterministic_per_seed(tmp_path):
    a = synthetic.generate(_options(users=30, items=40, seed=3))
    b = synthetic.generate(_options(users=30, items=40, seed=3))
    c = synthetic.generate(_options(users=30, items=40, seed=4))
    assert a["interactions"].equals(b["interactions"]) and a["user_preferences"].equals(b["user_preferences"])
    assert not a["interactions"].equals(c["interactions"])
    assert (synthetic.draw_item(0, 1, 2, 32, np.random.default_rng(0))
            == synthetic.draw_item(0, 1, 2, 32, np.random.default_rng(0)))


def test_image_attributes_beat_titles(synthetic_split):
    """Learnability: a history-matching scorer on image attributes beats the same scorer on title words."""
    split = load_split(synthetic_split)
    attrs = pd.read_parquet(split.dataset.root / "item_attributes.parquet").set_index("item_id")
    titles = split.dataset.items.set_index("item_id").title.str.split()
    by_image = {i: [("c", a.colour), ("s", a.shape), ("p", a.pattern)] for i, a in attrs.iterrows()}
    by_title = {i: [("b", w[0]), ("s", w[1]), ("n", w[2])] for i, w in titles.items()}
    history = split.examples_for("test").set_index("user_id").history

    def auc(features):
        out = []
        for user, grp in split.candidates_for("test").groupby("user_id"):
            counts = Counter(f for h in history[user] for f in features[h])
            score = np.array([sum(np.log1p(counts[f]) for f in features[i]) for i in grp.item_id])
            pos, neg = score[grp.label.to_numpy() == 1][0], score[grp.label.to_numpy() == 0]
            out.append((pos > neg).mean() + 0.5 * (pos == neg).mean())
        return float(np.mean(out))

    image_auc, title_auc = auc(by_image), auc(by_title)
    assert image_auc > 0.65 and image_auc > title_auc + 0.08, (image_auc, title_auc)


def test_rerun_keeps_or_refuses(tmp_path):
    out = tmp_path / "d"
    synthetic.run(_options(users=10, items=20), out)
    stamp = (out / "interactions.parquet").stat().st_mtime_ns
    synthetic.run(_options(users=10, items=20), out)
    assert (out / "interactions.parquet").stat().st_mtime_ns == stamp  # same arguments: kept
    stats = synthetic.run(_options(users=12, items=20), out)
    assert stats["users"] == 12
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a dataset written by `mmrec prep`"):
        synthetic.run(_options(), other)
    assert (other / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("fields,msg", [({"items": 1}, "--items >= 2"), ({"min_length": 50, "items": 40}, "min-length"),
                                        ({"noise": 1.5}, "--noise"), ({"image_size": 4}, "image-size")])
def test_bad_arguments(tmp_path, fields, msg):
    with pytest.raises(DataError, match=msg):
        synthetic.run(_options(**fields), tmp_path / "x")


def test_cli_prep_and_split(run_cli, tmp_path):
    out = tmp_path / "syn"
    code, stdout, _ = run_cli("prep", "synthetic", "--users", 20, "--items", 60, "--seed", 2, "--out", out)
    assert code == 0 and '"users": 20' in stdout
    code, _, _ = run_cli("split", out, "--protocol", "loo", "--negatives", 5)
    assert code == 0 and load_split(out / "splits" / "loo").info["counts"]["examples"]["test"] == 20


def test_interaction_truth_tracks_drift(synthetic_dataset):
    truth = pd.read_parquet(synthetic_dataset / "interaction_truth.parquet")
    inter = load_dataset(synthetic_dataset).interactions
    assert truth[["user_id", "item_id", "timestamp"]].equals(inter[["user_id", "item_id", "timestamp"]])
    prefs = pd.read_parquet(synthetic_dataset / "user_preferences.parquet").set_index("user_id")
    last = truth.groupby("user_id").tail(1).set_index("user_id")
    first = truth.groupby("user_id").head(1).set_index("user_id")
    assert (last.colour == prefs.colour).all() and (first.colour == prefs.initial_colour).all()
    assert 0.05 < truth.by_popularity.mean() < 0.3  # --noise 0.15
    attrs = pd.read_parquet(synthetic_dataset / "item_attributes.parquet").set_index("item_id")
    steps = truth.merge(attrs, left_on="item_id", right_index=True, suffixes=("", "_item"))
    chosen = steps[~steps.by_popularity]
    by_pop = steps[steps.by_popularity]
    # preference-driven steps match the current preferred colour far more often than popularity-driven ones
    assert (chosen.colour == chosen.colour_item).mean() > (by_pop.colour == by_pop.colour_item).mean() + 0.2
