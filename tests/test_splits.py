"""Split protocols on hand-made datasets (exact expected examples), artifacts, `mmrec split`, reuse and hashes."""
import json

import numpy as np
import pandas as pd
import pytest

from mmrec.config import from_dict
from mmrec.data.canonical import write_tables
from mmrec.data.splits import SplitConfig, load_split, make_split
from mmrec.errors import ConfigError, DataError
from mmrec.experiment import ExperimentConfig

ITEMS = [f"i{k}" for k in range(30)]


def _dataset(path, rows):
    """rows: (user, item, timestamp) in source order."""
    items = pd.DataFrame({"item_id": ITEMS, "title": ITEMS})
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    write_tables(path, items, inter)
    return path


def _ex(split):
    return {(r.user_id, r.stage): (list(r.history), r.target) for r in split.examples.itertuples()}


@pytest.fixture
def small(tmp_path):
    rows = ([("a", f"i{k}", 10 * k) for k in range(5)]            # a: i0..i4
            # tie: i7 before i6 (source order)
            + [("b", "i5", 100), ("b", "i7", 200), ("b", "i6", 200), ("b", "i8", 300)]
            + [("c", "i1", 5), ("c", "i2", 6)]                   # two items: train only
            + [("d", "i3", 1)])                                  # one item: no example
    return _dataset(tmp_path / "ds", rows)


def test_loo_exact(small, tmp_path):
    s = make_split(small, SplitConfig(protocol="loo", negatives=3, seed=1), tmp_path / "s")
    ex = _ex(s)
    assert ex[("a", "train")] == (["i0", "i1"], "i2")
    assert ex[("a", "valid")] == (["i0", "i1", "i2"], "i3")
    assert ex[("a", "test")] == (["i0", "i1", "i2", "i3"], "i4")
    assert ex[("b", "train")] == (["i5"], "i7")  # equal timestamps keep source order: i7 then i6
    assert ex[("b", "valid")] == (["i5", "i7"], "i6")
    assert ex[("c", "train")] == (["i1"], "i2") and ("c", "test") not in ex
    assert not any(u == "d" for u, _ in ex)
    assert s.info["params"] == {"users_train_only": 1, "users_without_examples": 1}
    assert list(s.examples.stage[:3]) == ["train", "valid", "test"]
    assert s.examples_for("test").target_timestamp.tolist() == [40, 300]


def test_loo_candidates_and_train_negatives(small, tmp_path):
    s = make_split(small, SplitConfig(protocol="loo", negatives=4, valid_negatives=2, train_negatives=3, seed=1),
                   tmp_path / "s")
    test = s.candidates_for("test")
    assert len(test) == 2 * 5 and len(s.candidates_for("valid")) == 2 * 3
    user_items = s.dataset.interactions.groupby("user_id").item_id.agg(set)
    for (user, stage), grp in s.candidates.groupby(["user_id", "stage"]):
        assert grp.label.sum() == 1 and grp.item_id.is_unique
        assert grp.loc[grp.label == 1, "item_id"].item() == _ex(s)[(user, stage)][1]
        assert not set(grp.loc[grp.label == 0, "item_id"]) & user_items[user]
    assert s.train_negatives.groupby("user_id").size().to_dict() == {"a": 3, "b": 3, "c": 3}
    train = s.examples_for("train")
    train_items = {u: set(h) | {t} for u, h, t in zip(train.user_id, train.history, train.target)}
    assert not any(r.item_id in train_items[r.user_id] for r in s.train_negatives.itertuples())


def test_max_history(small, tmp_path, caplog):
    s = make_split(small, SplitConfig(protocol="loo", negatives=2, max_history=2), tmp_path / "s")
    assert _ex(s)[("a", "test")] == (["i2", "i3"], "i4")
    assert _ex(s)[("a", "train")] == (["i0", "i1"], "i2")
    assert s.info["counts"]["train_history_cut"] == 0 and "leaves" not in caplog.text
    # one item fewer: the training row loses i0, which the ID baselines would never see; said, and counted
    cut = make_split(small, SplitConfig(protocol="loo", negatives=2, max_history=1), tmp_path / "cut")
    assert _ex(cut)[("a", "train")] == (["i1"], "i2")
    assert cut.info["counts"]["train_history_cut"] >= 1
    assert "max_history=1 leaves" in caplog.text and "the model's max_history" in caplog.text


