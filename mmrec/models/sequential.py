"""What the sequential ID baselines (GRU4Rec, SASRec) share: item ids, padded batches, the all-position
training loss, and scoring a user's next item from the last position of their history.

Speed by design: a user's training sequence is one sample. The model reads it once under a causal
structure and gets a loss at every position, where RecBole builds one truncated prefix per target (about
sequence-length times more work for the same targets). `tests/test_sequential.py` checks that the summed
all-position loss equals the sum of the per-prefix losses.

Item indices: 0 is padding, items seen in training are 1..n. Items never seen in training have no embedding:
they are dropped from histories, and as candidates they score `UNSEEN_SCORE` (-inf: below every known item).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from mmrec.batching import batches
from mmrec.checkpoint_files import RUN_FILE
from mmrec.data.sequences import evaluated_examples
from mmrec.device import resolve_device
from mmrec.distill.config import DistillSection
from mmrec.errors import ConfigError, DataError, MmrecError
from mmrec.io import read_json
from mmrec.models.id_table import IdTable

if TYPE_CHECKING:
    from mmrec.experiment import ExperimentConfig

PAD = 0
UNSEEN_SCORE = float("-inf")
LOSSES = ("ce", "bce")
# `batch_size: auto`: about AUTO_STEPS_PER_EPOCH optimizer steps per epoch, within [AUTO_MIN_BATCH, AUTO_MAX_BATCH]
# sequences (docs/baselines.md, "Defaults that converge"; measured by bench/bench_convergence.py).
AUTO_STEPS_PER_EPOCH, AUTO_MIN_BATCH, AUTO_MAX_BATCH = 100, 16, 256


def auto_batch_size(n_windows: int) -> int:
    """Sequences per batch for `batch_size: auto`: enough optimizer steps per epoch on small data (a fixed 256
    gives ML-100K about 10 steps, so 50 epochs end before the model converges), RecBole-like batches on large."""
    return int(min(AUTO_MAX_BATCH, max(AUTO_MIN_BATCH, n_windows // AUTO_STEPS_PER_EPOCH)))


@dataclass
class SequentialConfig:
    """Fields every sequential baseline shares: loss, training loop, early stopping, device.
    Sizes follow RecBole's benchmark settings (hidden 64, max length 50, CE loss over the whole catalogue)."""

    kind: str = "sequential"  # each model's config narrows this to its own Literal
    hidden_size: int = 64
    dropout: float = 0.3
    max_len: int = 50
    loss: Literal["ce", "bce"] = "ce"
    bce_negatives: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 200                           # a cap: early stopping ends a run long before it (docs/baselines.md)
    batch_size: int | Literal["auto"] = "auto"  # sequences per batch; auto = auto_batch_size(training windows)
    patience: int = 10
    valid_metric: str = "ndcg@10"
    score_batch_size: int = 512
    device: Literal["auto", "cpu", "cuda"] = "auto"
    distill: DistillSection | None = None  # learn from a VLM teacher's signals too (docs/distillation.md)

    def __post_init__(self) -> None:
        for key in ("hidden_size", "max_len", "bce_negatives", "epochs", "batch_size", "patience", "score_batch_size"):
            if getattr(self, key) != "auto" and getattr(self, key) < 1:
                raise ValueError(f"'{key}' must be at least 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"'dropout' must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ValueError(f"'lr' must be positive, got {self.lr}")
        parse_metric(self.valid_metric)


def parse_metric(name: str) -> tuple[str, int]:
    """'ndcg@10' -> ('ndcg', 10): a top-K metric of `mmrec.metrics` the recipe can stop on."""
    from mmrec.metrics import TOPK_METRICS

    metric, _, k = name.lower().partition("@")
    if metric not in TOPK_METRICS or not k.isdigit() or int(k) < 1:
        raise ValueError(f"'valid_metric' must be one of {', '.join(TOPK_METRICS)} with a cutoff, "
                         f"like ndcg@10 or hr@10; got {name!r}")
    return metric, int(k)


class ItemVocab:
    """Dense indices for item ids: 0 = padding, 1..n = the items of the training sequences, in first-seen order."""

    def __init__(self, item_ids: Sequence[str]):
        self.item_ids = list(item_ids)
        self.index = {item: i + 1 for i, item in enumerate(self.item_ids)}
        if len(self.index) != len(self.item_ids):
            raise DataError("item vocabulary has duplicate ids")
        self.table = IdTable(self.item_ids)  # 0-based rows; `lookup` adds 1

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_sequences(cls, sequences: Sequence[Sequence[str]]) -> "ItemVocab":
        return cls(list(dict.fromkeys(item for seq in sequences for item in seq)))

    def encode(self, items: Sequence[str]) -> list[int]:
        """Indices of the known items, unseen ones dropped (they have no embedding to contribute)."""
        return [i for i in (self.index.get(item, PAD) for item in items) if i != PAD]

    def lookup(self, items: Sequence[str]) -> np.ndarray:
        """Index per item, PAD for unseen ones (callers give those UNSEEN_SCORE); one vectorised join."""
        return self.table.positions(items) + 1


def windows(seq: Sequence[int], max_len: int) -> list[list[int]]:
    """Cut an encoded sequence into training windows of at most max_len + 1 items (max_len targets each),
    from the end, overlapping by one item so that every target but the first item is predicted exactly once.
    A target early in a window sees fewer than max_len previous items; only users longer than max_len differ
    from the prefix-per-sample scheme, and their recent targets keep full context."""
    out = []
    end = len(seq)
    while end >= 2:
        start = max(0, end - max_len - 1)
        out.append(list(seq[start:end]))
        end = start + 1
    return out[::-1]


def pad_batch(seqs: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
    """Right-padded [B, L] LongTensor (PAD after the items), so position 0 is every sequence's first item."""
    length = length or max(len(s) for s in seqs)
    out = torch.full((len(seqs), length), PAD, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.as_tensor(s[-length:], dtype=torch.long)
    return out


class SequentialModel(nn.Module):
    """A next-item model: `forward(items [B, L]) -> hidden [B, L, D]`, where position t has read items 0..t only.
    Scores are dot products with the (tied) item embedding table `item_embedding`."""

    item_embedding: nn.Embedding

    def item_scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., n_items] scores over items 1..n (padding excluded)."""
        return hidden @ self.item_embedding.weight[1:].T

    def final_hidden(self, items: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """[B, D] hidden state after each right-padded sequence's last item (`lengths` >= 1 items read; an empty
        history reads position 0). A model may override it to skip work at the positions nobody reads."""
        return self(items)[torch.arange(items.shape[0], device=items.device), lengths - 1]


def sample_negatives(target: torch.Tensor, n_items: int, k: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """[N, k] items drawn uniformly from 1..n_items excluding each row's target (one draw, no rejection loop)."""
    draw = torch.randint(1, n_items, (target.shape[0], k), generator=generator, device=target.device)
    return draw + (draw >= target[:, None]).long()


def sequence_loss(model: SequentialModel, batch: torch.Tensor, loss: str = "ce", negatives: int = 1,
                  generator: torch.Generator | None = None, reduction: str = "mean") -> torch.Tensor:
    """Next-item loss at every position of right-padded sequences `batch` [B, L]: position t predicts item t+1.
    'ce': softmax over the whole catalogue; 'bce': the target against `negatives` uniform items (never the target)."""
    inputs, targets = batch[:, :-1], batch[:, 1:]
    valid = targets != PAD
    hidden = model(inputs)[valid]                      # [N, D] one row per (sequence, position) with a target
    target = targets[valid]                            # [N] in 1..n
    if loss == "ce":
        losses = F.cross_entropy(model.item_scores(hidden), target - 1, reduction="none")
    elif loss == "bce":
        n_items = model.item_embedding.num_embeddings - 1
        if n_items < 2:
            raise DataError("BCE with sampled negatives needs at least two items in the training data")
        neg = sample_negatives(target, n_items, negatives, generator)
        pos_logit = (hidden * model.item_embedding(target)).sum(-1)
        neg_logit = (hidden[:, None, :] * model.item_embedding(neg)).sum(-1)
        losses = F.softplus(-pos_logit) + F.softplus(neg_logit).sum(-1)
    else:
        raise ConfigError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if reduction == "sum":
        return losses.sum()
    if reduction == "none":
        return losses
    return losses.mean()


def last_hidden(model: SequentialModel, batch: torch.Tensor) -> torch.Tensor:
    """[B, D] hidden state after each right-padded sequence's last item (an empty history reads position 0)."""
    return model.final_hidden(batch, (batch != PAD).sum(1).clamp(min=1))


class SequentialScorer:
    """Scores candidates (and the whole catalogue) with a trained sequential model.
    A user's context is their history in the split (`examples`) for the candidate row's stage.

    Speed: the evaluated histories are encoded once, here, into a right-padded index matrix; `score` then
    looks rows and items up with vectorised index joins and runs one forward per `batch_size` users, cut to the
    longest history among them (position t reads positions 0..t only, so the padding after it changes nothing)."""

    def __init__(self, model: SequentialModel, vocab: ItemVocab, examples: pd.DataFrame, max_len: int,
                 device: torch.device, batch_size: int = 512):
        self.model = model.to(device).eval()
        self.vocab = vocab
        self.item_ids = list(vocab.item_ids)
        self.max_len = max_len
        self.device = device
        self.batch_size = batch_size
        evaluated = evaluated_examples(examples)
        self.keys = IdTable(evaluated["user_id"], evaluated["stage"])
        self.history_items, self.history_lengths = encode_histories(vocab, evaluated["history"], max_len)

    @torch.no_grad()
    def _states(self, items: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
        """[len(items), hidden] model state after each encoded history (`encode_histories` rows), on device."""
        out = []
        for sl in batches(len(items), self.batch_size):
            width = max(1, int(lengths[sl].max()))
            batch = torch.from_numpy(np.ascontiguousarray(items[sl, :width])).to(self.device)
            read = torch.from_numpy(np.maximum(lengths[sl], 1)).to(self.device)
            out.append(self.model.final_hidden(batch, read))
        return torch.cat(out) if out else torch.empty(0, self.model.item_embedding.embedding_dim, device=self.device)

    def user_states(self, histories: Sequence[Sequence[str]]) -> torch.Tensor:
        """[len(histories), hidden] model state after each history (its last max_len known items), on device."""
        return self._states(*encode_histories(self.vocab, histories, self.max_len))

    @torch.no_grad()
    def score_catalogue(self, examples: pd.DataFrame) -> np.ndarray:
        """[len(examples), len(item_ids)] raw scores; history items are not masked (the evaluation decides).
        The caller bounds memory by passing examples in batches."""
        return self.model.item_scores(self.user_states(list(examples["history"]))).double().cpu().numpy()

    @torch.no_grad()
    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        """One dot product per candidate row (never a catalogue-wide matrix), UNSEEN_SCORE for unseen items."""
        pos = self.keys.positions(candidates["user_id"], candidates["stage"])
        if (pos < 0).any():
            missing = candidates.loc[pos < 0, ["user_id", "stage"]].drop_duplicates()
            raise DataError(f"{len(missing)} candidate (user_id, stage) pair(s) have no example in the split, "
                            f"e.g. {tuple(missing.iloc[0])}; score candidates of the split the model was trained on")
        users, rows = np.unique(pos, return_inverse=True)
        states = self._states(self.history_items[users], self.history_lengths[users])
        items = self.vocab.lookup(candidates["item_id"])
        out = np.full(len(pos), UNSEEN_SCORE, dtype=np.float64)
        chunk = max(1, self.batch_size * 64)
        for sl in batches(len(pos), chunk):
            r = torch.from_numpy(rows[sl].astype(np.int64)).to(self.device)
            i = torch.from_numpy(items[sl]).to(self.device)
            values = (states[r] * self.model.item_embedding(i)).sum(-1).double().cpu().numpy()
            out[sl] = np.where(items[sl] == PAD, UNSEEN_SCORE, values)
        return out


def encode_histories(vocab: ItemVocab, histories: Sequence[Sequence[str]], max_len: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """([n, max_len] right-padded indices of each history's last max_len known items, [n] their counts): what
    `vocab.encode(h)[-max_len:]` padded by `pad_batch(..., max_len)` gives, without a Python loop over items."""
    histories = list(histories)
    sizes = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    flat = vocab.lookup(np.concatenate([np.asarray(h, dtype=object) for h in histories])
                        if sizes.sum() else np.empty(0, dtype=object))
    row = np.repeat(np.arange(len(histories)), sizes)
    known = flat != PAD
    flat, row = flat[known], row[known]
    counts = np.bincount(row, minlength=len(histories))
    first = np.cumsum(counts) - counts                         # where each history starts in `flat`
    col = np.arange(len(flat)) - first[row] - np.maximum(counts - max_len, 0)[row]
    keep = col >= 0                                            # drop all but the last max_len known items
    out = np.full((len(histories), max_len), PAD, dtype=np.int64)
    out[row[keep], col[keep]] = flat[keep]
    return out, np.minimum(counts, max_len)


# Files of a sequential run's checkpoint directory (written by finetune/sequential.py).
WEIGHTS_FILE = "model.safetensors"   # the best weights (by the validation metric)
ITEMS_FILE = "items.parquet"         # item_id of indices 1..n


def load_sequential_scorer(cfg: "ExperimentConfig", name: str, ckpt_dir: Path,
                           build: Callable[[Any, int], SequentialModel]) -> SequentialScorer:
    """The scorer of a finished run in `ckpt_dir`; `build(model_cfg, n_items)` makes the untrained module."""
    from safetensors.torch import load_file

    from mmrec.data.splits import load_split

    mcfg = cfg.model(name)
    run_file = ckpt_dir / RUN_FILE
    if not run_file.is_file() or not read_json(run_file).get("finished"):
        raise MmrecError(f"{ckpt_dir}: no finished training run of model '{name}'; "
                         f"run `mmrec finetune {cfg.source} --model {name}` first")
    vocab = ItemVocab(pd.read_parquet(ckpt_dir / ITEMS_FILE)["item_id"].tolist())
    model = build(mcfg, len(vocab))
    weights = load_file(ckpt_dir / WEIGHTS_FILE)
    if "item_embedding.teacher" in weights:  # a student trained with embedding distillation
        from mmrec.distill.embedding import attach

        attach(model, weights["item_embedding.teacher"], mcfg.distill.embedding_weight)
    model.load_state_dict(weights)
    split = load_split(cfg.split_dir)
    return SequentialScorer(model, vocab, split.examples, mcfg.max_len, resolve_device(mcfg.device),
                            mcfg.score_batch_size)
