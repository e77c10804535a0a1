"""Synthetic multimodal benchmark with known ground truth.

    mmrec prep synthetic --users 200 --items 120 --seed 0 --out data/synthetic

Items are small PNG images of a coloured shape with a pattern (colour x shape x pattern). Titles and texts
name the shape only, so the colour and the pattern -- which carry most of the preference signal -- are
visible in the image alone: a model that sees images should beat one that reads titles.

Each user has a latent preferred colour, shape and pattern; the colour (and, more rarely, the pattern)
drifts slowly to a neighbouring value along the sequence. Each step picks an unseen item with probability
proportional to exp(utility) (colour match 4, shape 1.5, pattern 2, plus half the log-popularity), or, with
probability `--noise`, by popularity alone. Timestamps increase per user with a few equal-timestamp ties.

Besides the canonical tables the directory holds the truth, for testing recommenders in isolation:
`user_preferences.parquet` (user_id, preference sentence at the end of the sequence, colour, shape,
pattern, initial_colour, initial_shape, initial_pattern), `item_attributes.parquet` (item_id, colour,
shape, pattern) and `interaction_truth.parquet` (each interaction in sequence order with the user's preferred
colour, shape and pattern at that step, and `by_popularity` when the step ignored the preference).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from mmrec.config import option, to_dict
from mmrec.data.canonical import PREP_FILE, STATS_FILE, write_tables
from mmrec.errors import DataError
from mmrec.io import read_json, sha256_bytes, write_parquet
from mmrec.progress import get_logger
from mmrec.seeding import rng

log = get_logger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {  # ordered around the colour wheel: drift moves to a neighbour
    "red": (220, 40, 40), "orange": (240, 140, 20), "yellow": (230, 210, 30),
    "green": (40, 170, 60), "blue": (40, 90, 220), "purple": (140, 50, 190),
}
SHAPES = ("circle", "square", "triangle", "diamond")
PATTERNS = ("solid", "striped", "dotted")
W_COLOUR, W_SHAPE, W_PATTERN, W_POP = 4.0, 1.5, 2.0, 0.5

_BRANDS = ("Nova", "Acme", "Lumo", "Orbit", "Pico", "Zest", "Kiro", "Vela")
_PRODUCTS = ("sticker", "badge", "tile", "coaster", "magnet", "patch")
_MATERIALS = ("paper", "vinyl", "ceramic", "cork", "metal", "fabric")
_SIZES = ("small", "medium", "large")
BASE_TIME = 1_600_000_000


@dataclass
class SyntheticOptions:
    """`mmrec prep synthetic`'s options: the `--flag-name` options and the keys of `data.options`. The dataset is a
    function of them (`prep.json`'s `arguments`), so an existing one made with the same options is kept."""

    users: int = option(200, "number of users")
    items: int = option(120, "number of items")
    seed: int = option(0, "random seed; the output is a function of the arguments")
    interactions_per_user: float = option(20.0, "mean sequence length (Poisson, at least --min-length)")
    min_length: int = option(5, "shortest user sequence")
    image_size: int = option(32, "image side in pixels")
    drift: float = option(0.04, "per-step probability that a user's preferred colour moves to a neighbour")
    noise: float = option(0.15, "probability that a step is drawn by popularity alone")
    tie_rate: float = option(0.03, "probability that a step has the same timestamp as the previous one")


def _check(options: SyntheticOptions) -> None:
    if options.users < 1 or options.items < 2:
        raise DataError(f"synthetic: need --users >= 1 and --items >= 2, got {options.users} and {options.items}")
    if options.min_length < 1 or options.min_length >= options.items:
        raise DataError(f"synthetic: --min-length must be in [1, --items), got {options.min_length}")
    if options.image_size < 8:
        raise DataError(f"synthetic: --image-size must be at least 8, got {options.image_size}")
    for name in ("drift", "noise", "tie_rate"):
        if not 0.0 <= getattr(options, name) <= 1.0:
            raise DataError(f"synthetic: --{name.replace('_', '-')} must be in [0, 1], got {getattr(options, name)}")


def _attributes(n_items: int, seed: int) -> pd.DataFrame:
    """Balanced attribute combinations: every combo appears before any repeats, in a seeded order."""
    combos = np.array([(c, s, p) for c in range(len(COLOURS)) for s in range(len(SHAPES))
                       for p in range(len(PATTERNS))])
    g = rng(seed, "synthetic", "items")
    order = np.concatenate([g.permutation(len(combos)) for _ in range(-(-n_items // len(combos)))])[:n_items]
    chosen = combos[order]
    return pd.DataFrame({"colour": chosen[:, 0], "shape": chosen[:, 1], "pattern": chosen[:, 2]})


def draw_item(colour: int, shape: int, pattern: int, size: int, g: np.random.Generator) -> bytes:
    """PNG bytes of one item: a shape in `colour` with `pattern`, jittered so no two images are identical."""
    bg = tuple(int(v) for v in 235 + g.integers(-10, 11, 3))
    margin = max(2, size // 8) + int(g.integers(0, max(1, size // 16) + 1))
    dx, dy = (int(v) for v in g.integers(-1, 2, 2))
    box = (margin + dx, margin + dy, size - 1 - margin + dx, size - 1 - margin + dy)
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    name = SHAPES[shape]
    if name == "circle":
        d.ellipse(box, fill=255)
    elif name == "square":
        d.rectangle(box, fill=255)
    elif name == "triangle":
        d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=255)
    else:
        d.polygon([((x0 + x1) / 2, y0), (x1, (y0 + y1) / 2), ((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2)], fill=255)
    fill = np.empty((size, size, 3), dtype=np.uint8)
    fill[:] = list(COLOURS.values())[colour]
    yy, xx = np.mgrid[0:size, 0:size]
    step = max(3, size // 8)
    if PATTERNS[pattern] == "striped":
        fill[(yy // (step // 2 + 1)) % 2 == 1] = 255
    elif PATTERNS[pattern] == "dotted":
        fill[((yy % step) < step // 2) & ((xx % step) < step // 2)] = 255
    canvas = np.empty_like(fill)
    canvas[:] = bg
    out = np.where(np.asarray(mask)[..., None] > 0, fill, canvas)
    buf = io.BytesIO()
    Image.fromarray(out, "RGB").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _items_table(attrs: pd.DataFrame, size: int, seed: int, images_dir: Path) -> pd.DataFrame:
    g = rng(seed, "synthetic", "item_text")
    n = len(attrs)
    ids = [f"i{k:04d}" for k in range(n)]
    rows = []
    for k, (c, s, p) in enumerate(attrs[["colour", "shape", "pattern"]].itertuples(index=False)):
        data = draw_item(int(c), int(s), int(p), size, g)
        (images_dir / f"{ids[k]}.png").write_bytes(data)
        brand, product = _BRANDS[g.integers(len(_BRANDS))], _PRODUCTS[g.integers(len(_PRODUCTS))]
        material, sz = _MATERIALS[g.integers(len(_MATERIALS))], _SIZES[g.integers(len(_SIZES))]
        shape = SHAPES[int(s)]
        rows.append({
            "item_id": ids[k],
            "title": f"{brand} {shape} {product} {k:03d}",
            "text": f"A {sz} {material} {product} with a {shape} outline.",
            "image": f"images/{ids[k]}.png",
            "image_sha256": sha256_bytes(data),
            "image_width": size,
            "image_height": size,
        })
    return pd.DataFrame(rows)


def generate(options: SyntheticOptions, images_dir: Path | None = None) -> dict[str, pd.DataFrame]:
    """All tables of the benchmark (images written into `images_dir` when given).

    Vectorised over users: one numpy step per sequence position, never a Python loop per interaction.
    """
    _check(options)
    n_users, n_items, seed = options.users, options.items, options.seed
    attrs = _attributes(n_items, seed)
    colour, shape, pattern = (attrs[c].to_numpy() for c in ("colour", "shape", "pattern"))
    g = rng(seed, "synthetic", "users")
    pop_logit = -np.log1p(g.permutation(n_items)).astype(np.float64)  # Zipf-like popularity by a random rank
    lengths = np.maximum(options.min_length, g.poisson(options.interactions_per_user, n_users))
    lengths = np.minimum(lengths, n_items - 1)
    pref_c = g.integers(0, len(COLOURS), n_users)
    pref_s = g.integers(0, len(SHAPES), n_users)
    pref_p = g.integers(0, len(PATTERNS), n_users)
    init = (pref_c.copy(), pref_s.copy(), pref_p.copy())
    seen = np.zeros((n_users, n_items), dtype=bool)
    clock = BASE_TIME + g.integers(0, 30 * 86400, n_users)
    users, items, times, truth = [], [], [], []
    for t in range(int(lengths.max())):
        active = np.flatnonzero(lengths > t)
        if t > 0:  # slow drift to a neighbouring colour / pattern
            move = g.random(len(active)) < options.drift
            pref_c[active[move]] = (pref_c[active[move]] + g.choice([-1, 1], move.sum())) % len(COLOURS)
            move = g.random(len(active)) < options.drift / 2
            pref_p[active[move]] = (pref_p[active[move]] + 1) % len(PATTERNS)
        util = (W_COLOUR * (colour[None, :] == pref_c[active, None])
                + W_SHAPE * (shape[None, :] == pref_s[active, None])
                + W_PATTERN * (pattern[None, :] == pref_p[active, None]) + W_POP * pop_logit[None, :])
        noisy = g.random(len(active)) < options.noise
        util[noisy] = pop_logit[None, :]
        util[seen[active]] = -np.inf
        gumbel = -np.log(-np.log(g.random(util.shape)))  # Gumbel-max: one categorical draw per row
        pick = np.argmax(util + gumbel, axis=1)
        seen[active, pick] = True
        step = (g.exponential(86400.0, len(active)) + 1).astype(np.int64)
        step[g.random(len(active)) < options.tie_rate] = 0
        clock[active] += step
        users.append(active)
        items.append(pick)
        times.append(clock[active].copy())
        truth.append(np.stack([pref_c[active], pref_s[active], pref_p[active], noisy], axis=1))
    u, i, ts = np.concatenate(users), np.concatenate(items), np.concatenate(times)
    order = np.argsort(u, kind="stable")  # generation order within a user = sequence order (ties included)
    user_ids = np.array([f"u{k:05d}" for k in range(n_users)], dtype=object)
    item_ids = np.array([f"i{k:04d}" for k in range(n_items)], dtype=object)
    interactions = pd.DataFrame({"user_id": user_ids[u[order]], "item_id": item_ids[i[order]],
                                 "timestamp": ts[order], "rating": np.full(len(u), np.nan)})
    col = lambda codes, vocab: np.array(list(vocab), dtype=object)[codes]  # noqa: E731  codes -> names
    prefs = pd.DataFrame({
        "user_id": user_ids,
        "preference": [f"The user likes {p} {c} {s} items." for c, s, p in
                       zip(col(pref_c, COLOURS), col(pref_s, SHAPES), col(pref_p, PATTERNS))],
        "colour": col(pref_c, COLOURS), "shape": col(pref_s, SHAPES), "pattern": col(pref_p, PATTERNS),
        "initial_colour": col(init[0], COLOURS), "initial_shape": col(init[1], SHAPES),
        "initial_pattern": col(init[2], PATTERNS),
    })
    item_attrs = pd.DataFrame({"item_id": item_ids, "colour": col(colour, COLOURS), "shape": col(shape, SHAPES),
                               "pattern": col(pattern, PATTERNS)})
    tr = np.concatenate(truth)[order]
    steps = interactions[["user_id", "item_id", "timestamp"]].assign(
        colour=col(tr[:, 0], COLOURS), shape=col(tr[:, 1], SHAPES), pattern=col(tr[:, 2], PATTERNS),
        by_popularity=tr[:, 3].astype(bool))
    tables = {"interactions": interactions, "user_preferences": prefs, "item_attributes": item_attrs,
              "interaction_truth": steps}
    if images_dir is not None:
        tables["items"] = _items_table(attrs, options.image_size, seed, images_dir)
    return tables


def _arguments(options: SyntheticOptions) -> dict[str, Any]:
    """The options as `prep.json` stores them, sorted by name: an existing dataset with equal ones is kept."""
    return dict(sorted(to_dict(options).items()))


def run(options: SyntheticOptions, out: Path) -> dict[str, Any]:
    """Write the benchmark to `out`; an existing directory made with the same arguments is kept as is."""
    from importlib.metadata import version

    out = Path(out)
    arguments = _arguments(options)
    if out.exists():
        prep = out / PREP_FILE
        if prep.is_file() and read_json(prep).get("arguments") == arguments and (out / STATS_FILE).is_file():
            log.info("synthetic dataset already in %s with the same arguments; kept", out)
            return read_json(out / STATS_FILE)
        if any(out.iterdir()) and not prep.is_file():
            raise DataError(f"{out}: exists and is not a dataset written by `mmrec prep`; "
                            "choose another --out or remove it")
    from mmrec.io import atomic_dir

    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        tables = generate(options, images_dir=tmp / "images")
        write_parquet(tables["user_preferences"], tmp / "user_preferences.parquet")
        write_parquet(tables["item_attributes"], tmp / "item_attributes.parquet")
        write_parquet(tables["interaction_truth"], tmp / "interaction_truth.parquet")
        prep_info = {"source": "synthetic", "arguments": arguments, "mmrec_version": version("mmrec")}
        stats = write_tables(tmp, tables["items"], tables["interactions"], prep_info,
                             extra_stats={"source": "synthetic"})
    log.info("synthetic dataset: %d users, %d items, %d interactions -> %s",
             stats["users"], stats["items"], stats["interactions"], out)
    return stats
