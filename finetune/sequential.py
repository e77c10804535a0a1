"""Train a sequential ID baseline (GRU4Rec, SASRec): `mmrec finetune CONFIG --model NAME`.

Top to bottom: load the split, map items to indices, cut each user's training sequence into windows, then per
epoch: one pass over shuffled windows with a loss at every position (seconds and examples per second logged),
the validation metric on the experiment's protocol (`mmrec.selection`: the persisted validation candidates, or
the validation examples ranked over the experiment's catalogue under `eval.protocol: full`), best weights kept
(safetensors), a checkpoint (model, optimizer, RNG, epoch, best score, log) written atomically, early stopping
after `patience` epochs without improvement.
An interrupted run resumes from its last checkpoint and ends with the same weights as an uninterrupted one.

Checkpoint directory: model.safetensors (best weights), items.parquet, run.json, train_log.jsonl,
checkpoint/{state.safetensors,state.json} (the last epoch, for resuming).
"""
from __future__ import annotations

import importlib
import math
import os
from dataclasses import replace
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
from mmrec.experiment import MODEL_KINDS, ExperimentConfig
from mmrec.io import atomic_path, write_json, write_parquet
from mmrec.models.sequential import (
    ITEMS_FILE,
    WEIGHTS_FILE,
    ItemVocab,
    SequentialConfig,
    SequentialModel,
    SequentialScorer,
    auto_batch_size,
    pad_batch,
    sequence_loss,
    windows,
)
from mmrec.progress import get_logger
from mmrec.seeding import derive_seed, rng, seed_everything


def _finite(x: float) -> float | None:
    """JSON has no NaN/inf: a missing validation score is written as null."""
    return x if math.isfinite(x) else None


def run_epoch(model: SequentialModel, optimizer: torch.optim.Optimizer, samples: list[list[int]],
              order: np.ndarray, mcfg: SequentialConfig, device: torch.device, desc: str,
              distiller: Any = None) -> EpochStats:
    """One pass over the training windows in `order`; an example is one training target (a window position). The
    loss adds the distillation term of `distiller` (a `finetune.distill.Distiller`) when the model has a `distill:`
    section."""
    model.train()
    meter = EpochMeter(math.ceil(len(order) / mcfg.batch_size), desc)
    for sl in batches(len(order), mcfg.batch_size):
        batch = pad_batch([samples[i] for i in order[sl]]).to(device)
        loss = sequence_loss(model, batch, mcfg.loss, mcfg.bce_negatives)
        if distiller is not None:
            loss = loss + distiller.loss(model, batch, order[sl])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        meter.step(loss.item(), sum(len(samples[i]) - 1 for i in order[sl]))
    return meter.close()


def train(cfg: ExperimentConfig, name: str, out_dir: Path, resume: bool = True) -> Path:
    log = get_logger("finetune.sequential")
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # under `accelerate launch`/torchrun: these small models train on one device, rank 0 writes
        log.info(f"{name}: sequential baselines train in one process; rank {rank} leaves it to rank 0")
        return Path(out_dir)
    mcfg: SequentialConfig = cfg.model(name)
    module = importlib.import_module(MODEL_KINDS[mcfg.kind].split(":")[0])
    out_dir = Path(out_dir)
    run = start_epoch_run(cfg, name, out_dir, resume)
    split, selection, fingerprint, previous = run.split, run.selection, run.fingerprint, run.previous
    run_file = out_dir / RUN_FILE
    if previous.finished:
        log.info(f"{name}: already trained (best {mcfg.valid_metric} {previous.record['best']}), kept")
        return out_dir

    # Data: item indices from the training sequences, windows of at most max_len targets.
    seed_everything(cfg.seed)
    sequences = training_sequences(split.examples)
    vocab = ItemVocab.from_sequences(sequences.tolist())
    samples = [w for seq in sequences for w in windows(vocab.encode(seq), mcfg.max_len)]
    if not samples:
        raise DataError(f"{split.root}: no training sequence has two items, so there is no next item to learn")
    if mcfg.batch_size == "auto":
        mcfg = replace(mcfg, batch_size=auto_batch_size(len(samples)))
    validated = selection.available(split)
    device = resolve_device(mcfg.device)
    distiller = None
    if mcfg.distill is not None:
        from finetune.distill import Distiller

        distiller = Distiller.build(cfg, name, vocab, sequences, samples, mcfg.max_len, split.candidates_sha256)

    torch.manual_seed(derive_seed(cfg.seed, name, "init"))
    model = module.build_model(mcfg, len(vocab)).to(device)
    if mcfg.distill is not None and mcfg.distill.embedding != "none":
        from finetune.distill import attach_teacher_embeddings

        attach_teacher_embeddings(cfg, name, model, vocab, split.candidates_sha256)
    optimizer = torch.optim.Adam(model.parameters(), lr=mcfg.lr, weight_decay=mcfg.weight_decay)
    state = TrainState.start(out_dir, previous.resuming, model, optimizer, WEIGHTS_FILE)
    if previous.resuming:
        log.info(f"{name}: resuming after epoch {state.epoch} (best {mcfg.valid_metric} {state.best:.4f})")
    else:
        write_parquet(pd.DataFrame({"item_id": vocab.item_ids}), out_dir / ITEMS_FILE)
    info = {"kind": mcfg.kind, "config": to_dict(mcfg), "fingerprint": fingerprint, "finished": False,
            "n_items": len(vocab), "train_sequences": len(sequences), "train_windows": len(samples),
            "train_targets": int(sum(len(s) - 1 for s in samples)), "candidates_sha256": split.candidates_sha256,
            "selection": selection.record(), "batch_size": mcfg.batch_size,
            "steps_per_epoch": math.ceil(len(samples) / mcfg.batch_size)}
    write_json(info, run_file)
    log.info(f"{name}: {len(vocab)} items, {len(sequences)} sequences, {info['train_targets']} targets, "
             f"batches of {mcfg.batch_size} ({info['steps_per_epoch']} steps per epoch), {device}")

    while state.epoch < mcfg.epochs and not state.stopped_early:
        epoch = state.epoch
        order = rng(cfg.seed, name, "shuffle", epoch).permutation(len(samples))
        desc = f"{name} epoch {epoch + 1}/{mcfg.epochs}"
        stats = run_epoch(model, optimizer, samples, order, mcfg, device, desc=desc, distiller=distiller)
        score = float("nan")
        if validated:
            scorer = SequentialScorer(model, vocab, split.examples, mcfg.max_len, device, mcfg.score_batch_size)
            score = selection.score(scorer, split, mcfg.score_batch_size)
        improved = state.end_epoch(score, validated, mcfg.patience,
                                   **stats.logged(), **{mcfg.valid_metric: _finite(score)})
        if improved:
            with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
                save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        state.save(out_dir, model, optimizer)
        log.info(f"{name} epoch {epoch + 1}: loss {stats.loss:.4f} ({stats.seconds:.1f} s), "
                 f"valid {mcfg.valid_metric} {score:.4f}"
                 + (" (best)" if improved else f" ({state.bad_epochs}/{mcfg.patience} without improvement)"))

    info.update(finished=True, best=_finite(state.best), best_epoch=state.best_epoch + 1, epochs_run=state.epoch,
                stopped_early=state.stopped_early, **state.speed())
    write_json(info, run_file)
    return out_dir
