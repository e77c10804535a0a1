"""MovieLens (GroupLens) into the canonical form, with an optional folder of posters.

    mmrec prep movielens --root ml-latest-small/ [--posters posters/] --out data/ml

Three layouts, detected from the files in --root (or forced with --format):
  ml-100k      u.data (tab: user item rating unix-time), u.item ('|', latin-1: id|title|date|video|url|19 genre flags)
  ml-1m        ratings.dat (UserID::MovieID::Rating::Timestamp), movies.dat (MovieID::Title::Genres), latin-1
  ml-latest    ratings.csv, movies.csv (movieId,title,genres), optional tags.csv (top tags go into the item text)
               and links.csv (lets posters be named by imdbId or tmdbId, see --posters-key)
Item text: "<title>. Genres: a, b. Tags: x, y". Posters: files named <movieId>.<ext> (jpg, png, webp, ...).
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from data_prep.common import CleaningOptions, finish_import, index_images
from data_prep.readers import BadLines, TableFile, check_file, read_all, to_rating, to_seconds, unknown_items
from mmrec.config import option
from mmrec.errors import DataError

LAYOUTS = {"ml-100k": ("u.data", "u.item"), "ml-1m": ("ratings.dat", "movies.dat"),
           "ml-latest": ("ratings.csv", "movies.csv")}
GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
               "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
               "Western"]
ITEM_100K = ["movie_id", "title", "release_date", "video_release_date", "imdb_url"] + [f"g{i}" for i in range(19)]


@dataclass(kw_only=True)
class MovieLensOptions(CleaningOptions):
    """`mmrec prep movielens`'s options: the `--flag-name` options and the keys of `data.options`."""

    root: Path = option(MISSING, "the unpacked MovieLens folder")
    format: Literal["ml-100k", "ml-1m", "ml-latest"] | None = option(None, "layout (default: detected from files)")
    posters: Path | None = option(None, "folder of poster images named <movieId>.<ext>")
    posters_key: Literal["movieId", "imdbId", "tmdbId"] = option(
        "movieId", "which id the poster files are named by (imdbId/tmdbId need links.csv, ml-latest only)")
    max_tags: int = option(5, "ml-latest: most frequent tags put into the item text")


def detect(root: Path) -> str:
    found = [name for name, (ratings, movies) in LAYOUTS.items() if (root / ratings).is_file()]
    if len(found) != 1:
        expected = "; ".join(f"{k}: {' + '.join(v)}" for k, v in LAYOUTS.items())
        raise DataError(f"{root}: cannot tell the MovieLens layout (expected one of {expected}); use --format")
    return found[0]


def _files(root: Path, layout: str) -> tuple[TableFile, TableFile]:
    ratings, movies = (check_file(root / n, f"MovieLens {layout} file") for n in LAYOUTS[layout])
    if layout == "ml-100k":
        return (TableFile(ratings, "\t", ["user_id", "movie_id", "rating", "timestamp"], quote=False),
                TableFile(movies, "|", ITEM_100K, "latin-1", quote=False))
    if layout == "ml-1m":
        return (TableFile(ratings, "::", ["user_id", "movie_id", "rating", "timestamp"], "latin-1", quote=False),
                TableFile(movies, "::", ["movie_id", "title", "genres"], "latin-1", quote=False))
    return TableFile(ratings), TableFile(movies)


def read_interactions(f: TableFile, layout: str, bad: BadLines) -> pd.DataFrame:
    cols = ["userId", "movieId", "rating", "timestamp"] if layout == "ml-latest" else \
        ["user_id", "movie_id", "rating", "timestamp"]
    raw = read_all(f.read(cols, bad))
    if raw.empty:
        raise DataError(f"{f.path}: no ratings in the file")
    user, movie = cols[0], cols[1]
    return pd.DataFrame({"user_id": raw[user], "item_id": raw[movie],
                         "timestamp": to_seconds(raw["timestamp"], "unix", f, "timestamp"),
                         "rating": to_rating(raw["rating"], f, "rating")})


