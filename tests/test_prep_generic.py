"""`mmrec prep generic` (CSV/JSONL with a column mapping) and the cleaning shared by every importer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmrec.data.canonical import load_dataset


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def grid_log(path: Path) -> Path:
    """u1..u4 x items a..d, with one user and one item too thin for a 2-core, a missing id and a duplicate."""
    rows = ["uid,sku,ts,stars"]
    for u in ("u1", "u2", "u3"):
        rows += [f"{u},a,1,5", f"{u},b,2,4", f"{u},c,3,2"]
    rows += ["u4,d,4,5", ",a,5,5", "u1,a,1,5"]
    return write(path, "\n".join(rows) + "\n")


def cli(tmp_path, *extra) -> list:
    return ["prep", "generic", "--interactions", tmp_path / "log.csv", "--user-col", "uid", "--item-col", "sku",
            "--time-col", "ts", "--rating-col", "stars", *extra, "--out", tmp_path / "d"]


def test_cleaning_counts_everything_dropped(tmp_path, run_cli):
    grid_log(tmp_path / "log.csv")
    code, out, err = run_cli(*cli(tmp_path, "--min-user", "2", "--min-item", "2", "--min-rating", "3"))
    assert code == 0, err
    stats = json.loads(out)
    d = stats["dropped"]
    assert (d["missing_id"], d["duplicates"], d["below_min_rating"]) == (1, 1, 3)
    assert d["kcore"] == 1 and stats["kcore"]["users_removed"] == 1  # u4's single interaction
    assert stats["users"] == 3 and stats["items"] == 2 and stats["interactions"] == 6
    assert stats["timestamp_ties"] == 0 and stats["seq_len_max"] == 2
    prep = json.loads((tmp_path / "d" / "prep.json").read_text())
    assert prep["source"] == "generic" and prep["options"]["min_user"] == 2


def test_iso_times_jsonl_items_and_image_paths(tmp_path, run_cli):
    write(tmp_path / "log.jsonl", "\n".join(json.dumps(r) for r in [
        {"user": 1, "item": 10, "when": "2024-01-02T00:00:00Z"},
        {"user": 1, "item": 11, "when": "2024-01-01"},
        {"user": 2, "item": 10, "when": "2024-01-03T01:00:00+01:00"}]) + "\n")
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    Image.new("LA", (4, 4)).save(imgs / "sub" / "ten.png")
    (tmp_path / "secret.png").write_bytes(b"x")
    write(tmp_path / "items.csv", 'id,name,desc,pic\n10,Lamp,"warm, bright",sub/ten.png\n11,Desk,,../secret.png\n')
    args = ["prep", "generic", "--interactions", tmp_path / "log.jsonl", "--user-col", "user", "--item-col", "item",
            "--time-col", "when", "--time-format", "iso", "--items", tmp_path / "items.csv", "--items-id-col", "id",
            "--title-col", "name", "--text-cols", "desc", "--image-col", "pic", "--images", imgs]
    code, out, err = run_cli(*args, "--out", tmp_path / "d")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["dropped"]["image_path_outside_root"] == 1 and stats["items_with_image"] == 1
    ds = load_dataset(tmp_path / "d")
    assert ds.sequences().to_dict() == {"1": ["11", "10"], "2": ["10"]}
    assert ds.interactions["timestamp"].tolist() == [1704067200, 1704153600, 1704240000]
    items = ds.items.set_index("item_id")
    assert items.at["10", "text"] == "Lamp. warm, bright" and items.at["11", "text"] == "Desk"
    code, _, err = run_cli(*args, "--image-policy", "fail", "--out", tmp_path / "d2")
    assert code == 2 and "../secret.png" in err and "outside its image root" in err
    assert not (tmp_path / "d2").exists()


def test_require_image_and_resume_cache(tmp_path, run_cli, monkeypatch):
    write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\nv,a,3\n")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.new("RGB", (5, 5)).save(imgs / "a.jpg")
    Image.new("RGB", (5, 5)).save(imgs / "b.jpg")
    # a crash after the images were inspected: the next run must not decode them again
    import data_prep.common as common

    def crash(*a, **k):
        raise RuntimeError("disk full")
    monkeypatch.setattr(common, "write_tables", crash)
    with pytest.raises(RuntimeError):
        run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--images", imgs, "--out", tmp_path / "d")
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d.*.tmp"))
    assert (tmp_path / ".d.image-cache.jsonl").is_file()
    monkeypatch.undo()
    calls = []
    real = common.inspect_image
    monkeypatch.setattr(common, "inspect_image", lambda *a: calls.append(a) or real(*a))
    (imgs / "b.jpg").write_bytes(b"")  # changed since: inspected again (and now skipped)
    code, out, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--images", imgs,
                             "--require-image", "--out", tmp_path / "d")
    assert code == 0, err
    assert [Path(c[0]).name for c in calls] == ["b.jpg"]
    stats = json.loads(out)
    assert stats["dropped"]["no_usable_image"] == 1 and stats["images"]["skipped"] == {"empty": 1}
    assert not (tmp_path / ".d.image-cache.jsonl").exists()  # removed once the dataset is written


def test_refuses_foreign_out_dir_and_replaces_a_dataset(tmp_path, run_cli):
    write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,a,1\n")
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    code, _, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--out", tmp_path / "home")
    assert code == 2 and "is not a dataset written by `mmrec prep`" in err
    assert (tmp_path / "home" / "thesis.tex").read_text() == "precious"
    for _ in range(2):  # a second run replaces the first dataset
        code, _, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--out", tmp_path / "d")
        assert code == 0, err


@pytest.mark.parametrize("content,message", [
    ("user_id,item_id\nu,a\n", "missing column(s) ['timestamp']; the header has ['user_id', 'item_id']"),
    ("user_id,item_id,timestamp\nu,a,1\nu,b\n", "log.csv, line 3: expected 3 fields, got 2"),
    ("user_id,item_id,timestamp\nu,a,1\nu,b,2024-01-01\n", "log.csv, line 3: timestamp '2024-01-01' is not a number"),
    ("user_id,item_id,timestamp\n", "no interactions in the file"),
    ("user_id,item_id,timestamp\nu,a,1\nu,b,1e20\n", "log.csv, line 3: timestamp '1e20' is out of range"),
    ("", "log.csv: interactions file is empty (0 bytes)"),
    ("user_id,item_id,timestamp\nu,a,1\n", "--min-rating 3.0 was given but the generic data has no ratings"),
])
def test_bad_input_messages(tmp_path, run_cli, content, message):
    write(tmp_path / "log.csv", content)
    code, out, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--min-rating", "3",
                             "--out", tmp_path / "d")
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()


def test_skipped_bad_lines_are_counted(tmp_path, run_cli):
    write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,a,1\nu,b\nv,a,2,9\nv,c,3\n")
    code, out, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--bad-lines", "skip",
                             "--out", tmp_path / "d")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["dropped"]["bad_lines"] == {"log.csv": 2} and stats["interactions"] == 2


def test_jsonl_int_ids_with_gaps_and_config_options(tmp_path):
    """Integer ids with a null among them stay '7' (not '7.0'); the `data` section of a config runs the same import."""
    from data_prep.config import PrepConfig, prep_from_config

    write(tmp_path / "log.jsonl",
          '{"u": 7, "i": 3, "t": 10}\n{"u": null, "i": 3, "t": 11}\n{"u": 8, "i": 4, "t": 12}\n')
    cfg = PrepConfig(source="generic", options={"interactions": str(tmp_path / "log.jsonl"), "user_col": "u",
                                                "item_col": "i", "time_col": "t", "bad_lines": "skip"})
    stats = prep_from_config(cfg, tmp_path / "d")
    assert stats["dropped"]["missing_id"] == 1
    ds = load_dataset(tmp_path / "d")
    assert sorted(ds.interactions["user_id"]) == ["7", "8"] and sorted(ds.items["item_id"]) == ["3", "4"]


def test_dataset_image_paths_never_leave_the_dataset(tmp_path, run_cli):
    import pandas as pd

    from mmrec.data.canonical import CanonicalDataset
    from mmrec.data.images import ImageError

    write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,a,1\n")
    assert run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--out", tmp_path / "d")[0] == 0
    ds = load_dataset(tmp_path / "d")
    assert ds.image_path("a") is None
    forged = CanonicalDataset(root=ds.root, items=pd.DataFrame({"item_id": ["a"], "image": ["../../etc/passwd"]}),
                              interactions=ds.interactions)
    with pytest.raises(ImageError, match="outside its image root"):
        forged.image_path("a")


def test_images_hard_linked_or_copied(tmp_path, run_cli):
    write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\n")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("a", "b"):  # the same picture twice: stored once
        Image.new("RGB", (3, 3), (7, 7, 7)).save(imgs / f"{name}.png")
    for flag, linked in (([], True), (["--copy-images"], False)):
        code, out, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--images", imgs, *flag,
                                 "--out", tmp_path / "d")
        assert code == 0, err
        assert json.loads(out)["images"]["files"] == 1
        ds = load_dataset(tmp_path / "d")
        assert ds.items["image"].nunique() == 1
        stored = tmp_path / "d" / ds.items["image"].iloc[0]
        assert (stored.stat().st_ino in {(imgs / "a.png").stat().st_ino, (imgs / "b.png").stat().st_ino}) == linked


def test_jsonl_all_lines_bad_and_skipped(tmp_path, run_cli):
    write(tmp_path / "log.jsonl", '{"user_id": "u", "item_id": \n[1, 2]\n')
    code, _, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.jsonl", "--bad-lines", "skip",
                           "--out", tmp_path / "d")
    assert code == 2 and "log.jsonl: no interactions in the file" in err


def test_tab_delimiter_as_typed_in_a_shell(tmp_path, run_cli):
    write(tmp_path / "log.txt", "user_id\titem_id\ttimestamp\nu\ta,b\t1\n")
    code, out, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.txt", "--delimiter", "\\t",
                             "--out", tmp_path / "d")
    assert code == 0, err
    assert load_dataset(tmp_path / "d").items["item_id"].tolist() == ["a,b"]


NOT_UTF8 = [  # (file name, content, the line named): bytes \xff\xfe are not UTF-8 anywhere
    ("log.csv", b"user_id,item_id,timestamp\nu,a,1\nu,b\xff\xfe,2\nv,a,3\n", 3),
    ("log.jsonl", (b'{"user_id": "u", "item_id": "a", "timestamp": 1}\n{"user_id": "u", "item_id": "b\xff\xfe", '
                   b'"timestamp": 2}\n{"user_id": "v", "item_id": "a", "timestamp": 3}\n'), 2),
]


@pytest.mark.parametrize("name,content,line", NOT_UTF8)
def test_non_utf8_lines_are_named_or_skipped_never_stored(tmp_path, run_cli, name, content, line):
    (tmp_path / name).write_bytes(content)
    code, _, err = run_cli("prep", "generic", "--interactions", tmp_path / name, "--out", tmp_path / "d")
    assert code == 2 and f"{name}, line {line}: not valid" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()
    code, out, err = run_cli("prep", "generic", "--interactions", tmp_path / name, "--bad-lines", "skip",
                             "--out", tmp_path / "d")
    assert code == 0, err
    assert json.loads(out)["dropped"]["bad_lines"] == {name: 1}
    ds = load_dataset(tmp_path / "d")  # the dataset reads back: no undecodable bytes were written
    assert sorted(ds.interactions["item_id"]) == ["a", "a"]


def test_non_utf8_line_with_the_wrong_field_count_is_named(tmp_path, run_cli):
    """pyarrow cannot hand such a row to the skip handler: a one-line error naming it, in both modes."""
    (tmp_path / "log.csv").write_bytes(b"user_id,item_id,timestamp\nu,a,1\nu,b\xff\xfe,2,9\nv,a,3\n")
    for mode in ("fail", "skip"):
        code, _, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--bad-lines", mode,
                               "--out", tmp_path / "d")
        assert code == 2 and "Traceback" not in err and "Exception ignored" not in err
        assert "log.csv, line 3: expected 3 fields and the line is not valid utf-8 text either" in err


def test_non_utf8_header_is_named(tmp_path, run_cli):
    (tmp_path / "log.csv").write_bytes(b"user_id,item_id,timestamp\xff\nu,a,1\n")
    for mode in ("fail", "skip"):
        code, _, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--bad-lines", mode,
                               "--out", tmp_path / "d")
        assert code == 2 and "log.csv, line 1: the header is not valid utf-8 text" in err and "Traceback" not in err


def test_jsonl_field_of_another_type_is_a_bad_line(tmp_path, run_cli):
    lines = [f'{{"user_id": "u{i % 3}", "item_id": "i{i}", "timestamp": {i}}}' for i in range(1, 58)]
    lines[3] = '{"user_id": "u1", "item_id": "i4", "timestamp": "soon"}'
    write(tmp_path / "log.jsonl", "\n".join(lines) + "\n")
    code, _, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.jsonl", "--out", tmp_path / "d")
    assert code == 2 and "log.jsonl, line 4: field 'timestamp' is string 'soon'" in err and "lines 1-57" not in err
    code, out, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.jsonl", "--bad-lines", "skip",
                             "--out", tmp_path / "d")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["dropped"]["bad_lines"] == {"log.jsonl": 1} and stats["interactions"] == 56


def test_jsonl_type_change_between_blocks_is_found(tmp_path, monkeypatch):
    """Blocks parse on their own; a field that is a number in one block and text in the next is still a bad line."""
    from data_prep import readers

    monkeypatch.setattr(readers, "CHUNK_BYTES", 20)  # blocks of 3 lines
    write(tmp_path / "log.jsonl", '{"t": 1}\n{"t": 2}\n{"t": 3}\n{"t": "x"}\n{"t": "y"}\n')
    bad = readers.BadLines("skip")
    frame = readers.read_all(readers.JsonlFile(tmp_path / "log.jsonl").read(bad))
    assert frame["t"].tolist() == [1, 2, 3] and bad.counts["bad_lines"] == {"log.jsonl": 2}


def test_symlinks_in_the_image_folder_are_resolved_and_confined(tmp_path, run_cli, caplog):
    """A link out of --images is refused and counted; an in-folder (relative) link is stored as its target's bytes."""
    from mmrec.data.images import load_image

    write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,a,1\nu,b,2\nu,c,3\n")
    imgs = tmp_path / "imgs"
    (imgs / "sub").mkdir(parents=True)
    Image.new("RGB", (3, 3), (200, 0, 0)).save(imgs / "a.png")
    Image.new("RGB", (4, 4), (0, 200, 0)).save(tmp_path / "secret.png")
    Image.new("RGB", (5, 5), (0, 0, 200)).save(imgs / "sub" / "blue.png")
    (imgs / "b.png").symlink_to(tmp_path / "secret.png")
    (imgs / "c.png").symlink_to("sub/blue.png")  # relative to the folder
    code, out, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--images", imgs,
                             "--out", tmp_path / "d")
    assert code == 0, err
    assert json.loads(out)["images"]["skipped"] == {"outside_root": 1}
    assert "b.png: symbolic link points outside its image folder" in caplog.text
    ds = load_dataset(tmp_path / "d")
    assert ds.image_path("b") is None
    stored = ds.image_path("c")
    assert not stored.is_symlink() and stored.read_bytes() == (imgs / "sub" / "blue.png").read_bytes()
    assert load_image(stored).size == (5, 5)
    code, _, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--images", imgs,
                           "--image-policy", "fail", "--out", tmp_path / "d2")
    assert code == 2 and "b.png" in err and "outside" in err and "Traceback" not in err


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_follow_the_umask(tmp_path, run_cli, umask):
    """Dataset folder and files get the modes the user's umask gives (colleagues on a cluster can read them)."""
    import os
    import stat

    write(tmp_path / "log.csv", "user_id,item_id,timestamp\nu,a,1\n")
    old = os.umask(umask)
    try:
        code, _, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--out", tmp_path / "d")
    finally:
        os.umask(old)
    assert code == 0, err
    d = tmp_path / "d"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in [d, *d.iterdir()]}
    want_dir, want_file = 0o777 & ~umask, 0o666 & ~umask
    assert modes == {"d": want_dir, "images": want_dir, **{n: want_file for n in
                     ("items.parquet", "interactions.parquet", "stats.json", "prep.json")}}


