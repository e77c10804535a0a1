"""k-core: fixed point, separate user/item thresholds, cascades, order kept, bad input."""
import numpy as np
import pandas as pd
import pytest

from mmrec.data.kcore import kcore
from mmrec.errors import DataError


def _frame(pairs):
    return pd.DataFrame({"user_id": [p[0] for p in pairs], "item_id": [p[1] for p in pairs],
                         "timestamp": np.arange(len(pairs), dtype=np.int64)})


def test_cascade_reaches_fixed_point():
    # with (2, 2): round 1 drops d-z (user d has one row); z is then left with one row (a-z), dropped
    # in round 2; round 3 finds nothing to remove
    pairs = [("a", "x"), ("a", "y"), ("a", "z"), ("b", "x"), ("b", "y"), ("c", "x"), ("c", "y"), ("d", "z")]
    out, report = kcore(_frame(pairs), min_user=2, min_item=2)
    assert set(zip(out.user_id, out.item_id)) == {("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"),
                                                  ("c", "x"), ("c", "y")}
    assert report["rounds"] == 2 and report["interactions_removed"] == 2
    assert report["users_after"] == 3 and report["items_after"] == 2 and report["users_removed"] == 1


def test_multi_round_cascade_and_separate_thresholds():
    # chain: removing user e (1 item) makes item w fall below 2, which makes user f fall below 2, ...
    pairs = [("e", "w"), ("f", "w"), ("f", "v"), ("g", "v"), ("g", "x"), ("g", "y"),
             ("h", "x"), ("h", "y"), ("i", "x"), ("i", "y")]
    out, report = kcore(_frame(pairs), min_user=2, min_item=2)
    assert set(out.user_id) == {"g", "h", "i"} and set(out.item_id) == {"x", "y"}
    assert report["rounds"] >= 2
    # the result is a fixed point: filtering again removes nothing
    again, rep2 = kcore(out, 2, 2)
    assert len(again) == len(out) and rep2["rounds"] == 0
    # item threshold 1 keeps every item a kept user has
    only_users, rep = kcore(_frame(pairs), min_user=3, min_item=1)
    assert set(only_users.user_id) == {"g"} and rep["items_after"] == 3


def test_keeps_row_order_and_columns():
    pairs = [("b", "x"), ("a", "x"), ("b", "y"), ("a", "y"), ("c", "x")]
    df = _frame(pairs)
    out, _ = kcore(df, 2, 2)
    assert list(out.timestamp) == [0, 1, 2, 3] and list(out.columns) == list(df.columns)


def test_everything_removed_and_noop():
    df = _frame([("a", "x"), ("b", "y")])
    out, report = kcore(df, 2, 1)
    assert len(out) == 0 and report["users_after"] == 0
    same, report = kcore(df, 1, 1)
    assert len(same) == 2 and report["rounds"] == 0


def test_matches_naive_loop_on_random_data():
    g = np.random.default_rng(0)
    df = _frame(list(zip(g.integers(0, 60, 800).astype(str), g.zipf(1.6, 800).astype(str))))
    out, _ = kcore(df, 5, 3)
    naive = df
    while True:
        uc, ic = naive.user_id.value_counts(), naive.item_id.value_counts()
        nxt = naive[naive.user_id.map(uc).ge(5) & naive.item_id.map(ic).ge(3)]
        if len(nxt) == len(naive):
            break
        naive = nxt
    assert out.equals(naive.reset_index(drop=True))


def test_bad_input():
    with pytest.raises(DataError, match="user_id"):
        kcore(pd.DataFrame({"item_id": ["x"]}), 1, 1)
    with pytest.raises(DataError, match=">= 1"):
        kcore(_frame([("a", "x")]), 0, 1)
