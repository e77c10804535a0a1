"""The leakage check passes on real splits and catches each kind of deliberately corrupted split."""
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrec.data.leakage import check_split
from mmrec.data.splits import SplitConfig, make_split
from mmrec.errors import DataError


def _tables(split_dir):
    ds = split_dir.parent.parent
    return (pq.read_table(ds / "interactions.parquet"), pq.read_table(ds / "items.parquet")["item_id"].combine_chunks(),
            pq.read_table(split_dir / "examples.parquet").to_pandas(),
            pq.read_table(split_dir / "candidates.parquet").to_pandas(),
            pq.read_table(split_dir / "train_negatives.parquet").to_pandas())


def _check(inter, items, ex, cand=None, neg=None):
    to = lambda df: None if df is None else pa.Table.from_pandas(df, preserve_index=False)  # noqa: E731
    return check_split(inter, items, to(ex), to(cand), to(neg))


@pytest.fixture(scope="module")
def tables(synthetic_split):
    return _tables(synthetic_split)


def test_real_splits_pass(tables, synthetic_dataset, tmp_path):
    report = _check(*tables)
    assert report["passed"] and report["examples"] == 600 and report["candidates"] == 2 * 200 * 21
    for protocol in ("temporal", "paper"):
        s = make_split(synthetic_dataset, SplitConfig(protocol=protocol, negatives=5), tmp_path / protocol)
        assert s.info["leakage_check"]["passed"]


def _row(ex, user, stage):
    return ex.index[(ex.user_id == user) & (ex.stage == stage)][0]


def test_test_target_in_train_history(tables):
    inter, items, ex, cand, neg = tables
    ex = ex.copy()
    k, t = _row(ex, "u00003", "train"), _row(ex, "u00003", "test")
    ex.at[k, "history"] = list(ex.at[k, "history"]) + [ex.at[t, "target"]]
    with pytest.raises(DataError, match=r"history item was not interacted with before.*u00003.*train"):
        _check(inter, items, ex)


def test_later_interaction_in_valid_history(tables):
    inter, items, ex, *_ = tables
    ex = ex.copy()
    k, t = _row(ex, "u00010", "valid"), _row(ex, "u00010", "test")
    ex.at[k, "history"] = list(ex.at[t, "history"])  # the test history contains the valid target itself
    with pytest.raises(DataError, match="u00010.*valid"):
        _check(inter, items, ex)


def test_foreign_item_in_history(tables):
    inter, items, ex, *_ = tables
    ex = ex.copy()
    k = _row(ex, "u00001", "test")
    own = set(inter.filter(pa.compute.equal(inter["user_id"], "u00001"))["item_id"].to_pylist())
    foreign = next(i for i in items.to_pylist() if i not in own)
    ex.at[k, "history"] = [foreign] + list(ex.at[k, "history"])
    with pytest.raises(DataError, match="history item"):
        _check(inter, items, ex)


def test_target_not_an_interaction(tables):
    inter, items, ex, *_ = tables
    ex = ex.copy()
    ex.loc[_row(ex, "u00002", "test"), "target_timestamp"] += 1
    with pytest.raises(DataError, match="not an interaction of the user at target_timestamp"):
        _check(inter, items, ex)


def test_stages_out_of_order(tables):
    inter, items, ex, *_ = tables
    ex = ex.copy()
    v, t = _row(ex, "u00004", "valid"), _row(ex, "u00004", "test")
    ex.loc[[v, t], "stage"] = ["test", "valid"]
    with pytest.raises(DataError, match="(later stage's target|history item)"):
        _check(inter, items, ex)
    ex2 = pd.concat([tables[2], tables[2].iloc[[0]]], ignore_index=True)
    with pytest.raises(DataError, match="two examples of the same stage"):
        _check(inter, items, ex2)


def test_candidate_corruptions(tables):
    inter, items, ex, cand, neg = tables
    user = "u00005"
    seen = set(inter.filter(pa.compute.equal(inter["user_id"], user))["item_id"].to_pylist())
    rows = cand.index[(cand.user_id == user) & (cand.stage == "test")]
    negs = rows[cand.loc[rows, "label"] == 0]
    own_bad = cand.copy()
    own_bad.loc[negs[0], "item_id"] = sorted(seen)[0]
    with pytest.raises(DataError, match="negative candidate is an item the user interacted with"):
        _check(inter, items, ex, own_bad)
    two_pos = cand.copy()
    two_pos.loc[negs[0], "label"] = 1
    with pytest.raises(DataError, match="not the example's target"):
        _check(inter, items, ex, two_pos)
    pos = rows[cand.loc[rows, "label"] == 1][0]
    with pytest.raises(DataError, match="exactly one positive"):
        _check(inter, items, ex, cand.drop(index=pos))
    wrong_pos = cand.copy()
    wrong_pos.loc[pos, "label"], wrong_pos.loc[negs[0], "label"] = 0, 1
    with pytest.raises(DataError, match="not the example's target"):
        _check(inter, items, ex, wrong_pos)
    dup = cand.copy()
    dup.loc[negs[1], "item_id"] = dup.loc[negs[0], "item_id"]
    with pytest.raises(DataError, match="twice"):
        _check(inter, items, ex, dup)
    train_stage = pd.concat([cand, cand.iloc[[0]].assign(stage="train")], ignore_index=True)
    with pytest.raises(DataError, match="stage 'train'"):
        _check(inter, items, ex, train_stage)
    without_example = ex.drop(index=_row(ex, user, "test"))
    with pytest.raises(DataError, match="no example"):
        _check(inter, items, without_example, cand)


