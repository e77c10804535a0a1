"""Dense item features of the CTR model, one matrix row per catalogue item, by variant:

- `id_only`: none (the model sees ids only);
- `text`: the text encoder's embedding of the item text (`text_fields` joined);
- `text_image`: that embedding concatenated with the CLIP embedding of the item image (zeros without one);
- `mmrec`: ONE text embedding of the item text fused with the item's VLM image summary (`fusion_template`),
  the MMREC paper's idea: both modalities in one text space before the ranking model sees them.

Every embedding goes through the on-disk cache (`cache/embeddings/`), so a second run or the scorer encodes nothing.
Row 0 is the all-zero padding row; catalogue rows are 1..n in the dataset's item order.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from mmrec.errors import ConfigError, DataError
from mmrec.models.id_table import IdTable

FUSION_FIELDS = ("item_text", "summary", "title", "text")


def check_template(template: str) -> None:
    """A fusion template may use only the known fields, and must use `summary` (else it is the `text` variant)."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        raise ValueError(f"'fusion_template' is not a valid format string: {e}") from None
    unknown = names - set(FUSION_FIELDS)
    if unknown:
        raise ValueError(f"'fusion_template' uses unknown field(s) {sorted(unknown)}; "
                         f"known: {', '.join(FUSION_FIELDS)}")
    if "summary" not in names:
        raise ValueError("'fusion_template' must contain {summary}")


class Catalogue:
    """Catalogue rows of item ids: 1..n in the dataset's order, 0 = padding."""

    def __init__(self, item_ids: Sequence[str]) -> None:
        self.item_ids = list(item_ids)
        if pd.Index(self.item_ids).has_duplicates:
            raise DataError("item table has duplicate item ids")
        self.table = IdTable(self.item_ids)

    def __len__(self) -> int:
        return len(self.item_ids)

    def rows(self, item_ids: Sequence[str], what: str = "items") -> np.ndarray:
        """Row per id; an id outside the catalogue is a data error naming it."""
        pos = self.table.positions(item_ids)
        if (pos < 0).any():
            bad = np.asarray(item_ids, dtype=object)[pos < 0][0]
            raise DataError(f"{int((pos < 0).sum())} {what} are not in the dataset's item table, e.g. {bad!r}")
        return pos.astype(np.int64) + 1

    def history_rows(self, histories: Sequence[Sequence[str]], length: int) -> np.ndarray:
        """[len(histories), length] rows of each history's last `length` items, right-aligned, 0-padded on the left."""
        out = np.zeros((len(histories), length), dtype=np.int64)
        tails = [list(h)[-length:] for h in histories]
        lengths = np.fromiter((len(t) for t in tails), dtype=np.int64, count=len(tails))
        flat = [item for t in tails for item in t]
        if flat:
            # Boolean assignment fills row by row, left to right: the order of `flat`.
            out[np.arange(length)[None, :] >= (length - lengths)[:, None]] = self.rows(flat, what="history items")
        return out


def item_texts(items: pd.DataFrame, fields: Sequence[str], where: str) -> list[str]:
    """Each item's text fields joined with '. ' (empty fields skipped)."""
    missing = [f for f in fields if f not in items.columns]
    if missing:
        raise ConfigError(f"{where}: text_fields {missing} are not columns of items.parquet "
                          f"(have: {', '.join(items.columns)})")
    cols = [items[f].fillna("").astype(str).str.strip() for f in fields]
    return [". ".join(p for p in parts if p) for parts in zip(*cols)]


def item_summaries(items: pd.DataFrame, source: str, summaries_path: Path, where: str, config: str) -> list[str]:
    """The text that stands for each item's image: the VLM summaries file, or a named items column."""
    if source != "summaries":
        if source not in items.columns:
            raise ConfigError(f"{where}: summary_source {source!r} is neither 'summaries' "
                              "nor a column of items.parquet")
        return items[source].fillna("").astype(str).tolist()
    if not summaries_path.is_file():
        raise DataError(f"{summaries_path} not found: the mmrec variant needs item summaries; run "
                        f"`mmrec summarize-items {config}` first (or set {where}.summary_source: text to fuse the "
                        f"items' own text column instead)")
    table = pd.read_parquet(summaries_path, columns=["item_id", "summary"])
    by_id = table.drop_duplicates("item_id", keep="last").set_index("item_id")["summary"]
    found = items["item_id"].map(by_id)
    if found.isna().any():
        missing = items.loc[found.isna(), "item_id"]
        raise DataError(f"{summaries_path}: {len(missing)} of {len(items)} items have no summary (e.g. "
                        f"{missing.iloc[0]!r}); re-run `mmrec summarize-items {config}` to complete it")
    return found.astype(str).tolist()


def build_features(mcfg: Any, dataset: Any, summaries_path: Path, cache_root: Path, where: str,
                   config: str, device: str = "auto") -> tuple[np.ndarray, dict[str, Any]]:
    """[n_items + 1, dim] float32 dense features of the variant (row 0 zeros), and a description for run.json
    (encoder identities, dims, cache hits/misses)."""
    from mmrec.encoders import ImageEncoder, TextEncoder, embed_images, embed_texts

    items = dataset.items
    info: dict[str, Any] = {"variant": mcfg.variant, "items": len(items)}
    blocks: list[np.ndarray] = []
    if mcfg.variant == "id_only":
        return np.zeros((len(items) + 1, 0), dtype=np.float32), info
    texts = item_texts(items, mcfg.text_fields, where)
    if mcfg.variant == "mmrec":
        summaries = item_summaries(items, mcfg.summary_source, summaries_path, where, config)
        texts = [mcfg.fusion_template.format(item_text=t, summary=s, title=ti, text=tx).strip()
                 for t, s, ti, tx in zip(texts, summaries, items["title"].fillna(""), items["text"].fillna(""))]
    text_encoder = TextEncoder(mcfg.text_encoder, device=device)
    vectors, cache = embed_texts(text_encoder, texts, cache_root, desc=f"embed item texts ({mcfg.variant})")
    blocks.append(vectors)
    info["text"] = {"identity": text_encoder.identity, "dim": text_encoder.dim, "hits": cache.hits,
                    "misses": cache.misses, "encoded": text_encoder.calls}
    if mcfg.variant == "text_image":
        image_encoder = ImageEncoder(mcfg.image_encoder, device=device)
        has = items["image"].notna().to_numpy()
        paths = [dataset.image_path(i) for i in items.loc[has, "item_id"]]
        image = np.zeros((len(items), image_encoder.dim), dtype=np.float32)
        if has.any():
            sha = items.loc[has, "image_sha256"].tolist() if "image_sha256" in items else None
            image[has], icache = embed_images(image_encoder, paths, cache_root, sha256=sha, desc="embed item images")
            info["image"] = {"identity": image_encoder.identity, "dim": image_encoder.dim, "hits": icache.hits,
                             "misses": icache.misses, "encoded": image_encoder.calls}
        info["items_without_image"] = int((~has).sum())
        blocks.append(image)
    features = standardize(np.concatenate(blocks, axis=1))
    return np.concatenate([np.zeros((1, features.shape[1]), dtype=np.float32), features]), info


def standardize(features: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per dimension over the catalogue. Unit-norm embeddings share a large common
    component and blocks differ in width (384 text vs 32..512 image dims); standardising lets the bottom MLP
    weigh every block's variation from the first step instead of learning the scales first."""
    std = features.std(axis=0)
    return ((features - features.mean(axis=0)) / np.where(std > 1e-6, std, 1.0)).astype(np.float32)
