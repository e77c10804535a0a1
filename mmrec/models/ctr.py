"""MMREC's CTR model (docs/mmrec_ctr.md): config, checkpoint layout and the scorer.

A DLRM-style network (`ctr_net.DLRM`) over user/item id embeddings and dense item features chosen by
`variant` (`ctr_features`), trained with binary cross-entropy by `finetune/ctr.py`. The scorer reads the
best weights and the per-item content vectors saved with them, so scoring needs no encoder at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch

from mmrec.batching import batches
from mmrec.checkpoint_files import RUN_FILE
from mmrec.data.sequences import evaluated_examples
from mmrec.device import resolve_device
from mmrec.distill.config import DistillSection
from mmrec.encoders.image import ImageEncoderConfig
from mmrec.encoders.text import TextEncoderConfig
from mmrec.errors import DataError, MmrecError
from mmrec.io import read_json
from mmrec.models.ctr_features import Catalogue, check_template
from mmrec.models.ctr_net import DLRM
from mmrec.models.id_table import IdTable

if TYPE_CHECKING:
    from mmrec.experiment import ExperimentConfig

Variant = Literal["id_only", "text", "text_image", "mmrec"]

# Files of a CTR checkpoint directory (written by finetune/ctr.py).
WEIGHTS_FILE = "model.safetensors"          # best weights (by validation AUC) + CONTENT_KEY
CONTENT_KEY = "content_table"               # in WEIGHTS_FILE: bottom-MLP content vector per catalogue row
ITEMS_FILE = "items.parquet"                # catalogue: item_id of rows 1..n
USERS_FILE = "users.parquet"                # user_id of user-embedding rows 1..n


@dataclass
class CTRConfig:
    """One CTR model of an experiment. Sizes are reconstructions (the paper leaves them open; see the docs)."""

    kind: Literal["ctr"] = "ctr"
    variant: Variant = "mmrec"
    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image_encoder: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text_fields: list[str] = field(default_factory=lambda: ["title", "text"])  # items.parquet columns = "item text"
    summary_source: str = "summaries"       # mmrec variant: summaries/items.parquet, or an items column (e.g. text)
    fusion_template: str = "{item_text}. Image: {summary}"
    embed_dim: int = 32                     # id embeddings, content vectors and the interaction width
    bottom_mlp: list[int] = field(default_factory=lambda: [256])   # hidden widths; the output is embed_dim
    top_mlp: list[int] = field(default_factory=lambda: [256, 64])  # hidden widths; the output is one logit
    history_len: int = 10                   # last N history items summarise the user
    history_pooling: Literal["mean", "attention"] = "mean"
    dropout: float = 0.1
    id_dropout: float = 0.1                 # training: ids replaced by "unknown", so unseen users/items score well
    pos_weight: float | None = None         # BCE weight of positives (imbalanced data); null = 1
    negatives: int = 4                      # training negatives per positive
    negative_source: Literal["sampled", "split"] = "sampled"  # fresh uniform draws per epoch | split's persisted
    train_positions: Literal["all", "last"] = "all"  # every position of a training sequence, or its last only
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 20
    batch_size: int = 512
    patience: int = 3                       # epochs without a better validation score before stopping
    # early stopping's metric on the experiment's protocol: auto = auc (sampled) / ndcg@<largest K> (full)
    valid_metric: str = "auto"
    score_batch_size: int = 65536           # candidates per forward pass when scoring
    device: Literal["auto", "cpu", "cuda"] = "auto"
    distill: DistillSection | None = None  # learn from a VLM teacher's signals too (docs/distillation.md)

    def __post_init__(self) -> None:
        for key in ("embed_dim", "history_len", "negatives", "epochs", "batch_size", "patience", "score_batch_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"'{key}' must be at least 1, got {getattr(self, key)}")
        for key in ("dropout", "id_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"'{key}' must be in [0, 1), got {getattr(self, key)}")
        if any(w < 1 for w in self.bottom_mlp + self.top_mlp):
            raise ValueError("layer widths in 'bottom_mlp' and 'top_mlp' must be positive")
        if self.pos_weight is not None and self.pos_weight <= 0:
            raise ValueError(f"'pos_weight' must be positive or null, got {self.pos_weight}")
        if self.lr <= 0:
            raise ValueError(f"'lr' must be positive, got {self.lr}")
        if not self.text_fields:
            raise ValueError("'text_fields' must name at least one items.parquet column")
        check_template(self.fusion_template)
        if self.valid_metric != "auto":
            from mmrec.selection import parse_selection_metric

            parse_selection_metric(self.valid_metric)


def build_model(mcfg: CTRConfig, n_users: int, n_items: int, id_of_row: torch.Tensor, dense_dim: int) -> DLRM:
    return DLRM(n_users, n_items, id_of_row, dense_dim, mcfg.embed_dim, mcfg.bottom_mlp, mcfg.top_mlp,
                mcfg.history_pooling, mcfg.dropout, mcfg.id_dropout)


class CTRScorer:
    """Scores candidates, or the whole catalogue, with a trained CTR network. A user's context is their
    history in the split's examples for the candidate row's stage (valid or test): those histories' catalogue rows
    and user rows are looked up once, here, so `score` only joins candidate rows to them (`IdTable`)."""

    def __init__(self, model: DLRM, catalogue: Catalogue, users: list[str], examples: pd.DataFrame,
                 history_len: int, device: torch.device, batch_size: int = 65536) -> None:
        self.model = model.to(device).eval()
        self.catalogue = catalogue
        self.item_ids = list(catalogue.item_ids)
        self.user_index = pd.Index(users)
        self.history_len = history_len
        self.device = device
        self.batch_size = batch_size
        evaluated = evaluated_examples(examples)
        self.keys = IdTable(evaluated["user_id"], evaluated["stage"])
        self.history_matrix = catalogue.history_rows(list(evaluated["history"]), history_len)
        self.user_rows = self._users(evaluated["user_id"])

    def _users(self, user_ids: Any) -> np.ndarray:
        """Embedding row per user (0 = a user not seen in training)."""
        return self.user_index.get_indexer(pd.Index(user_ids)).astype(np.int64) + 1

    @torch.no_grad()
    def _forward(self, users: np.ndarray, hists: np.ndarray, cands: np.ndarray, group: np.ndarray) -> np.ndarray:
        """Logits of candidates `cands` of examples `group` (index into `users`/`hists`), in batches of whole
        examples so each history is summarised once."""
        out = np.empty(len(cands), dtype=np.float64)
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(len(users) + 1))
        per_batch = max(1, self.batch_size // max(1, int(np.diff(bounds).max(initial=1))))
        dev = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        for sl in batches(len(users), per_batch):
            rows = order[bounds[sl.start]:bounds[sl.stop]]
            logits = self.model(dev(users[sl]), dev(cands[rows]), dev(hists[sl]), dev(group[rows] - sl.start))
            out[rows] = logits.double().cpu().numpy()
        return out

    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        """Logit per (user_id, stage, item_id) row; higher = more likely."""
        pos = self.keys.positions(candidates["user_id"], candidates["stage"])
        if (pos < 0).any():
            bad = tuple(candidates.loc[pos < 0, ["user_id", "stage"]].iloc[0])
            raise DataError(f"{int((pos < 0).sum())} candidate rows have no (user_id, stage) example in the split, "
                            f"e.g. {bad}; score candidates of the split the model was trained on")
        uniq, group = np.unique(pos, return_inverse=True)
        cands = self.catalogue.rows(candidates["item_id"], what="candidate items")
        return self._forward(self.user_rows[uniq], self.history_matrix[uniq], cands, group.astype(np.int64))

    def score_catalogue(self, examples: pd.DataFrame) -> np.ndarray:
        """[len(examples), len(item_ids)] logits; history items are not masked (the evaluation decides)."""
        n = len(self.item_ids)
        hists = self.catalogue.history_rows(list(examples["history"]), self.history_len)
        users = self._users(examples["user_id"])
        out = np.empty((len(examples), n), dtype=np.float64)
        per_chunk = max(1, self.batch_size // max(n, 1))  # bounded memory on large catalogues
        for sl in batches(len(examples), per_chunk):
            k = sl.stop - sl.start
            cands = np.tile(np.arange(1, n + 1, dtype=np.int64), k)
            group = np.repeat(np.arange(k, dtype=np.int64), n)
            out[sl] = self._forward(users[sl], hists[sl], cands, group).reshape(k, n)
        return out


def load_scorer(cfg: "ExperimentConfig", name: str, ckpt_dir: Path) -> CTRScorer:
    """The scorer of the finished CTR run in `ckpt_dir`."""
    from safetensors.torch import load_file

    from mmrec.data.splits import load_split

    ckpt_dir = Path(ckpt_dir)
    mcfg: CTRConfig = cfg.model(name)
    run_file = ckpt_dir / RUN_FILE
    if not run_file.is_file() or not read_json(run_file).get("finished"):
        raise MmrecError(f"{ckpt_dir}: no finished training run of model '{name}'; "
                         f"run `mmrec finetune {cfg.source} --model {name}` first")
    run = read_json(run_file)
    catalogue = Catalogue(pd.read_parquet(ckpt_dir / ITEMS_FILE)["item_id"].tolist())
    users = pd.read_parquet(ckpt_dir / USERS_FILE)["user_id"].tolist()
    weights = load_file(str(ckpt_dir / WEIGHTS_FILE))
    content = weights.pop(CONTENT_KEY, None)
    model = build_model(mcfg, len(users), run["n_id_items"], weights["id_of_row"], run["dense_dim"])
    model.load_state_dict(weights)
    model.content_table = content
    split = load_split(cfg.split_dir)
    device = resolve_device(mcfg.device)
    if model.content_table is not None:
        model.content_table = model.content_table.to(device)
    return CTRScorer(model, catalogue, users, split.examples, mcfg.history_len, device, mcfg.score_batch_size)
