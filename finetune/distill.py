"""The distillation term of a sequential student's training (`distill:` section of a sasrec / gru4rec model).

The teacher-signals table is joined to the student's training windows by ids, never by row order: each signal row
names its user, its position in the user's training sequence and that position's next item, and the join checks
the training sequence still has that item there. The sidecar's teacher hash must match the teacher checkpoint
the config names now, so signals of a retrained teacher are never used silently.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from mmrec.distill.config import DistillSection
from mmrec.distill.loss import consistency, item_weights, ranking_loss, student_top_k
from mmrec.distill.signals import (
    distill_section,
    sidecar,
    signals_path,
    teacher_hash,
    teacher_run,
)
from mmrec.errors import DataError, MmrecError
from mmrec.experiment import ExperimentConfig
from mmrec.io import read_json, sha256_file
from mmrec.models.sequential import (
    PAD,
    ItemVocab,
    SequentialModel,
    sample_negatives,
    windows,
)


def window_starts(n: int, max_len: int) -> list[int]:
    """Start offsets of `windows(seq, max_len)` for a sequence of length n (checked against it by the caller)."""
    starts, end = [], n
    while end >= 2:
        start = max(0, end - max_len - 1)
        starts.append(start)
        end = start + 1
    return starts[::-1]


@dataclass
class TeacherLists:
    """Per distilled example: the teacher's top-K items (vocab indices, PAD-filled), their ranks and P(Yes)."""

    items: torch.Tensor       # [E, K] long
    ranks: torch.Tensor       # [E, K] float
    confidence: torch.Tensor  # [E, K] float
    mask: torch.Tensor        # [E, K] bool


