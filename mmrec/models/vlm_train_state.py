"""Resumable training state of the VLM LoRA recipe, written atomically as one directory.

`last/` holds the trainable tensors, the optimizer's tensors (safetensors), the RNG state of every process,
and a JSON file with the optimizer's scalars, the scheduler, and the loop position (epoch, next micro-batch,
optimizer step, best validation AUC). Loading it puts a fresh run exactly where the saved one stood.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mmrec.io import atomic_dir
from mmrec.models.vlm_adapter import load_trainable_state, trainable_state

STATE_DIR = "last"


@dataclass
class LoopState:
    """Where the loop stands: the next micro-batch to run is (`epoch`, `batch`)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0  # optimizer steps done
    best_auc: float = -math.inf
    best_step: int = -1
    tokens: int = 0  # tokens trained on, all processes
    seconds: float = 0.0  # training time before this (re)start


def rng_state() -> torch.Tensor:
    """This process's torch RNG state (CPU, plus the current CUDA device's), as one byte tensor."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else torch.zeros(0, dtype=torch.uint8)
    return torch.cat([torch.tensor([cpu.numel()], dtype=torch.int64).view(torch.uint8), cpu, cuda])


def set_rng_state(state: torch.Tensor) -> None:
    n = int(state[:8].view(torch.int64)[0])
    torch.set_rng_state(state[8:8 + n].clone())
    if torch.cuda.is_available() and state.numel() > 8 + n:
        torch.cuda.set_rng_state(state[8 + n:].clone())


def save_state(out_dir: Path, model: Any, optimizer: Any, scheduler: Any, loop: LoopState,
               rng_states: list[torch.Tensor], fingerprint: str) -> None:
    """Write `out_dir/last` atomically (call on the main process; `rng_states` has one entry per process)."""
    tensors = {f"model.{k}": v for k, v in trainable_state(model).items()}
    opt = optimizer.state_dict()
    scalars: dict[str, Any] = {}
    for idx, pstate in opt["state"].items():
        for key, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    for rank, s in enumerate(rng_states):
        tensors[f"rng.{rank}"] = s.cpu()
    meta = {"loop": asdict(loop), "param_groups": opt["param_groups"], "optim_scalars": scalars,
            "scheduler": scheduler.state_dict(), "processes": len(rng_states), "fingerprint": fingerprint}
    with atomic_dir(out_dir / STATE_DIR) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps(meta, indent=1, default=str))


def has_state(out_dir: Path) -> bool:
    return (out_dir / STATE_DIR / "state.json").is_file()


def load_state(out_dir: Path, model: Any, optimizer: Any, scheduler: Any, rank: int) -> tuple[LoopState, dict]:
    """Restore model, optimizer, scheduler and this process's RNG; returns the loop state and the metadata."""
    tensors = load_file(str(out_dir / STATE_DIR / "state.safetensors"))
    meta = json.loads((out_dir / STATE_DIR / "state.json").read_text())
    load_trainable_state(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    for key, value in meta["optim_scalars"].items():
        idx, name = key.split(".", 1)
        opt_state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    key = f"rng.{rank}" if f"rng.{rank}" in tensors else "rng.0"
    set_rng_state(tensors[key])
    return LoopState(**meta["loop"]), meta
