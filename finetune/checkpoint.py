"""Resumable training state and the run guard that every training recipe shares.

A recipe's output directory holds a run record (`run.json`, `vlm_rec.json`: the settings' fingerprint, made by
`run_fingerprint`, and a `finished` flag) and a state directory, replaced atomically after an epoch or every few
steps (`TrainState` keeps the epoch recipes' loop position, best score and log):

- `state.safetensors`: model tensors `model.<name>`, optimizer tensors `optim.<param index>.<key>`, torch RNG
  states `rng.<key>` (one process) or `rng.<rank>.<key>` (several), `<key>` being `torch` or `cuda.<device>`;
- `state.json`: `loop` (the recipe's loop position), `param_groups` and `optim_scalars` (the optimizer's
  non-tensor state), `processes`, and whatever else the recipe adds (a scheduler's state, a fingerprint).

Nothing is pickled: a checkpoint is read back with safetensors and json only.

The epoch recipes (`finetune/sequential.py`, `finetune/ctr.py`) also share their loop's bookkeeping here:
`TrainState` (epoch, best score, early stopping, log) and `EpochMeter`/`EpochStats` (one pass's loss and speed).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmrec.checkpoint_files import RUN_FILE, TRAIN_LOG_FILE
from mmrec.config import to_dict
from mmrec.errors import ConfigError
from mmrec.io import atomic_dir, hash_json, read_json, write_text
from mmrec.progress import progress

TENSORS_FILE = "state.safetensors"
META_FILE = "state.json"
# Beside the best weights and its TRAIN_LOG_FILE, an epoch recipe's output directory holds its last epoch's state.
STATE_DIR = "checkpoint"
# Model settings that decide where and how fast a run goes, never what it learns: a run fingerprint leaves them out.
SPEED_KEYS = frozenset({"device", "score_batch_size", "score"})


# --- the run fingerprint and guard -----------------------------------------------------------------------------

def learning_settings(model_cfg: Any) -> dict[str, Any]:
    """A model config as a dict without its `SPEED_KEYS`: the settings that change what a run learns."""
    return {k: v for k, v in to_dict(model_cfg).items() if k not in SPEED_KEYS}


def run_fingerprint(model_cfg: Any, seed: int, candidates_sha256: str, **extra: Any) -> str:
    """What makes two training runs the same run: the model's learning settings, the seed, the split (its candidate
    file's hash) and whatever else the recipe's result depends on (`extra`, e.g. how the best epoch is selected)."""
    clash = {"model", "candidates"} & set(extra)
    if clash:
        raise ValueError(f"run_fingerprint: extra keys {sorted(clash)} would replace the model settings or split")
    return hash_json({"model": learning_settings(model_cfg), "seed": seed, "candidates": candidates_sha256, **extra})


@dataclass(frozen=True)
class PreviousRun:
    """What an output directory already holds, and what the recipe does about it."""

    record: dict[str, Any] | None  # the run record found there, if any
    finished: bool  # the same run already finished: keep it, train nothing
    resuming: bool  # the same run was interrupted: continue from its saved state


def check_previous_run(run_file: Path, state_dir: Path, name: str, fingerprint: str, resume: bool) -> PreviousRun:
    """The guard at the top of every recipe. With `resume`, a run with another fingerprint in the same directory
    is refused (replacing it is what `--no-resume` is for), a finished run with the same one is kept, and an
    unfinished one resumes when `state_dir` holds a checkpoint. Without `resume` everything starts over."""
    record = read_json(run_file) if run_file.is_file() else None
    if not resume or record is None:
        return PreviousRun(record, finished=False, resuming=False)
    if record.get("fingerprint") != fingerprint:
        raise ConfigError(f"{run_file.parent} holds a run of '{name}' with other settings or another split; "
                          "re-run with --no-resume to train from scratch (it replaces that run)")
    if record.get("finished"):
        return PreviousRun(record, finished=True, resuming=False)
    return PreviousRun(record, finished=False, resuming=has_checkpoint(state_dir))


@dataclass(frozen=True)
class EpochRun:
    """What an epoch recipe (sequential baselines, CTR head) knows before it trains: its split, how the best epoch
    is selected, the run's fingerprint and what its output directory already holds."""

    split: Any  # mmrec.data.splits.Split
    selection: Any  # mmrec.selection.Selection
    fingerprint: str
    previous: PreviousRun


