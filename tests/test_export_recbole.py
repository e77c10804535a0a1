"""`mmrec export recbole`: atomic files whose rows are exactly the split's examples."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from mmrec.data.splits import load_split


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)


def test_export_writes_the_split_as_recbole_benchmark_files(synthetic_split, tmp_path, run_cli) -> None:
    code, out, err = run_cli("export", "recbole", synthetic_split, "--out", tmp_path, "--name", "syn",
                             "--max-history", "5")
    assert code == 0, err
    d = tmp_path / "syn"
    split = load_split(synthetic_split)
    inter = _read(d / "syn.inter")
    assert list(inter.columns) == ["user_id:token", "item_id:token", "timestamp:float"]
    assert len(inter) == len(split.dataset.interactions)
    # positions keep each user's sequence order exactly (float32 in RecBole cannot merge them)
    first = split.dataset.interactions.groupby("user_id").head(1)
    assert (inter.groupby("user_id:token")["timestamp:float"].first().astype(float) == 0).all()
    assert len(first) == inter["user_id:token"].nunique()
    item = _read(d / "syn.item")
    assert list(item.columns) == ["item_id:token", "title:token_seq"] and len(item) == len(split.dataset.items)

    ex = split.examples
    for stage in ("valid", "test"):
        rows = _read(d / f"syn.{stage}.inter")
        assert list(rows.columns) == ["user_id:token", "item_id_list:token_seq", "item_id:token", "timestamp:float"]
        part = ex[ex["stage"] == stage]
        assert len(rows) == len(part)
        merged = rows.merge(part, left_on="user_id:token", right_on="user_id")
        assert (merged["item_id:token"] == merged["target"]).all()
        assert all(r.split(" ") == list(h)[-5:] for r, h in zip(merged["item_id_list:token_seq"], merged["history"]))
    train = _read(d / "syn.train.inter")
    seq_lens = ex[ex["stage"] == "train"]["history"].map(len)  # len(history + [target]) - 1 rows per user
    assert len(train) == int(seq_lens.sum())
    assert train["item_id_list:token_seq"].str.split(" ").map(len).max() == 5

    cfg = yaml.safe_load((d / "syn.yaml").read_text())
    assert cfg["dataset"] == "syn" and cfg["benchmark_filename"] == ["train", "valid", "test"]
    assert cfg["eval_args"]["mode"] == "full" and cfg["MAX_ITEM_LIST_LENGTH"] == 5
    info = yaml.safe_load((d / "export.json").read_text())
    assert info["candidates_sha256"] == split.candidates_sha256 and info["stages"]["test"]["skipped_empty_history"] == 0
    assert "RecBole files for dataset 'syn'" in out


def test_export_rejects_bad_names(synthetic_split, tmp_path, run_cli) -> None:
    code, _, err = run_cli("export", "recbole", synthetic_split, "--out", tmp_path, "--name", "a/b")
    assert code == 2 and "--name" in err
    code, _, err = run_cli("export", "recbole", tmp_path, "--out", tmp_path)
    assert code == 2 and "not a split directory" in err


@pytest.mark.parametrize("ids,sep", [(["a", "b"], " "), (["a b", "c"], ",")])
def test_sequence_separator(ids, sep) -> None:
    from eval.recbole_export import _separator

    assert _separator(pd.Series(ids)) == sep


def test_positions_follow_time_order_of_an_unsorted_file(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from eval.recbole_export import export_recbole
    from mmrec.data.canonical import write_tables
    from mmrec.data.splits import SplitConfig, make_split

    items = pd.DataFrame({"item_id": [f"i{k}" for k in range(20)], "title": "t"})
    write_tables(tmp_path / "ds", items, pd.DataFrame(columns=["user_id", "item_id", "timestamp"]))
    rows = pd.DataFrame({"user_id": ["f"] * 4, "item_id": ["i1", "i2", "i3", "i4"], "timestamp": [100, 50, 70, 60]})
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp_path / "ds" / "interactions.parquet")
    split = make_split(tmp_path / "ds", SplitConfig(negatives=2), tmp_path / "s")
    export_recbole(split, tmp_path / "rb", "x")
    inter = _read(tmp_path / "rb" / "x" / "x.inter")
    assert inter["item_id:token"].tolist() == ["i2", "i4", "i3", "i1"]
    assert inter["timestamp:float"].astype(float).tolist() == [0.0, 1.0, 2.0, 3.0]