@pytest.mark.parametrize("protocol,extra", [
    ("loo", {}), ("temporal", {"valid_time": 35, "test_time": 45}),
    ("paper", {"top_k": 5, "user_fractions": [1.0, 0.0, 0.0]})])
def test_train_history_cut_counts_what_max_history_removes(small, tmp_path, protocol, extra):
    """The count each protocol keeps while it caps histories equals the training history items lost against the
    same split without the cap."""
    def train_items(s):
        return sum(len(h) for h in s.examples_for("train").history)

    full = make_split(small, SplitConfig(protocol=protocol, negatives=1, **extra), tmp_path / "full")
    cut = make_split(small, SplitConfig(protocol=protocol, negatives=1, max_history=1, **extra), tmp_path / "cut")
    assert full.info["counts"]["train_history_cut"] == 0
    assert cut.info["counts"]["train_history_cut"] == train_items(full) - train_items(cut) > 0


def test_temporal_exact(tmp_path):
    rows = ([("a", f"i{k}", t) for k, t in enumerate([1, 2, 3, 6, 7, 9])]
            + [("b", "i10", 2), ("b", "i11", 8)]      # no valid-period item; test target at 8
            + [("c", "i12", 6), ("c", "i13", 9)])     # starts in the valid period: no train row
    ds = _dataset(tmp_path / "ds", rows)
    s = make_split(ds, SplitConfig(protocol="temporal", negatives=2, valid_time=5, test_time=8), tmp_path / "s")
    ex = _ex(s)
    assert ex[("a", "train")] == (["i0", "i1"], "i2")
    assert ex[("a", "valid")] == (["i0", "i1", "i2"], "i3")
    assert ex[("a", "test")] == (["i0", "i1", "i2", "i3", "i4"], "i5")
    assert ex[("b", "test")] == (["i10"], "i11") and ("b", "valid") not in ex
    assert ex[("c", "test")] == (["i12"], "i13") and ("c", "train") not in ex and ("c", "valid") not in ex
    assert s.info["params"] == {"valid_time": 5, "test_time": 8}
    q = make_split(ds, SplitConfig(protocol="temporal", negatives=2, valid_quantile=0.5, test_quantile=0.5),
                   tmp_path / "q")
    assert q.info["params"]["valid_time"] == q.info["params"]["test_time"] == 6
    assert not len(q.examples_for("valid"))


def test_paper_exact(tmp_path):
    # popularity: i0 x5, i1 x4, i2 x3, i3 x2; user a has i3 (oldest) i9 i2 i1 i0 i8 (newest)
    pop_rows = [(f"p{k}", "i0", 1) for k in range(4)] + [(f"p{k}", "i1", 1) for k in range(3)] \
        + [(f"p{k}", "i2", 1) for k in range(2)] + [("p0", "i3", 1)]
    a = [("a", it, t) for it, t in [("i3", 10), ("i9", 11), ("i2", 12), ("i1", 13), ("i0", 14), ("i8", 15)]]
    ds = _dataset(tmp_path / "ds", pop_rows + a)
    cfg = SplitConfig(protocol="paper", top_k=3, negatives=2, user_fractions=[1.0, 0.0, 0.0])
    s = make_split(ds, cfg, tmp_path / "s")
    # a's top-3 by popularity: i0, i1, i2 -> by time: i2, i1, i0
    assert _ex(s)[("a", "train")] == (["i2", "i1"], "i0")
    assert set(s.examples.stage) == {"train"} and not len(s.candidates)
    # a tie in popularity goes to the more recent interaction
    ds2 = _dataset(tmp_path / "ds2", [("a", "i5", 1), ("a", "i6", 2), ("a", "i7", 3), ("b", "i0", 1), ("b", "i1", 2)])
    s2 = make_split(ds2, SplitConfig(protocol="paper", top_k=2, negatives=2, user_fractions=[1, 0, 0]), tmp_path / "s2")
    assert _ex(s2)[("a", "train")] == (["i6"], "i7")