def test_train_negative_is_own_item(tables):
    inter, items, ex, cand, neg = tables
    bad = neg.copy()
    bad.loc[0, "item_id"] = ex.loc[_row(ex, bad.loc[0, "user_id"], "train"), "target"]
    with pytest.raises(DataError, match="training negative"):
        _check(inter, items, ex, cand, bad)


def test_unknown_ids_are_named(tables):
    inter, items, ex, *_ = tables
    ex = ex.copy()
    ex.loc[0, "user_id"] = "ghost"
    with pytest.raises(DataError, match="'ghost' is not in the dataset"):
        _check(inter, items, ex)


def test_repeated_item_history_is_not_a_leak(tmp_path):
    from mmrec.data.canonical import write_tables

    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(10)]})
    rows = [("a", "i1", 1), ("a", "i2", 2), ("a", "i1", 3), ("a", "i3", 4), ("a", "i1", 5)]
    write_tables(tmp_path / "ds", items, pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))
    s = make_split(tmp_path / "ds", SplitConfig(negatives=3), tmp_path / "ds" / "splits" / "loo")
    assert s.info["leakage_check"]["passed"]
    assert list(s.examples_for("test").history[0]) == ["i1", "i2", "i1", "i3"]


def test_candidates_file_checked_by_row_group(tables, tmp_path):
    inter, items, ex, cand, neg = tables
    ex_t = pa.Table.from_pandas(ex, preserve_index=False)
    table = pa.Table.from_pandas(cand, preserve_index=False)
    whole = tmp_path / "whole.parquet"
    pq.write_table(table, whole, row_group_size=21 * 50)  # row groups hold whole examples
    assert check_split(inter, items, ex_t, whole)["candidates"] == len(cand)
    torn = tmp_path / "torn.parquet"
    pq.write_table(table, torn, row_group_size=21 * 50 + 5)  # an example's rows straddle two row groups
    with pytest.raises(DataError, match="split across row groups"):
        check_split(inter, items, ex_t, torn)


def test_positions_are_times_not_rows(tmp_path):
    """A split made by row position from unsorted interactions (test target before the valid target) fails."""
    items = pa.array([f"i{k:02d}" for k in range(10)])
    inter = pa.table({"user_id": ["F"] * 4, "item_id": ["i01", "i02", "i03", "i04"],
                      "timestamp": pa.array([100, 50, 70, 60], pa.int64())})
    ex = pd.DataFrame({"user_id": ["F", "F", "F"], "stage": ["train", "valid", "test"],
                       "history": [["i01"], ["i01", "i02"], ["i01", "i02", "i03"]],
                       "target": ["i02", "i03", "i04"], "target_timestamp": [50, 70, 60]})
    with pytest.raises(DataError, match="leakage check failed.*user 'F'"):
        check_split(inter, items, pa.Table.from_pandas(ex, preserve_index=False))
    by_time = pd.DataFrame({"user_id": ["F", "F", "F"], "stage": ["train", "valid", "test"],
                            "history": [["i02"], ["i02", "i04"], ["i02", "i04", "i03"]],
                            "target": ["i04", "i03", "i01"], "target_timestamp": [60, 70, 100]})
    assert check_split(inter, items, pa.Table.from_pandas(by_time, preserve_index=False))["passed"]


def test_train_negative_may_be_a_later_item(tables):
    inter, items, ex, cand, neg = tables
    later = neg.copy()
    later.loc[0, "item_id"] = ex.loc[_row(ex, later.loc[0, "user_id"], "test"), "target"]
    assert _check(inter, items, ex, cand, later)["passed"]
    earlier = neg.copy()
    earlier.loc[0, "item_id"] = ex.loc[_row(ex, earlier.loc[0, "user_id"], "train"), "history"][0]
    with pytest.raises(DataError, match="training negative is an item the user interacted with by their train"):
        _check(inter, items, ex, cand, earlier)
