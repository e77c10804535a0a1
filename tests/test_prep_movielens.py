"""`mmrec prep movielens` on fixture files written in each layout's real format (delimiters, encodings)."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

from mmrec.data.canonical import load_dataset


def write_100k(root: Path) -> None:
    root.mkdir()
    (root / "u.data").write_text("1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250000\n"
                                 "2\t10\t4\t881250000\n")  # last line: an exact duplicate
    flags = ["0"] * 19
    comedy = flags.copy()
    comedy[5] = "1"
    action_war = flags.copy()
    action_war[1] = action_war[17] = "1"
    lines = ["10|Café Society (1995)|01-Jan-1995||http://x|" + "|".join(comedy),
             "20|Das Boot (1981)|01-Jan-1981||http://y|" + "|".join(action_war)]
    (root / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))


def write_1m(root: Path) -> None:
    root.mkdir()
    (root / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (root / "movies.dat").write_bytes("1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                                      "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
                                      "5::Amélie (2001)::Comedy|Romance\n".encode("latin-1"))


def write_latest(root: Path) -> None:
    root.mkdir()
    (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n"
                                      "2,1,2.5,964982224\n2,3,3.0,964983815\n")
    (root / "movies.csv").write_text('movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                                     '3,"Grumpier Old Men, The (1995)",(no genres listed)\n')
    (root / "tags.csv").write_text("userId,movieId,tag,timestamp\n1,1,pixar,1\n2,1,Pixar,2\n2,1,fun,3\n1,3,moldy,4\n")
    (root / "links.csv").write_text("movieId,imdbId,tmdbId\n1,0114709,862\n3,0113228,15602\n")


def test_ml100k_latin1_tabs_and_genre_flags(tmp_path, run_cli):
    write_100k(tmp_path / "ml-100k")
    code, out, err = run_cli("prep", "movielens", "--root", tmp_path / "ml-100k", "--out", tmp_path / "d")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["interactions"] == 3 and stats["dropped"]["duplicates"] == 1 and stats["source"] == "movielens/ml-100k"
    ds = load_dataset(tmp_path / "d")
    items = ds.items.set_index("item_id")
    assert items.at["10", "title"] == "Café Society (1995)"
    assert items.at["20", "text"] == "Das Boot (1981). Genres: Action, War"
    assert ds.interactions["rating"].tolist() == [5.0, 3.0, 4.0]
    assert ds.interactions["timestamp"].dtype == "int64"


def test_ml1m_double_colon_dat(tmp_path, run_cli):
    write_1m(tmp_path / "ml-1m")
    code, out, err = run_cli("prep", "movielens", "--root", tmp_path / "ml-1m", "--out", tmp_path / "d")
    assert code == 0, err
    ds = load_dataset(tmp_path / "d")
    assert sorted(ds.items["item_id"]) == ["1193", "661"]  # Amélie has no ratings: not kept
    assert json.loads(out)["dropped"]["items_without_interactions"] == 1
    assert ds.items.set_index("item_id").at["661", "text"] == \
        "James and the Giant Peach (1996). Genres: Animation, Children's, Musical"
    assert ds.sequences().to_dict() == {"1": ["1193", "661"], "2": ["1193"]}


def test_ml_latest_tags_posters_by_tmdb_id(tmp_path, run_cli):
    write_latest(tmp_path / "ml")
    posters = tmp_path / "posters"
    posters.mkdir()
    Image.new("RGB", (20, 30), (9, 9, 9)).save(posters / "862.jpg")
    code, out, err = run_cli("prep", "movielens", "--root", tmp_path / "ml", "--posters", posters,
                             "--posters-key", "tmdbId", "--min-rating", "3", "--out", tmp_path / "d")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["dropped"]["below_min_rating"] == 1 and stats["items_with_image"] == 1
    ds = load_dataset(tmp_path / "d")
    items = ds.items.set_index("item_id")
    assert items.at["1", "text"] == "Toy Story (1995). Genres: Adventure, Animation. Tags: pixar, fun"
    assert items.at["3", "text"] == "Grumpier Old Men, The (1995). Tags: moldy"
    assert (items.at["1", "image_width"], items.at["1", "image_height"]) == (20, 30)
    assert (tmp_path / "d" / items.at["1", "image"]).is_file() and items.at["1", "image"].startswith("images/")
    assert items["image"].isna().sum() == 1
    # readable by pyarrow and by `datasets`
    assert pq.read_table(tmp_path / "d" / "interactions.parquet").num_rows == 3
    import datasets

    hf = datasets.load_dataset("parquet", data_files=str(tmp_path / "d" / "items.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf"))
    assert set(hf["item_id"]) == {"1", "3"}


def test_ml_latest_bad_timestamp_names_file_and_line(tmp_path, run_cli):
    write_latest(tmp_path / "ml")
    with open(tmp_path / "ml" / "ratings.csv", "a") as f:
        f.write("3,1,4.0,yesterday\n")
    code, out, err = run_cli("prep", "movielens", "--root", tmp_path / "ml", "--out", tmp_path / "d")
    assert code == 2
    assert "ratings.csv, line 6: timestamp 'yesterday' is not a number" in err
    assert not (tmp_path / "d").exists()


def test_unknown_layout_and_unknown_movie(tmp_path, run_cli):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("prep", "movielens", "--root", tmp_path / "empty", "--out", tmp_path / "d")
    assert code == 2 and "cannot tell the MovieLens layout" in err
    write_1m(tmp_path / "ml-1m")
    with open(tmp_path / "ml-1m" / "ratings.dat", "a") as f:
        f.write("3::999::4::978298413\n")
    code, _, err = run_cli("prep", "movielens", "--root", tmp_path / "ml-1m", "--out", tmp_path / "d")
    assert code == 2 and "ratings.dat, line 4: item '999' is not in" in err and "movies.dat" in err
    code, out, err = run_cli("prep", "movielens", "--root", tmp_path / "ml-1m", "--bad-lines", "skip",
                             "--out", tmp_path / "d")
    assert code == 0, err
    assert json.loads(out)["dropped"]["unknown_item_interactions"] == 1