def test_paper_user_split_fractions_and_seed(synthetic_dataset, tmp_path):
    cfg = SplitConfig(protocol="paper", top_k=6, negatives=20, seed=3)
    s = make_split(synthetic_dataset, cfg, tmp_path / "p")
    sizes = s.examples.stage.value_counts().to_dict()
    assert sizes == {"train": 160, "valid": 20, "test": 20} and s.examples.user_id.is_unique
    assert s.examples.history.map(len).max() == 5
    assert s.candidates_for("valid").groupby("user_id").size().eq(2).all()   # paper default: 1 valid negative
    assert s.candidates_for("test").groupby("user_id").size().eq(21).all()
    assert s.train_negatives.groupby("user_id").size().eq(1).all() and len(s.train_negatives) == 160
    other = make_split(synthetic_dataset, SplitConfig(protocol="paper", seed=4), tmp_path / "p4")
    assert set(other.examples_for("test").user_id) != set(s.examples_for("test").user_id)


def test_split_json_and_load_verification(synthetic_split):
    s = load_split(synthetic_split)
    info = json.loads((synthetic_split / "split.json").read_text())
    assert info["dataset"]["path"] == "../.." and info["leakage_check"]["passed"]
    assert set(info["files"]) == {"examples.parquet", "candidates.parquet", "train_negatives.parquet"}
    assert info["counts"]["candidates"] == {"valid": 200 * 21, "test": 200 * 21}
    assert s.candidates_sha256 == info["files"]["candidates.parquet"] and s.config.negatives == 20
    assert s.dataset.root.resolve() == synthetic_split.parent.parent.resolve()
    # every user's candidates are shuffled: the positive is not always first
    firsts = s.candidates.groupby(["user_id", "stage"]).label.first()
    assert 0 < firsts.mean() < 0.5


def test_tampering_is_detected(synthetic_dataset, tmp_path):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(synthetic_dataset, ds, ignore=shutil.ignore_patterns("splits", "images"))
    make_split(ds, SplitConfig(negatives=5), tmp_path / "s")
    cand = tmp_path / "s" / "candidates.parquet"
    cand.write_bytes(cand.read_bytes() + b"x")
    with pytest.raises(DataError, match="modified since the split was made"):
        load_split(tmp_path / "s")
    with pytest.raises(DataError, match="--force"):
        make_split(ds, SplitConfig(negatives=5), tmp_path / "s")
    assert make_split(ds, SplitConfig(negatives=5), tmp_path / "s", overwrite=True).candidates_sha256
    load_split(tmp_path / "s")  # rebuilt: verifies again
    make_split(ds, SplitConfig(negatives=6), tmp_path / "t")
    inter = pd.read_parquet(ds / "interactions.parquet").iloc[:-1]
    inter.to_parquet(ds / "interactions.parquet", index=False)
    with pytest.raises(DataError, match="dataset changed"):
        load_split(tmp_path / "t")


def test_deterministic_and_reused(synthetic_dataset, tmp_path):
    cfg = SplitConfig(negatives=10, sampling="popularity", seed=5)
    a = make_split(synthetic_dataset, cfg, tmp_path / "a")
    b = make_split(synthetic_dataset, cfg, tmp_path / "b")
    assert a.info["files"] == b.info["files"]
    c = make_split(synthetic_dataset, SplitConfig(negatives=10, sampling="popularity", seed=6), tmp_path / "c")
    assert c.info["files"]["candidates.parquet"] != a.info["files"]["candidates.parquet"]
    assert c.info["files"]["examples.parquet"] == a.info["files"]["examples.parquet"]
    mtime = (tmp_path / "a" / "candidates.parquet").stat().st_mtime_ns
    make_split(synthetic_dataset, cfg, tmp_path / "a")  # same config: kept, not rewritten
    assert (tmp_path / "a" / "candidates.parquet").stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="different config"):
        make_split(synthetic_dataset, SplitConfig(negatives=11), tmp_path / "a")
    assert make_split(synthetic_dataset, SplitConfig(negatives=11), tmp_path / "a",
                      overwrite=True).config.negatives == 11


