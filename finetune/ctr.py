"""Train MMREC's CTR model: `mmrec finetune CONFIG --model NAME` (a model of `kind: ctr`).

Top to bottom: load the split; embed every catalogue item once for the variant (cached on disk); cut each
user's training sequence into (history, next item) positives; then per epoch: sample negatives and shuffle
(both seeded by epoch), one pass of binary cross-entropy, the validation metric on the experiment's protocol
(`mmrec.selection`: AUC on the persisted validation candidates by default, NDCG@K over the experiment's
catalogue under `eval.protocol: full`; by `mmrec.metrics` under the experiment's tie policy), best weights kept
(safetensors) with their per-item content vectors, a checkpoint (model, optimizer, RNG, loop state) written
atomically, early stopping after `patience` epochs without a better validation score. An interrupted run
resumes from its last checkpoint and ends with the same weights as an uninterrupted one.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from finetune.checkpoint import EpochMeter, EpochStats, TrainState, start_epoch_run
from mmrec.batching import batches
from mmrec.checkpoint_files import RUN_FILE
from mmrec.config import to_dict
from mmrec.data.sequences import training_sequences
from mmrec.device import resolve_device
from mmrec.errors import DataError
from mmrec.experiment import ExperimentConfig
from mmrec.io import atomic_path, write_json, write_parquet
from mmrec.models.ctr import (
    CONTENT_KEY,
    ITEMS_FILE,
    USERS_FILE,
    WEIGHTS_FILE,
    CTRConfig,
    CTRScorer,
    build_model,
)
from mmrec.models.ctr_features import Catalogue, build_features
from mmrec.progress import get_logger
from mmrec.seeding import derive_seed, rng, seed_everything
from mmrec.selection import Selection


def positives(sequences: pd.Series, users: pd.Index, catalogue: Catalogue, history_len: int,
              positions: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user row, target row, history rows [P, N]) for every position t >= 1 of each training sequence
    ("all") or its last position only ("last"); a history is the (at most) `history_len` items before t."""
    lengths = sequences.map(len).to_numpy()
    flat = catalogue.rows([item for seq in sequences for item in seq], what="training items")
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)          # where each item's sequence begins
    user = np.repeat(users.get_indexer(sequences.index) + 1, lengths)
    t = np.arange(len(flat)) - starts                                 # position inside its sequence
    keep = (t >= 1) & ((t == np.repeat(lengths - 1, lengths)) | (positions == "all"))
    j = np.flatnonzero(keep)
    idx = j[:, None] - history_len + np.arange(history_len)[None, :]
    hist = np.where(idx >= starts[j][:, None], flat[np.maximum(idx, 0)], 0)
    return user[j], flat[j], hist


def seen_keys(sequences: pd.Series, users: pd.Index, catalogue: Catalogue) -> np.ndarray:
    """Sorted keys user row * (n + 1) + item row of every training interaction (negatives avoid them)."""
    lengths = sequences.map(len).to_numpy()
    flat = catalogue.rows([item for seq in sequences for item in seq], what="training items")
    user = np.repeat(users.get_indexer(sequences.index) + 1, lengths)
    return np.unique(user * (len(catalogue) + 1) + flat)


def sample_negatives(g: np.random.Generator, user: np.ndarray, k: int, n_rows: int,
                     seen: np.ndarray) -> np.ndarray:
    """[len(user), k] catalogue rows drawn uniformly among items the user never had in training.
    `seen` holds sorted keys user * (n_rows + 1) + row of the training interactions."""
    out = g.integers(1, n_rows + 1, size=(len(user), k))
    for _ in range(100):
        clash = np.isin(user[:, None] * (n_rows + 1) + out, seen)
        if not clash.any():
            return out
        out[clash] = g.integers(1, n_rows + 1, size=int(clash.sum()))
    raise DataError("could not sample training negatives: some user has interacted with almost every item")


