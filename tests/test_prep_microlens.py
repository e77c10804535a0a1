"""`mmrec prep microlens` on fixtures in the MicroLens release format (pairs CSV, titles CSV, covers folder)."""
from __future__ import annotations

import json

from PIL import Image

from mmrec.data.canonical import load_dataset


def write_microlens(root):
    root.mkdir()
    (root / "MicroLens-50k_pairs.csv").write_text(
        "user,item,timestamp\n1,100,1583310524032\n1,101,1583310525000\n2,100,1583310530999\n2,102,1583310540000\n")
    (root / "MicroLens-50k_titles.csv").write_text(
        'item,title\n100,"Cats, dogs and a very long day"\n101,Cooking show\n102,Street dance\n103,Unwatched\n')
    covers = root / "MicroLens-50k_covers"
    covers.mkdir()
    Image.new("RGB", (16, 9), (1, 2, 3)).save(covers / "100.jpg")
    Image.new("P", (16, 9)).save(covers / "101.jpg.png")  # wrong stem: not item 101's cover
    (covers / "102.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def test_microlens_pairs_titles_covers(tmp_path, run_cli):
    write_microlens(tmp_path / "ml")
    r = tmp_path / "ml"
    code, out, err = run_cli("prep", "microlens", "--pairs", r / "MicroLens-50k_pairs.csv",
                             "--titles", r / "MicroLens-50k_titles.csv", "--covers", r / "MicroLens-50k_covers",
                             "--out", tmp_path / "d")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["images"]["skipped"] == {"truncated": 1} and stats["items_with_image"] == 1
    ds = load_dataset(tmp_path / "d")
    assert ds.interactions["timestamp"].tolist() == [1583310524, 1583310525, 1583310530, 1583310540]  # ms -> s
    items = ds.items.set_index("item_id")
    assert items.at["100", "title"] == "Cats, dogs and a very long day"
    assert (items.at["100", "image_width"], items.at["100", "image_height"]) == (16, 9)
    code, out, err = run_cli("prep", "microlens", "--pairs", r / "MicroLens-50k_pairs.csv",
                             "--covers", r / "MicroLens-50k_covers", "--image-policy", "fail", "--out", tmp_path / "e")
    assert code == 2 and "102.jpg" in err and "--image-policy skip" in err
    assert not (tmp_path / "e").exists()


def test_microlens_seconds_and_missing_columns(tmp_path, run_cli):
    (tmp_path / "p.csv").write_text("user,item,timestamp\n1,100,1583310524\n")
    code, out, err = run_cli("prep", "microlens", "--pairs", tmp_path / "p.csv", "--out", tmp_path / "d")
    assert code == 0, err
    assert load_dataset(tmp_path / "d").interactions["timestamp"].tolist() == [1583310524]
    (tmp_path / "q.csv").write_text("user_id,video_id,time\n1,100,1\n")
    code, out, err = run_cli("prep", "microlens", "--pairs", tmp_path / "q.csv", "--out", tmp_path / "e")
    assert code == 2 and "q.csv: missing column(s) ['user', 'item', 'timestamp']" in err