def log_to_this_tests_stderr(monkeypatch) -> None:
    """The `[mmrec]` log handler keeps the stderr of the test that logged first, which pytest has closed since
    (its 'Logging error' traceback would land in this test's stderr): point it at this test's (call it in the test)."""
    import logging
    import sys

    for handler in logging.getLogger("mmrec").handlers:
        if type(handler) is logging.StreamHandler:  # not pytest's own capture handlers
            monkeypatch.setattr(handler, "stream", sys.stderr)


def test_a_folder_of_files_from_the_wild_never_gives_a_traceback_or_an_unreadable_dataset(tmp_path, run_cli,
                                                                                         monkeypatch):
    """Every bad input above, with an item file and images: a clear message, or counted skips and a dataset
    whose tables and images all read back."""
    log_to_this_tests_stderr(monkeypatch)
    from mmrec.data.images import load_image

    wild = tmp_path / "wild"
    imgs = wild / "imgs"
    imgs.mkdir(parents=True)
    Image.new("RGB", (3, 3), (9, 9, 9)).save(imgs / "a.png")
    (imgs / "b.png").symlink_to(tmp_path / "nowhere.png")  # dangling, outside
    Image.new("RGB", (3, 3), (1, 2, 3)).save(tmp_path / "outside.png")
    (imgs / "c.png").symlink_to(tmp_path / "outside.png")
    (imgs / "d.png").symlink_to("a.png")
    items = (b'{"id": "a", "name": "ok"}\n{"id": "b", "name": "caf\xe9"}\n{"id": "c", "name": "out"}\n'
             b'{"id": "d", "name": "fine"}\n{"id": "e", "name": 3}\n')
    (wild / "items.jsonl").write_bytes(items)
    rows = [("u", "a", 1), ("u", "b\xff", 2), ("v", "c", 3), ("v", "d", 4), ("w", "e", 5), ("w", "a", 6)]
    (wild / "log.csv").write_bytes(b"user_id,item_id,timestamp\n" + b"".join(
        f"{u},{i},{t}\n".encode("latin-1") for u, i, t in rows))
    (wild / "log.jsonl").write_bytes(b"".join(
        b'{"user_id": "%s", "item_id": "%s", "timestamp": %d}\n' % (u.encode(), i.encode("latin-1"), t)
        for u, i, t in rows))
    for name in ("log.csv", "log.jsonl"):
        for mode in ("fail", "skip"):
            out = tmp_path / f"{name}-{mode}"
            code, stdout, err = run_cli("prep", "generic", "--interactions", wild / name,
                                        "--items", wild / "items.jsonl", "--items-id-col", "id", "--title-col", "name",
                                        "--images", imgs, "--bad-lines", mode, "--out", out)
            assert "Traceback" not in err and code in (0, 2), err
            if mode == "fail":
                assert code == 2 and not out.exists()
                continue
            assert code == 0, err
            stats = json.loads(stdout)
            assert stats["dropped"]["bad_lines"] == {name: 1, "items.jsonl": 2}  # b\xff; caf\xe9 and a number
            assert stats["dropped"]["unknown_item_interactions"] == 1  # item e, its line dropped
            assert stats["images"]["skipped"] == {"outside_root": 1}  # c links out of the folder
            ds = load_dataset(out)
            assert sorted(ds.items["item_id"]) == ["a", "c", "d"] and ds.image_path("c") is None
            for item in ds.items["item_id"]:
                path = ds.image_path(item)
                assert path is None or load_image(path).size == (3, 3)
