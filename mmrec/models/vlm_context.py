"""What the VLM recommender reads about a (user, stage) and a candidate item: preference text, title, image.

Preference sources:
- `summaries`: `summaries/users.parquet` (the recurrent preference of `mmrec summarize-users`), by (user, stage);
- `truth`: the synthetic benchmark's `user_preferences.parquet` (the generator's own sentence), by user;
- `history`: the Rec-GPT4V prompt, built from the last N history items' titles and image summaries
  (`summaries/items.parquet`; an item without a summary is listed by its title alone).

A row that lacks what its prompt needs (no preference for that user and stage, no readable image when the
prompt shows images, or a prompt that cannot fit `train.max_length`: `PromptEncoder.check`) is never dropped
silently: `check` returns the reason per row, callers report the counts and give those rows a NaN score
(scoring) or leave them out with a logged count (training).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmrec.errors import ConfigError, DataError
from mmrec.models.vlm_cache import ByteLRU, MiB
from mmrec.progress import get_logger

log = get_logger("mmrec.models.vlm")

TRUE_PREFERENCES = "user_preferences.parquet"
MISSING_PREFERENCE = "no preference"
MISSING_IMAGE = "no image"
BAD_IMAGE = "unreadable image"
UNKNOWN_ITEM = "unknown item"
TOO_LONG = "prompt too long"  # image + question + answer exceed train.max_length (checked by the prompt encoder)
IMAGE_CACHE_MB = 256  # decoded images kept in memory (the prompt encoder caches what it encodes from them)


def _key(user: Any, stage: Any) -> tuple[str, str]:
    return str(user), str(stage)


@dataclass
class VLMContext:
    """Preference texts, item titles and images of one split, for prompts."""

    split: Any  # mmrec.data.splits.Split
    source: str
    use_image: bool
    preferences: dict[tuple[str, str], str] = field(default_factory=dict)
    by_user: dict[str, str] = field(default_factory=dict)  # `truth` preferences are per user, any stage
    image_cache_mb: float = IMAGE_CACHE_MB
    _status: dict[str, str] = field(default_factory=dict, repr=False)  # item -> '' (readable) or why not
    _decoded: ByteLRU | None = field(default=None, repr=False)

    @classmethod
    def build(cls, split: Any, source: str, use_image: bool, users_parquet: Path, items_parquet: Path,
              history_items: int = 10) -> "VLMContext":
        ctx = cls(split=split, source=source, use_image=use_image)
        if source == "summaries":
            ctx.preferences = _read_summaries(users_parquet)
        elif source == "truth":
            ctx.by_user = _read_true(Path(split.dataset.root) / TRUE_PREFERENCES)
        elif source == "history":
            ctx.preferences = _history_texts(split, items_parquet, history_items)
        else:
            raise ConfigError(f"unknown preference_source {source!r}")
        return ctx

    def preference(self, user: Any, stage: Any) -> str | None:
        key = _key(user, stage)
        return self.preferences.get(key) if not self.by_user else self.by_user.get(key[0])

    def title(self, item: str) -> str:
        items = self.split.dataset.items_by_id
        return str(items.at[item, "title"]) if item in items.index else ""

    def image(self, item: str) -> Any:
        """The item's RGB image, or the reason it has none as a string. Whether an item has a readable image is
        remembered for good (a few bytes); the decoded pixels only within `image_cache_mb`, then read again."""
        if self._status.get(item):
            return self._status[item]
        if self._decoded is None:
            self._decoded = ByteLRU(int(self.image_cache_mb * MiB))
        image = self._decoded.get(item)
        if image is not None:
            return image
        from mmrec.data.images import ImageError, load_image

        if item not in self.split.dataset.items_by_id.index:
            self._status[item] = UNKNOWN_ITEM
            return UNKNOWN_ITEM
        path = self.split.dataset.image_path(item)
        try:
            image = MISSING_IMAGE if path is None else load_image(path)
        except ImageError as e:
            log.warning(f"item {item}: {e}")
            image = BAD_IMAGE
        if isinstance(image, str):
            self._status[item] = image
            return image
        self._status[item] = ""
        return self._decoded.put(item, image, image.width * image.height * len(image.getbands()))

    def check(self, rows: pd.DataFrame) -> np.ndarray:
        """Per row of (user_id, stage, item_id): '' when promptable, else why not (object array)."""
        reasons = np.full(len(rows), "", dtype=object)
        known = self.split.dataset.items_by_id.index
        for i, (user, stage, item) in enumerate(zip(rows["user_id"], rows["stage"], rows["item_id"])):
            if self.preference(user, stage) is None:
                reasons[i] = MISSING_PREFERENCE
            elif item not in known:
                reasons[i] = UNKNOWN_ITEM
            elif self.use_image and self._status.get(item, None) != "":
                image = self.image(item)
                reasons[i] = image if isinstance(image, str) else ""
        return reasons


def report_missing(rows: pd.DataFrame, reasons: np.ndarray, what: str) -> pd.DataFrame:
    """Log how many rows cannot be prompted and why (with examples); return those rows with a `reason` column."""
    bad = rows.loc[reasons != "", ["user_id", "stage", "item_id"]].assign(reason=reasons[reasons != ""])
    if len(bad):
        counts = bad["reason"].value_counts().to_dict()
        first = bad.iloc[0]
        log.warning(f"{what}: {len(bad)} of {len(rows)} rows cannot be prompted {counts} "
                    f"(e.g. user {first.user_id}, {first.stage}, item {first.item_id}: {first.reason})")
    return bad.reset_index(drop=True)


def _read_summaries(path: Path) -> dict[tuple[str, str], str]:
    if not path.is_file():
        raise DataError(f"{path}: user preferences not found; run `mmrec summarize-users CONFIG` first, or set "
                        "preference_source: truth (synthetic benchmark) or history")
    df = pd.read_parquet(path, columns=["user_id", "stage", "preference"])
    df = df[df["preference"].notna()]
    return {_key(u, s): str(p) for u, s, p in zip(df["user_id"], df["stage"], df["preference"])}


def _read_true(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DataError(f"{path}: no true-preference sentences; preference_source 'truth' only works on the "
                        "synthetic benchmark (`mmrec prep synthetic`)")
    df = pd.read_parquet(path, columns=["user_id", "preference"])
    return {str(u): str(p) for u, p in zip(df["user_id"], df["preference"]) if p is not None}


def _history_texts(split: Any, items_parquet: Path, n: int) -> dict[tuple[str, str], str]:
    """Rec-GPT4V's visual-summary prompt: one line per recent history item, title then image summary."""
    summaries: dict[str, str] = {}
    if items_parquet.is_file():
        df = pd.read_parquet(items_parquet, columns=["item_id", "summary"])
        summaries = {str(i): str(s) for i, s in zip(df["item_id"], df["summary"]) if s is not None}
    else:
        log.warning(f"{items_parquet} not found: the history prompt lists titles only "
                    "(run `mmrec summarize-items` for image summaries)")
    items = split.dataset.items_by_id
    out = {}
    for user, stage, history in zip(split.examples["user_id"], split.examples["stage"], split.examples["history"]):
        lines = []
        for item in list(history)[-n:]:
            title = str(items.at[item, "title"]) if item in items.index else str(item)
            summary = summaries.get(str(item))
            lines.append(f"- {title}" + (f": {summary}" if summary else ""))
        if lines:
            out[_key(user, stage)] = "the user recently interacted with these items:\n" + "\n".join(lines)
    return out