def load_signals(cfg: ExperimentConfig, name: str, candidates_sha256: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The signals table of student `name` and its sidecar, after the teacher-hash and split checks."""
    dcfg = distill_section(cfg, name)
    run = teacher_run(cfg, dcfg)
    path = signals_path(cfg, dcfg, run, candidates_sha256)
    if not path.is_file() or not sidecar(path).is_file():
        raise MmrecError(f"{path}: no teacher signals for model '{name}'; run `mmrec distill-signals {cfg.source} "
                         f"--model {name}` (or `mmrec run`) first")
    meta = read_json(sidecar(path))
    if meta.get("teacher_hash") != teacher_hash(cfg, dcfg, run):
        raise DataError(f"{path}: written by another checkpoint of teacher '{run}' than the one in "
                        f"{cfg.dir}/checkpoints/{run} now (teacher hash differs); re-run `mmrec distill-signals`")
    if meta.get("candidates_sha256") != candidates_sha256:
        raise DataError(f"{path}: made on another split than {cfg.split_dir}; re-run `mmrec distill-signals`")
    if meta.get("table_sha256") != sha256_file(path):
        raise DataError(f"{path}: modified since it was written (sha256 differs from {sidecar(path).name}); "
                        "delete it and re-run `mmrec distill-signals`")
    return pd.read_parquet(path), meta


def signals_fingerprint(cfg: ExperimentConfig, name: str, candidates_sha256: str) -> str:
    """The hash of the signals table student `name` trains on (what makes a new run when the signals change)."""
    _, meta = load_signals(cfg, name, candidates_sha256)
    return str(meta["table_sha256"])


def teacher_lists(table: pd.DataFrame, vocab: ItemVocab, sequences: pd.Series, top_k: int,
                  where: str) -> tuple[pd.DataFrame, TeacherLists]:
    """Join the signal rows to the training sequences by (user_id, position, target_id) and keep each example's
    top-K; returns the examples (user_id, position) in table order and their lists."""
    top = table[table["rank"] <= top_k]
    examples = top[["user_id", "position", "target_id"]].drop_duplicates(["user_id", "position"])
    seqs = {str(u): s for u, s in sequences.items()}
    for user, pos, target in zip(examples["user_id"], examples["position"], examples["target_id"]):
        seq = seqs.get(str(user))
        if seq is None:
            raise DataError(f"{where}: user {user!r} has no training sequence in this split; the signals belong to "
                            "another split: re-run `mmrec distill-signals`")
        if not 1 <= pos < len(seq) or str(seq[pos]) != str(target):
            found = seq[pos] if 0 <= pos < len(seq) else "nothing"
            raise DataError(f"{where}: user {user!r} position {pos}: the signals were made for next item {target!r} "
                            f"but the training sequence has {found!r}; re-run `mmrec distill-signals`")
    idx = vocab.lookup(top["item_id"].astype(str).tolist())
    if (idx == PAD).any():
        bad = top["item_id"].iloc[int(np.flatnonzero(idx == PAD)[0])]
        raise DataError(f"{where}: item {bad!r} is not a training item; signals only hold training items")
    row = pd.factorize(pd.MultiIndex.from_arrays([top["user_id"], top["position"]]))[0]
    col = top["rank"].to_numpy() - 1
    E, K = len(examples), top_k
    items = torch.zeros(E, K, dtype=torch.long)
    ranks = torch.zeros(E, K)
    conf = torch.zeros(E, K)
    mask = torch.zeros(E, K, dtype=torch.bool)
    items[row, col] = torch.as_tensor(idx)
    ranks[row, col] = torch.tensor(top["rank"].to_numpy(), dtype=torch.float32)
    conf[row, col] = torch.tensor(top["score"].to_numpy(), dtype=torch.float32)
    mask[row, col] = True
    return examples.reset_index(drop=True), TeacherLists(items, ranks, conf, mask)


class Distiller:
    """The ranking-distillation term for batches of training windows (indices into the recipe's `samples`)."""

    def __init__(self, dcfg: DistillSection, lists: TeacherLists, at: dict[int, tuple[torch.Tensor, torch.Tensor]]):
        self.cfg = dcfg
        self.lists = lists
        self._on: dict[str, TeacherLists] = {}  # the lists moved to each device once
        self.at = at  # window index -> (columns in the window, example indices)

    @classmethod
    def build(cls, cfg: ExperimentConfig, name: str, vocab: ItemVocab, sequences: pd.Series,
              samples: list[list[int]], max_len: int, candidates_sha256: str) -> Distiller:
        dcfg = distill_section(cfg, name)
        table, meta = load_signals(cfg, name, candidates_sha256)
        examples, lists = teacher_lists(table, vocab, sequences, dcfg.top_k, meta.get("teacher_run", "signals"))
        example_of = {(str(u), int(p)): e for e, (u, p) in enumerate(zip(examples["user_id"], examples["position"]))}
        at: dict[int, tuple[list[int], list[int]]] = {}
        w = 0
        for user, seq in sequences.items():
            encoded = vocab.encode(seq)
            for start, window in zip(window_starts(len(encoded), max_len), windows(encoded, max_len)):
                if w >= len(samples) or samples[w] != window:
                    raise MmrecError("distillation: the training windows are not the ones finetune/sequential.py "
                                     "built; the window layout changed without finetune/distill.py")
                for j in range(len(window) - 1):  # input j predicts sequence position start + j + 1
                    e = example_of.get((str(user), start + j + 1))
                    if e is not None:
                        cols, exs = at.setdefault(w, ([], []))
                        cols.append(j)
                        exs.append(e)
                w += 1
        return cls(dcfg, lists, {k: (torch.tensor(c), torch.tensor(e)) for k, (c, e) in at.items()})

    def loss(self, model: SequentialModel, batch: torch.Tensor, window_idx: np.ndarray) -> torch.Tensor:
        """`weight` x the ranking-distillation loss over the batch's distilled positions (0 when it has none)."""
        rows, cols, exs = [], [], []
        for r, w in enumerate(window_idx.tolist()):
            if w in self.at:
                c, e = self.at[w]
                rows.append(torch.full_like(c, r))
                cols.append(c)
                exs.append(e)
        if not rows:
            return batch.new_zeros((), dtype=torch.float32)
        device = batch.device
        r, c, e = (torch.cat(x).to(device) for x in (rows, cols, exs))
        hidden = model(batch[:, :-1])[r, c]
        key = str(device)
        if key not in self._on:
            li = self.lists
            self._on[key] = TeacherLists(li.items.to(device), li.ranks.to(device), li.confidence.to(device),
                                         li.mask.to(device))
        on = self._on[key]
        items, ranks, conf, mask = on.items[e], on.ranks[e], on.confidence[e], on.mask[e]
        if self.cfg.consistency:
            with torch.no_grad():
                consistent = consistency(items, student_top_k(model.item_scores(hidden), self.cfg.top_k))
        else:
            consistent = torch.zeros_like(mask)
        weights = item_weights(ranks, conf, consistent, mask, self.cfg)
        n_items = model.item_embedding.num_embeddings - 1
        negatives = sample_negatives(items.reshape(-1), n_items, 1).reshape(items.shape)
        return self.cfg.weight * ranking_loss(hidden, model.item_embedding, items, negatives, weights)


class CTRDistiller:
    """The ranking-distillation term for the CTR head (`kind: ctr` with a `distill:` section), which scores
    (user, candidate, history) rows pointwise. Each training step draws `per_step` distilled examples and scores
    their teacher top-K items and one sampled negative per item. Consistency here is "in the student's top-K of
    the example's teacher items and their negatives" (ranking the whole catalogue per example would cost a
    catalogue-wide CTR pass per step)."""

    def __init__(self, dcfg: DistillSection, user: torch.Tensor, hist: torch.Tensor, lists: TeacherLists,
                 n_rows: int, per_step: int):
        self.cfg, self.user, self.hist, self.lists = dcfg, user, hist, lists
        self.n_rows, self.per_step = n_rows, per_step

    @classmethod
    def build(cls, cfg: ExperimentConfig, name: str, sequences: pd.Series, users: pd.Index, catalogue: Any,
              history_len: int, batch_size: int, candidates_sha256: str) -> CTRDistiller:
        dcfg = distill_section(cfg, name)
        if dcfg.embedding != "none":
            from mmrec.errors import ConfigError

            raise ConfigError(f"{cfg.source}: models.{name}.distill.embedding: the CTR head has no item embedding "
                              "table to distil into; use embedding: none (sasrec and gru4rec support it)")
        table, meta = load_signals(cfg, name, candidates_sha256)
        vocab = ItemVocab(catalogue.item_ids)  # index i + 1 = catalogue row i + 1
        examples, lists = teacher_lists(table, vocab, sequences, dcfg.top_k, meta.get("teacher_run", "signals"))
        seqs = {str(u): s for u, s in sequences.items()}
        user = torch.as_tensor(users.get_indexer(examples["user_id"].astype(str)) + 1, dtype=torch.long)
        prefixes = [seqs[str(u)][:p] for u, p in zip(examples["user_id"], examples["position"])]
        hist = torch.as_tensor(catalogue.history_rows(prefixes, history_len), dtype=torch.long)
        per_step = max(1, batch_size // (2 * dcfg.top_k))
        return cls(dcfg, user, hist, lists, len(catalogue), per_step)

    def loss(self, model: torch.nn.Module, device: torch.device) -> torch.Tensor:
        """`weight` x the weighted BCE of `per_step` random distilled examples' teacher items vs negatives."""
        e = torch.randint(0, len(self.user), (self.per_step,))
        items, ranks = self.lists.items[e].to(device), self.lists.ranks[e].to(device)
        conf, mask = self.lists.confidence[e].to(device), self.lists.mask[e].to(device)
        k = items.shape[1]
        user = self.user[e].to(device).repeat_interleave(k)
        hist = self.hist[e].to(device).repeat_interleave(k, dim=0)
        negatives = torch.randint(1, self.n_rows + 1, items.shape, device=device)
        pos = model(user, items.reshape(-1), hist).view(-1, k)
        neg = model(user, negatives.reshape(-1), hist).view(-1, k)
        with torch.no_grad():
            pool = torch.cat([pos.masked_fill(~mask, float("-inf")), neg], dim=1)
            kth = pool.topk(min(self.cfg.top_k, pool.shape[1]), dim=1).values[:, -1:]
            consistent = (pos >= kth) & mask
        weights = item_weights(ranks, conf, consistent, mask, self.cfg)
        per_item = torch.nn.functional.softplus(-pos) + torch.nn.functional.softplus(neg)
        return self.cfg.weight * (weights * per_item).sum(-1).mean()


def attach_teacher_embeddings(cfg: ExperimentConfig, name: str, model: SequentialModel, vocab: ItemVocab,
                              candidates_sha256: str) -> None:
    """Embedding distillation: the student's item table gets the teacher's item vectors through a projection."""
    from mmrec.distill.embedding import attach, read_item_embeddings

    dcfg = distill_section(cfg, name)
    path = signals_path(cfg, dcfg, teacher_run(cfg, dcfg), candidates_sha256)
    device = next(model.parameters()).device
    attach(model, read_item_embeddings(path, vocab.item_ids).to(device), dcfg.embedding_weight)
