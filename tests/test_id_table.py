"""`IdTable`: the scorers' id joins (candidate row -> example, item id -> vocabulary row)."""
import numpy as np
import pandas as pd
import pytest

from mmrec.models.id_table import IdTable


def test_positions_of_single_and_composite_keys_whatever_the_column_type():
    items = IdTable(["a", "b", "c"])
    assert items.positions(pd.Series(["c", "zz", "a"], dtype="string[pyarrow]")).tolist() == [2, -1, 0]
    assert items.positions(np.array(["b"], dtype=object)).tolist() == [1] and items.positions([]).tolist() == []
    keys = IdTable(pd.Series(["u1", "u1", "u2"]), ["valid", "test", "test"])
    got = keys.positions(["u2", "u1", "u1", "u3"], pd.Series(["test", "test", "valid", "test"]))
    assert got.dtype == np.int64 and got.tolist() == [2, 1, 0, -1]
    # the separator keeps ("u1", "test") apart from ("u", "1test")
    assert IdTable(["u1"], ["test"]).positions(["u"], ["1test"]).tolist() == [-1]


def test_duplicate_keys_are_refused():
    with pytest.raises(ValueError, match="unique"):
        IdTable(["u1", "u1"], ["test", "test"])