def split_negatives(split: Any, sequences: pd.Series, users: pd.Index, catalogue: Catalogue, mcfg: CTRConfig,
                    name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The split's persisted train negatives as (user, candidate, history) samples, each paired with the
    history of its user's last training position (the paper's 1 positive : n negatives per user)."""
    negs = split.train_negatives
    if negs.empty:
        raise DataError(f"{split.root}: the split has no train_negatives; set split.train_negatives >= 1 or "
                        f"models.{name}.negative_source: sampled")
    user = users.get_indexer(negs["user_id"]) + 1
    if (user == 0).any():
        raise DataError(f"{split.root}: train_negatives name users without a train example, e.g. "
                        f"{negs['user_id'][user == 0].iloc[0]!r}")
    last_user, _, last_hist = positives(sequences, users, catalogue, mcfg.history_len, "last")
    hist_of_user = np.zeros((len(users) + 1, mcfg.history_len), dtype=np.int64)
    hist_of_user[last_user] = last_hist
    return user, catalogue.rows(list(negs["item_id"]), "train negatives"), hist_of_user[user]


def epoch_samples(mcfg: CTRConfig, pos: tuple[np.ndarray, ...], split_negs: tuple[np.ndarray, ...] | None,
                  g: np.random.Generator, n_rows: int, seen: np.ndarray) -> tuple[np.ndarray, ...]:
    """This epoch's (user, candidate, history, label) arrays: the positives plus their negatives."""
    user, target, hist = pos
    if split_negs is not None:
        n_user, n_cand, n_hist = split_negs
    else:
        n_cand = sample_negatives(g, user, mcfg.negatives, n_rows, seen).ravel()
        n_user, n_hist = np.repeat(user, mcfg.negatives), np.repeat(hist, mcfg.negatives, axis=0)
    labels = np.concatenate([np.ones(len(user)), np.zeros(len(n_user))]).astype(np.float32)
    return (np.concatenate([user, n_user]), np.concatenate([target, n_cand]), np.concatenate([hist, n_hist]), labels)


