"""`mmrec prep recbole` on RecBole atomic files (`name:type` headers, tab-separated, quotes are plain text)."""
from __future__ import annotations

import json

from mmrec.data.canonical import load_dataset

INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
         "196\t242\t3\t881250949\n186\t302\t3\t891717742.0\n196\t302\t4\t881250950\n")
ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tvec:float_seq\n"
        '242\tKolya\t1996\tComedy\t0.1 0.2\n302\tL.A. "Confidential"\t1997\tCrime Film-Noir\t0.3 0.4\n')


def test_recbole_inter_and_item(tmp_path, run_cli):
    (tmp_path / "ml.inter").write_text(INTER)
    (tmp_path / "ml.item").write_text(ITEM)
    code, out, err = run_cli("prep", "recbole", "--inter", tmp_path / "ml.inter", "--item", tmp_path / "ml.item",
                             "--out", tmp_path / "d")
    assert code == 0, err
    assert json.loads(out)["timestamp_from_line_order"] is False
    ds = load_dataset(tmp_path / "d")
    items = ds.items.set_index("item_id")
    assert items.at["302", "title"] == 'L.A. "Confidential"'
    assert items.at["302", "text"] == 'L.A. "Confidential". release_year: 1997. class: Crime Film-Noir'
    assert ds.sequences().to_dict() == {"186": ["302"], "196": ["242", "302"]}
    assert ds.interactions["rating"].tolist() == [3.0, 3.0, 4.0]


def test_recbole_without_timestamp_uses_line_order(tmp_path, run_cli):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\nu\tb\nu\ta\n")
    code, out, err = run_cli("prep", "recbole", "--inter", tmp_path / "x.inter", "--out", tmp_path / "d")
    assert code == 0, err
    assert json.loads(out)["timestamp_from_line_order"] is True
    assert load_dataset(tmp_path / "d").sequences().to_dict() == {"u": ["b", "a"]}


def test_recbole_bad_header_and_fields(tmp_path, run_cli):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:integer\nu\ta\n")
    code, _, err = run_cli("prep", "recbole", "--inter", tmp_path / "x.inter", "--out", tmp_path / "d")
    assert code == 2 and "x.inter, line 1: header column 'item_id:integer' is not 'name:type'" in err
    (tmp_path / "y.inter").write_text("uid:token\titem_id:token\nu\ta\n")
    code, _, err = run_cli("prep", "recbole", "--inter", tmp_path / "y.inter", "--out", tmp_path / "d")
    assert code == 2 and "no field 'user_id' (fields: uid, item_id); set --user-field" in err
    code, _, err = run_cli("prep", "recbole", "--inter", tmp_path / "y.inter", "--user-field", "uid",
                           "--out", tmp_path / "d")
    assert code == 0, err