def read_items(f: TableFile, layout: str, bad: BadLines) -> pd.DataFrame:
    if layout == "ml-100k":
        raw = read_all(f.read(ITEM_100K, bad))
        flags = raw[[f"g{i}" for i in range(19)]].fillna("0").eq("1")
        genres = flags.apply(lambda row: ", ".join(g for g, on in zip(GENRES_100K, row) if on), axis=1) \
            if len(raw) else pd.Series(dtype=str)
    else:
        cols = ["movie_id", "title", "genres"] if layout == "ml-1m" else ["movieId", "title", "genres"]
        raw = read_all(f.read(cols, bad)).rename(columns={"movieId": "movie_id"})
        genres = raw["genres"].fillna("").str.replace("|", ", ", regex=False).replace("(no genres listed)", "")
    if raw.empty:
        raise DataError(f"{f.path}: no movies in the file")
    return pd.DataFrame({"item_id": raw["movie_id"], "title": raw["title"].fillna(""), "genres": genres.to_numpy()})


def top_tags(path: Path, max_tags: int, bad: BadLines) -> pd.Series:
    """movieId -> 'tag1, tag2' (most frequent first, ties alphabetical), from ml-latest tags.csv."""
    tags = read_all(TableFile(path).read(["movieId", "tag"], bad)).dropna()
    if tags.empty or max_tags <= 0:
        return pd.Series(dtype=str)
    tags["tag"] = tags["tag"].str.strip().str.lower()
    counts = tags.groupby(["movieId", "tag"]).size().rename("n").reset_index()
    counts = counts.sort_values(["movieId", "n", "tag"], ascending=[True, False, True], kind="stable")
    return counts.groupby("movieId").head(max_tags).groupby("movieId")["tag"].agg(", ".join)


def _text(items: pd.DataFrame) -> pd.Series:
    text = items["title"].astype(str)
    for label, col in (("Genres", "genres"), ("Tags", "tags")):
        if col in items:
            has = items[col].fillna("") != ""
            text = text.where(~has, text + f". {label}: " + items[col].fillna(""))
    return text


def run(options: MovieLensOptions, out: Path) -> dict:
    """Import the MovieLens folder `options` name into the canonical dataset `out`; returns its stats."""
    root = Path(options.root)
    if not root.is_dir():
        raise DataError(f"--root {root}: folder not found")
    layout = options.format or detect(root)
    bad = BadLines(options.bad_lines)
    ratings_file, movies_file = _files(root, layout)
    inter = read_interactions(ratings_file, layout, bad)
    items = read_items(movies_file, layout, bad)
    inter = unknown_items(inter, items["item_id"], ratings_file, "movieId" if layout == "ml-latest" else "movie_id",
                          movies_file.path, bad)
    if layout == "ml-latest" and (root / "tags.csv").is_file():
        items["tags"] = items["item_id"].map(top_tags(root / "tags.csv", options.max_tags, bad)).fillna("")
    items["text"] = _text(items)
    posters = index_images(options.posters)
    key = items["item_id"]
    if options.posters_key != "movieId":
        if layout != "ml-latest" or not (root / "links.csv").is_file():
            raise DataError(f"--posters-key {options.posters_key} needs {root / 'links.csv'} (ml-latest layouts)")
        links = read_all(TableFile(root / "links.csv").read(["movieId", options.posters_key], bad))
        key = items["item_id"].map(links.dropna().drop_duplicates("movieId").set_index("movieId")[options.posters_key])
    items["image_source"] = key.map(lambda k: str(posters[k]) if isinstance(k, str) and k in posters else None)
    inputs = {"root": root, "layout": layout, "posters": options.posters}
    return finish_import(options, out, inter, items, source=f"movielens/{layout}", counts=bad.counts, inputs=inputs)