def run_epoch(model: torch.nn.Module, optimizer: torch.optim.Optimizer, samples: tuple[np.ndarray, ...],
              order: np.ndarray, mcfg: CTRConfig, device: torch.device, desc: str, distiller: Any = None) -> EpochStats:
    """One pass of BCE over the samples in `order`; an example is one (user, candidate) sample. The loss adds the
    distillation term of `distiller` (a `finetune.distill.CTRDistiller`) when the model has a `distill:` section."""
    model.train()
    pos_weight = torch.tensor(mcfg.pos_weight, device=device) if mcfg.pos_weight else None
    tensors = [torch.from_numpy(a) for a in samples]
    meter = EpochMeter(math.ceil(len(order) / mcfg.batch_size), desc)
    for sl in batches(len(order), mcfg.batch_size):
        idx = torch.from_numpy(order[sl])
        user, cand, hist, label = (t[idx].to(device) for t in tensors)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(user, cand, hist), label,
                                                                     pos_weight=pos_weight)
        if distiller is not None:
            loss = loss + distiller.loss(model, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        meter.step(loss.item(), len(idx))
    return meter.close()


def _save_best(out_dir: Path, model: torch.nn.Module, features: torch.Tensor | None) -> None:
    """Best weights plus their per-item content vectors, in one file so they never disagree."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if features is not None:
        model.eval()
        tensors[CONTENT_KEY] = model.build_content_table(features).cpu().contiguous()
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp))


def train(cfg: ExperimentConfig, name: str, out_dir: Path, resume: bool = True) -> Path:
    log = get_logger("finetune.ctr")
    mcfg: CTRConfig = cfg.model(name)
    paths = cfg.paths
    out_dir = Path(out_dir)
    run = start_epoch_run(cfg, name, out_dir, resume, with_dataset=True)
    split, selection, fingerprint, previous = run.split, run.selection, run.fingerprint, run.previous
    run_file = out_dir / RUN_FILE
    if previous.finished:
        log.info(f"{name}: already trained (best valid {selection.metric} {previous.record['best']}), kept")
        return out_dir

    # Data: catalogue rows, dense features of the variant (cached), training positives, validation candidates.
    seed_everything(cfg.seed)
    device = resolve_device(mcfg.device)
    catalogue = Catalogue(split.dataset.items["item_id"].tolist())
    feats, feat_info = build_features(mcfg, split.dataset, paths.item_summaries, paths.cache / "embeddings",
                                      where=f"{cfg.source}: models.{name}", config=cfg.source, device=mcfg.device)
    sequences = training_sequences(split.examples)
    users = pd.Index(sorted(sequences.index))
    pos = positives(sequences, users, catalogue, mcfg.history_len, mcfg.train_positions)
    seen = seen_keys(sequences, users, catalogue)
    split_negs = (split_negatives(split, sequences, users, catalogue, mcfg, name)
                  if mcfg.negative_source == "split" else None)
    validated = selection.available(split)
    distiller = None
    if mcfg.distill is not None:
        from finetune.distill import CTRDistiller

        distiller = CTRDistiller.build(cfg, name, sequences, users, catalogue, mcfg.history_len, mcfg.batch_size,
                                       split.candidates_sha256)
    id_items = pd.Index(pd.unique(np.concatenate([pos[1], pos[2][pos[2] > 0]])))  # rows seen in training
    id_of_row = torch.from_numpy(id_items.get_indexer(np.arange(len(catalogue) + 1)) + 1)  # 0 = unknown

    torch.manual_seed(derive_seed(cfg.seed, name, "init"))
    model = build_model(mcfg, len(users), len(id_items), id_of_row, feats.shape[1]).to(device)
    features = torch.from_numpy(feats).to(device) if feats.shape[1] else None
    model.features = features
    optimizer = torch.optim.Adam(model.parameters(), lr=mcfg.lr, weight_decay=mcfg.weight_decay)
    state = TrainState.start(out_dir, previous.resuming, model, optimizer, WEIGHTS_FILE)
    if previous.resuming:
        log.info(f"{name}: resuming after epoch {state.epoch} (best valid {selection.metric} {state.best:.4f})")
    else:
        write_parquet(pd.DataFrame({"item_id": catalogue.item_ids}), out_dir / ITEMS_FILE)
        write_parquet(pd.DataFrame({"user_id": list(users)}), out_dir / USERS_FILE)
    info: dict[str, Any] = {"kind": mcfg.kind, "variant": mcfg.variant, "config": to_dict(mcfg),
                            "fingerprint": fingerprint, "finished": False, "n_users": len(users),
                            "n_id_items": len(id_items), "n_catalogue": len(catalogue),
                            "dense_dim": int(feats.shape[1]),
                            "features": feat_info, "train_positives": int(len(pos[0])),
                            "candidates_sha256": split.candidates_sha256, "selection": selection.record()}
    write_json(info, run_file)
    log.info(f"{name} ({mcfg.variant}): {len(users)} users, {len(catalogue)} items, {len(pos[0])} positives, "
             f"dense features {feats.shape[1]}, {device}")

    while state.epoch < mcfg.epochs and not state.stopped_early:
        epoch = state.epoch
        samples = epoch_samples(mcfg, pos, split_negs, rng(cfg.seed, name, "negatives", epoch), len(catalogue), seen)
        order = rng(cfg.seed, name, "shuffle", epoch).permutation(len(samples[0]))
        desc = f"{name} epoch {epoch + 1}/{mcfg.epochs}"
        stats = run_epoch(model, optimizer, samples, order, mcfg, device, desc=desc, distiller=distiller)
        score = validation_score(model, features, catalogue, list(users), split, selection, mcfg, device)
        improved = state.end_epoch(score, validated, mcfg.patience, **stats.logged(),
                                   **{f"valid_{selection.metric}": score if math.isfinite(score) else None})
        if improved:
            _save_best(out_dir, model, features)
        state.save(out_dir, model, optimizer)
        log.info(f"{name} epoch {epoch + 1}: loss {stats.loss:.4f} ({stats.seconds:.1f} s), "
                 f"valid {selection.metric} {score:.4f}"
                 + (" (best)" if improved else f" ({state.bad_epochs}/{mcfg.patience} without improvement)"))

    info.update(finished=True, best=state.best if math.isfinite(state.best) else None,
                best_epoch=state.best_epoch + 1, epochs_run=state.epoch, stopped_early=state.stopped_early,
                **state.speed())
    write_json(info, run_file)
    return out_dir


def validation_score(model: torch.nn.Module, features: torch.Tensor | None, catalogue: Catalogue, users: list[str],
                     split: Any, selection: Selection, mcfg: CTRConfig, device: torch.device) -> float:
    """The selection metric of the current weights on the experiment's protocol (NaN without validation data)."""
    if not selection.available(split):
        return float("nan")
    model.eval()
    if features is not None:
        model.content_table = model.build_content_table(features)
    try:
        scorer = CTRScorer(model, catalogue, users, split.examples, mcfg.history_len, device, mcfg.score_batch_size)
        return selection.score(scorer, split, batch_size=max(1, mcfg.score_batch_size // max(len(catalogue), 1)))
    finally:
        model.content_table = None
