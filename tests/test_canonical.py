"""The canonical tables: sequence order with the documented tie-break, and stats computed by hand."""
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mmrec.data.canonical import load_dataset, write_tables
from mmrec.errors import DataError


def test_sequence_order_keeps_source_order_for_equal_timestamps_and_stats_are_exact(tmp_path):
    items = pd.DataFrame({"item_id": ["a", "b", "c", "d"], "title": ["A", "B", "C", "D"],
                          "image": ["images/a.png", None, None, None]})
    # u2's b and a share a timestamp: source order (b before a) must be kept; u1 arrives unsorted.
    inter = pd.DataFrame({"user_id": ["u2", "u1", "u2", "u2", "u1", "u1"],
                          "item_id": ["c", "d", "b", "a", "a", "b"],
                          "timestamp": [30, 20, 10, 10, 10, 30]})
    stats = write_tables(tmp_path, items, inter, {"source": "test"})
    ds = load_dataset(tmp_path)
    assert ds.sequences().to_dict() == {"u1": ["a", "d", "b"], "u2": ["b", "a", "c"]}
    assert stats["users"] == 2 and stats["items"] == 4 and stats["interactions"] == 6
    assert stats["timestamp_ties"] == 2  # u2's (b, a) at t=10; u1's t=10 is not tied with u2's
    assert stats["seq_len_mean"] == 3.0 and stats["seq_len_max"] == 3 and stats["seq_len_min"] == 3
    assert stats["sparsity"] == pytest.approx(1 - 6 / 8)
    assert stats["image_coverage"] == 0.25 and stats["has_rating"] is False
    assert pq.read_table(tmp_path / "interactions.parquet").schema.field("timestamp").type == "int64"


def test_unknown_items_and_duplicate_item_ids_are_refused(tmp_path):
    items = pd.DataFrame({"item_id": ["a"], "title": ["A"]})
    inter = pd.DataFrame({"user_id": ["u"], "item_id": ["zz"], "timestamp": [1]})
    with pytest.raises(DataError, match="1 interactions refer to items missing from the item table .*'zz'"):
        write_tables(tmp_path, items, inter)
    with pytest.raises(DataError, match="duplicate item_id 'a'"):
        write_tables(tmp_path, pd.concat([items, items]), inter.assign(item_id="a"))


def test_a_damaged_table_is_named_by_split_and_run(tmp_path, run_cli, synthetic_dataset):
    """A dataset table cut short: `mmrec split` and `mmrec run` name the file and what to do, no Arrow traceback."""
    import shutil

    import yaml

    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data)
    table = data / "interactions.parquet"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    with pytest.raises(DataError, match="interactions.parquet: damaged or not a Parquet file"):
        load_dataset(data)
    code, _, err = run_cli("split", data, "--out", tmp_path / "split")
    assert code == 2 and "Traceback" not in err
    assert "interactions.parquet: damaged or not a Parquet file" in err
    assert "re-create the dataset with `mmrec prep`" in err
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"experiment": {"dir": str(tmp_path / "exp")}, "data": {"path": str(data)}}))
    code, _, err = run_cli("run", config)
    assert code != 0 and "Traceback" not in err
    assert "interactions.parquet: damaged or not a Parquet file" in err and "re-create the dataset" in err