def test_too_many_negatives_is_a_clear_error(small, tmp_path):
    with pytest.raises(DataError, match=r"cannot draw 40 valid negatives.*user 'a' has 25"):
        make_split(small, SplitConfig(negatives=40), tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_config_validation():
    cfg = ExperimentConfig.from_mapping(
        {"split": {"protocol": "paper", "top_k": 11, "user_fractions": [0.8, 0.0, 0.2]}})
    assert cfg.section("split").top_k == 11 and cfg.section("split").n_valid_negatives == 1
    assert SplitConfig().n_valid_negatives == 20 and SplitConfig(name="x").dir_name == "x"
    for bad, msg in [({"protocol": "random"}, "must be one of"), ({"negative": 3}, "did you mean 'negatives'"),
                     ({"user_fractions": [0.5, 0.1]}, "three"), ({"top_k": 1}, "top_k"),
                     ({"valid_quantile": 0.95}, "quantile")]:
        with pytest.raises(ConfigError, match=msg):
            from_dict(SplitConfig, bad, prefix="split")


def test_cli_split(run_cli, synthetic_dataset, tmp_path):
    out = tmp_path / "cli"
    code, stdout, _ = run_cli("split", synthetic_dataset, "--protocol", "loo", "--negatives", "7", "--seed", "7",
                              "--out", out)
    assert code == 0 and json.loads(stdout)["candidates"] == {"valid": 1600, "test": 1600}
    code, _, err = run_cli("split", synthetic_dataset, "--negatives", "8", "--out", out)
    assert code == 2 and "--force" in err
    code, stdout, _ = run_cli("split", synthetic_dataset, "--negatives", "8", "--out", out, "--force",
                              "--protocol", "paper", "--user-fractions", "0.5", "0.25", "0.25")
    assert code == 0 and json.loads(stdout)["examples"] == {"train": 100, "valid": 50, "test": 50}
    code, _, err = run_cli("split", tmp_path / "nothing")
    assert code == 2 and "not a canonical dataset" in err


def test_cli_default_out(run_cli, small):
    code, stdout, _ = run_cli("split", small, "--protocol", "temporal", "--negatives", "2", "--name", "t")
    assert code == 0 and json.loads(stdout)["split"] == str(small / "splits" / "t")
    assert load_split(small / "splits" / "t").info["protocol"] == "temporal"
    assert np.isfinite(load_split(small / "splits" / "t").info["params"]["valid_time"])


def test_refuses_to_replace_a_foreign_directory(small, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ConfigError, match="not a split directory"):
        make_split(small, SplitConfig(negatives=2), tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_nothing_to_split_is_an_error(tmp_path):
    ds = _dataset(tmp_path / "ds", [("a", "i0", 1), ("b", "i1", 2)])
    with pytest.raises(DataError, match="gives no example"):
        make_split(ds, SplitConfig(negatives=2), tmp_path / "s")
    empty = _dataset(tmp_path / "empty", [])
    with pytest.raises(DataError, match="no interactions"):
        make_split(empty, SplitConfig(protocol="temporal"), tmp_path / "e")


def test_benchmark_script_runs_at_tiny_size(monkeypatch):
    """Not a timing test: keeps bench/bench_data_prep.py working (generator, k-core, import, split)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "bench" / "bench_data_prep.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as when the script runs: bench/ is sys.path[0]
    spec = importlib.util.spec_from_file_location("bench_data_prep", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.child(20_000, 9)
    assert result["kept"] > 0 and result["candidates"] % 10 == 0 and result["peak_gb"] > 0
    assert set(result["wall"]) == {"generate", "kcore", "import", "split"}


def _raw_dataset(path, rows):
    """A hand-written dataset: interactions.parquet exactly as given (no sort by `mmrec prep`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _dataset(path, [])
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype({"timestamp": "int64"})
    pq.write_table(pa.Table.from_pandas(inter, preserve_index=False), path / "interactions.parquet")
    return path


UNSORTED = [("e", "i9", 1), ("e", "i8", 2), ("e", "i7", 3),
            ("f", "i1", 100), ("f", "i2", 50), ("f", "i3", 70), ("f", "i4", 60), ("f", "i5", 60)]


def test_unsorted_times_are_sorted_stably_and_counted(tmp_path):
    ds = _raw_dataset(tmp_path / "ds", UNSORTED)
    s = make_split(ds, SplitConfig(negatives=2), tmp_path / "s")
    ex = _ex(s)
    # f by time: i2@50, i4@60, i5@60 (tie: file order), i3@70, i1@100
    assert ex[("f", "train")] == (["i2", "i4"], "i5")
    assert ex[("f", "valid")] == (["i2", "i4", "i5"], "i3")
    assert ex[("f", "test")] == (["i2", "i4", "i5", "i3"], "i1")
    assert ex[("e", "test")] == (["i9", "i8"], "i7")
    assert s.info["sequence_order"] == {"unsorted": "sort", "users_reordered": 1, "rows_moved": 5}
    assert s.info["leakage_check"]["passed"]


def test_unsorted_times_refused_by_flag(tmp_path):
    ds = _raw_dataset(tmp_path / "ds", UNSORTED)
    with pytest.raises(DataError, match=r"user 'f'.*timestamp 50.*after.*100"):
        make_split(ds, SplitConfig(negatives=2, unsorted="error"), tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_users_not_grouped_are_sorted_too(tmp_path):
    ds = _raw_dataset(tmp_path / "ds", [("b", "i1", 1), ("a", "i2", 1), ("b", "i3", 2), ("a", "i4", 2)])
    s = make_split(ds, SplitConfig(negatives=2), tmp_path / "s")
    assert _ex(s)[("a", "train")] == (["i2"], "i4") and _ex(s)[("b", "train")] == (["i1"], "i3")
    assert s.info["sequence_order"]["users_reordered"] == 2


def test_train_negatives_know_only_training_items(tmp_path):
    """A training negative may be a later item of the user (the model cannot know it); never a training item."""
    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(6)]})
    write_tables(tmp_path / "ds", items, pd.DataFrame([("a", f"i{k}", k) for k in range(5)],
                                                      columns=["user_id", "item_id", "timestamp"]))
    s = make_split(tmp_path / "ds", SplitConfig(negatives=1, train_negatives=3), tmp_path / "s")
    assert _ex(s)[("a", "train")] == (["i0", "i1"], "i2")
    assert sorted(s.train_negatives.item_id) == ["i3", "i4", "i5"]     # valid and test targets included
    assert s.candidates_for("test").item_id.tolist().count("i5") == 1   # evaluation negatives: never the user's
    with pytest.raises(DataError, match="cannot draw 3 training negatives"):   # the old rule, kept behind a flag
        make_split(tmp_path / "ds", SplitConfig(negatives=1, train_negatives=3, sampling_data="all"), tmp_path / "o")


def test_popularity_sampling_counts_training_interactions_only(tmp_path):
    """'hot' is only ever a test target: it has no training popularity, so it is never drawn as a negative."""
    rows = [(f"u{k}", it, t) for k in range(10)
            for t, it in enumerate([f"i{k}", f"i{(k + 1) % 10}", f"i{(k + 2) % 10}", "hot"])]
    rows += [("z", "i20", 0), ("z", "i21", 1), ("z", "i22", 2)]
    ds = tmp_path / "ds"
    write_tables(ds, pd.DataFrame({"item_id": [*ITEMS, "hot"]}),
                 pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))
    cfg = dict(negatives=8, train_negatives=2, sampling="popularity", seed=3)
    s = make_split(ds, SplitConfig(**cfg), tmp_path / "s")
    drawn = pd.concat([s.candidates.query("label == 0").item_id, s.train_negatives.item_id])
    assert "hot" not in set(drawn) and set(drawn) <= {f"i{k}" for k in range(10)} | {"i20", "i21", "i22"}
    old = make_split(ds, SplitConfig(**cfg, sampling_data="all"), tmp_path / "old")
    assert "hot" in set(old.candidates.query("user_id == 'z' and label == 0").item_id)