def start_epoch_run(cfg: Any, name: str, out_dir: Path, resume: bool, with_dataset: bool = False) -> EpochRun:
    """The split and selection of model `name` of experiment `cfg`, its run fingerprint and the previous run guard.
    The fingerprint also covers the teacher signals' hash for a distilled student (new signals make a new run) and,
    `with_dataset`, the dataset's (a model whose features are read from the items' content)."""
    from finetune.distill import signals_fingerprint
    from mmrec.data.splits import load_split
    from mmrec.selection import Selection

    mcfg = cfg.model(name)
    split = load_split(cfg.split_dir)
    selection = Selection.of(cfg, split, mcfg.valid_metric, where=f"{cfg.source}: models.{name}")
    extra = {"dataset": split.dataset.fingerprint()} if with_dataset else {}
    fingerprint = run_fingerprint(mcfg, cfg.seed, split.candidates_sha256, **extra, selection=selection.record())
    if mcfg.distill is not None:
        fingerprint = hash_json([fingerprint, signals_fingerprint(cfg, name, split.candidates_sha256)])
    previous = check_previous_run(out_dir / RUN_FILE, out_dir / STATE_DIR, name, fingerprint, resume)
    return EpochRun(split, selection, fingerprint, previous)


def clear_stale(out_dir: Path, *names: str) -> None:
    """Delete files or directories an older run left in `out_dir`: a fresh run must never resume or keep them."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


# --- optimizer state <-> safetensors ---------------------------------------------------------------------------

OptimizerOrState = Union[torch.optim.Optimizer, Mapping[str, Any]]


def optimizer_state(optimizer: OptimizerOrState) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The optimizer's state split into tensors (`optim.<param index>.<key>`) and JSON (`param_groups`,
    `optim_scalars` such as a non-tensor step count), since safetensors holds tensors only. `optimizer` may also be
    a state dict in `Optimizer.state_dict()`'s layout (e.g. the full state gathered from FSDP shards)."""
    opt = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, pstate in opt["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": opt["param_groups"], "optim_scalars": scalars}


def optimizer_state_dict(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of `optimizer_state`: a state dict in `Optimizer.state_dict()`'s layout."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for key, value in meta["optim_scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                         meta: Mapping[str, Any]) -> None:
    """Load what `optimizer_state` split into `optimizer`."""
    optimizer.load_state_dict(optimizer_state_dict(tensors, meta))


# --- RNG -------------------------------------------------------------------------------------------------------

def capture_rng(all_devices: bool = True) -> dict[str, torch.Tensor]:
    """This process's torch RNG: `torch` (CPU) and `cuda.<i>` for every visible GPU, or with `all_devices=False`
    for the current one only (one process per GPU, as under DDP: touching the others would put a context there)."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        devices = range(torch.cuda.device_count()) if all_devices else [torch.cuda.current_device()]
        for i in devices:
            states[f"cuda.{i}"] = torch.cuda.get_rng_state(i)
    return states


def restore_rng(states: Mapping[str, torch.Tensor]) -> None:
    """Inverse of `capture_rng`; GPU states are set by device index, for the devices this machine has."""
    torch.set_rng_state(states["torch"].clone())
    if torch.cuda.is_available():
        for key, value in states.items():
            if key.startswith("cuda.") and int(key[5:]) < torch.cuda.device_count():
                torch.cuda.set_rng_state(value.clone(), int(key[5:]))


def process_rng(tensors: Mapping[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """The RNG states saved for process `rank` (`rng.*` stripped); process 0's when the run had fewer processes."""
    if "rng.torch" in tensors:  # written by a single process
        return _strip(tensors, "rng.")
    for r in (rank, 0):
        if f"rng.{r}" in tensors:  # states written before RNG states were keyed: one packed tensor per process
            return _unpack_rng(tensors[f"rng.{r}"])
        if f"rng.{r}.torch" in tensors:
            return _strip(tensors, f"rng.{r}.")
    raise ConfigError("the checkpoint holds no RNG state; re-run with --no-resume to train from scratch")


def _unpack_rng(packed: torch.Tensor) -> dict[str, torch.Tensor]:
    """[int64 CPU-state length as 8 bytes, CPU state, the then-current GPU's state (may be empty)]."""
    n = int(packed[:8].view(torch.int64)[0])
    states = {"torch": packed[8:8 + n]}
    if packed.numel() > 8 + n and torch.cuda.is_available():
        states[f"cuda.{torch.cuda.current_device()}"] = packed[8 + n:]
    return states


def _strip(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


# --- the checkpoint directory ----------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """What `load_checkpoint` hands back besides the RNG it restored."""

    model: dict[str, torch.Tensor]  # the saved model tensors, by name
    optimizer: dict[str, Any]  # the saved optimizer state, in `Optimizer.state_dict()`'s layout
    loop: dict[str, Any]  # the recipe's loop state, as saved
    meta: dict[str, Any]  # all of state.json (extra keys the recipe saved included)


def has_checkpoint(state_dir: Path) -> bool:
    return (state_dir / META_FILE).is_file()


def save_checkpoint(state_dir: Path, model: torch.nn.Module | Mapping[str, torch.Tensor],
                    optimizer: OptimizerOrState, loop: Any,
                    rng_states: list[Mapping[str, torch.Tensor]] | None = None, **extra: Any) -> None:
    """Write `state_dir` atomically: model tensors (a module's whole state, or just the given tensors), optimizer
    (or its state dict), RNG (`rng_states`: one `capture_rng()` per process, default this process's) and the loop
    state (a dataclass)."""
    weights = model.state_dict() if isinstance(model, torch.nn.Module) else model
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in weights.items()}
    opt_tensors, opt_meta = optimizer_state(optimizer)
    tensors.update(opt_tensors)
    rng_states = [capture_rng()] if rng_states is None else rng_states
    for rank, states in enumerate(rng_states):
        prefix = "rng." if len(rng_states) == 1 else f"rng.{rank}."
        tensors.update({prefix + k: v.cpu() for k, v in states.items()})
    meta = {"loop": to_dict(loop), **opt_meta, "processes": len(rng_states), **extra}
    with atomic_dir(state_dir) as tmp:
        save_file(tensors, str(tmp / TENSORS_FILE))
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))


def load_checkpoint(state_dir: Path, optimizer: torch.optim.Optimizer | None, rank: int = 0) -> Checkpoint:
    """Restore process `rank`'s RNG and, when given, the optimizer from `state_dir`; the model tensors (and the
    optimizer state) come back to the caller, who knows how to load them (a whole state dict, only the trainable
    ones, or scattered over FSDP shards)."""
    tensors = load_file(str(state_dir / TENSORS_FILE))
    meta = json.loads((state_dir / META_FILE).read_text())
    optim = optimizer_state_dict(tensors, meta)
    if optimizer is not None:
        optimizer.load_state_dict(optim)
    restore_rng(process_rng(tensors, rank))
    return Checkpoint(model=_strip(tensors, "model."), optimizer=optim, loop=meta["loop"], meta=meta)


# --- the epoch recipes' loop state -----------------------------------------------------------------------------

@dataclass
class TrainState:
    """Everything besides tensors that a resumed epoch recipe (sequential baselines, CTR) needs to continue exactly."""

    epoch: int = 0                      # epochs finished
    best: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def end_epoch(self, score: float, validated: bool, patience: int, **logged: Any) -> bool:
        """Book a finished epoch and return whether its weights are the new best: a higher validation score
        (every epoch is, without validation), while `patience` epochs without one stop the run."""
        improved = not validated or score > self.best
        if improved:
            self.best, self.best_epoch, self.bad_epochs = (score if validated else self.best), self.epoch, 0
        else:
            self.bad_epochs += 1
        self.epoch += 1
        self.stopped_early = validated and self.bad_epochs >= patience
        self.history.append({"epoch": self.epoch, **logged, "best": improved})
        return improved

    @classmethod
    def start(cls, out_dir: Path, resuming: bool, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              weights_file: str) -> "TrainState":
        """The state an epoch recipe starts from: the saved one, its weights and optimizer loaded, when resuming;
        otherwise a fresh one, after the checkpoint, best weights and log an older run left are deleted."""
        if resuming:
            saved = load_checkpoint(out_dir / STATE_DIR, optimizer)
            model.load_state_dict(saved.model)
            return cls(**saved.loop)
        clear_stale(out_dir, STATE_DIR, weights_file, TRAIN_LOG_FILE)
        return cls()

    def speed(self) -> dict[str, float | None]:
        """Mean seconds per epoch and examples per second over the logged epochs (for run.json and the report)."""
        out: dict[str, float | None] = {}
        for key in ("epoch_seconds", "examples_per_second"):
            values = [h[key] for h in self.history if isinstance(h.get(key), (int, float))]
            out[f"{key}_mean"] = round(float(np.mean(values)), 3) if values else None
        return out

    def save(self, out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """The resumable checkpoint and the training log after an epoch."""
        save_checkpoint(out_dir / STATE_DIR, model, optimizer, self)
        write_text("".join(json.dumps(h) + "\n" for h in self.history), out_dir / TRAIN_LOG_FILE)


@dataclass
class EpochStats:
    """One training pass: mean batch loss, wall seconds and training examples (targets or samples) per second."""

    loss: float
    seconds: float
    examples: int

    def logged(self) -> dict[str, float]:
        """The train_log.jsonl fields of the pass (speed claims are read from these)."""
        return {"loss": self.loss, "epoch_seconds": round(self.seconds, 3),
                "examples_per_second": round(self.examples / self.seconds, 1) if self.seconds > 0 else None}


class EpochMeter:
    """Counts batches, loss and examples of one pass and shows loss and examples/s on its progress bar."""

    def __init__(self, n_batches: int, desc: str):
        self.bar = progress(total=n_batches, desc=desc, unit="batch")
        self.start = time.perf_counter()
        self.total, self.n, self.examples = 0.0, 0, 0

    def step(self, loss: float, examples: int) -> None:
        self.total, self.n, self.examples = self.total + loss, self.n + 1, self.examples + examples
        self.bar.update(1)
        elapsed = time.perf_counter() - self.start
        self.bar.set_postfix(loss=f"{self.total / self.n:.4f}", ex_s=f"{self.examples / max(elapsed, 1e-9):.0f}")

    def close(self) -> EpochStats:
        self.bar.close()
        return EpochStats(self.total / max(self.n, 1), time.perf_counter() - self.start, self.examples)
