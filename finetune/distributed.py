"""The multi-process side of the VLM LoRA recipe: which launches it supports, validation split over the processes,
and the full (gathered) trainable state for saving and resuming under FSDP.

- Launches: one process, DDP, or FSDP2 (`fsdp_version: 2`, torch's `fully_shard`: it keeps the module object and
  its parameter names, LoRA's mixed requires_grad needs nothing special, and it runs over gloo on CPU processes,
  where this is tested). Refused with a `ConfigError`: FSDP1 (flat parameters; it would not even start on CPU
  processes here, so it cannot be tested) and DeepSpeed (its engine steps, accumulates and clips on its own and
  partitions the optimizer in its own layout; accelerate 1.15 runs it on accelerators only). accelerate turns FSDP
  on only for accelerators too: on CPU processes it would silently run DDP, so the recipe switches them to FSDP2.
- Validation: every process scores its share of the validation users (contiguous blocks of whole users, so a
  user's candidates stay together for the prefix cache); the scores are gathered and every process computes the
  same AUC. Under FSDP every forward all-gathers parameter shards, so while the processes score their own rows a
  `Lockstep` keeps their forwards paired (see there).
- State: under FSDP the trainable tensors and the optimizer state are gathered in full (torch's
  `get_model_state_dict` / `get_optimizer_state_dict`, frozen base weights left out) and written in the same
  checkpoint layout as one process writes (safetensors + json); resuming scatters them back.
- Exit: a launched process leaves through `end_process`, which tears the process group down and exits at once.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Mapping, NoReturn

import numpy as np
import pandas as pd
import torch

from mmrec.errors import ConfigError, MmrecError
from mmrec.io import atomic_dir
from mmrec.metrics import global_auc
from mmrec.progress import get_logger

log = get_logger("finetune.distributed")

SUPPORTED = ("one process, DDP (`accelerate launch --multi_gpu`, torchrun), or FSDP2 (an accelerate config with "
             "`distributed_type: FSDP` and `fsdp_config: {fsdp_version: 2}`, e.g. configs/accelerate/fsdp_8gpu.yaml)")


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").lower() == "true"


def launch_problem(env: Mapping[str, str], quantized: bool = False) -> str | None:
    """Why the launch described by accelerate's environment variables (`accelerate launch` sets them from its
    config file) cannot run this recipe, or None when it can."""
    if _flag(env, "ACCELERATE_USE_DEEPSPEED"):
        return ("DeepSpeed is not supported by the VLM LoRA recipe (its engine steps, accumulates and clips on its "
                "own, and ZeRO partitions the optimizer state in a layout the resumable checkpoint does not "
                f"read); use {SUPPORTED}")
    if not _flag(env, "ACCELERATE_USE_FSDP"):
        return None
    if env.get("FSDP_VERSION", "1") != "2":
        return f"FSDP version {env.get('FSDP_VERSION', '1')} is not supported: set `fsdp_version: 2` in the " \
               f"accelerate config's fsdp_config; supported: {SUPPORTED}"
    if _flag(env, "FSDP_ACTIVATION_CHECKPOINTING"):
        return "fsdp_activation_checkpointing is not supported: set it to false and use the model's " \
               "`train.gradient_checkpointing: true` instead"
    if _flag(env, "FSDP_CPU_RAM_EFFICIENT_LOADING"):
        return "fsdp_cpu_ram_efficient_loading is not supported (under FSDP every process loads the base on the CPU " \
               "and fully_shard moves its shard to the GPU): set it to false"
    if quantized:
        return "QLoRA (model.quantization) under FSDP is not supported: launch it with DDP, where each process " \
               "holds the 4-bit base"
    return None


def make_accelerator(precision: str, quantized: bool = False) -> Any:
    """The recipe's Accelerator, after refusing unsupported launches; FSDP2 is switched on for CPU processes."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    problem = launch_problem(os.environ, quantized)
    if problem:
        raise ConfigError(problem)
    # cpu=True lets accelerate see a multi-process CPU launch (gloo) when there is no GPU
    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    state = accelerator.state
    if _flag(os.environ, "ACCELERATE_USE_FSDP") and state.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables, as accelerate does on GPUs
        if accelerator.mixed_precision != "no":
            plugin.set_mixed_precision(accelerator.mixed_precision)
        state.fsdp_plugin, state.distributed_type = plugin, DistributedType.FSDP
        if accelerator.is_main_process:
            log.info(f"accelerate runs FSDP on accelerators only: {accelerator.num_processes} CPU processes "
                     "switched from DDP to FSDP2 (gloo)")
    if state.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError(f"FSDP1 is not supported; use {SUPPORTED}")
    return accelerator


def on_main(accelerator: Any, decide: Callable[[], Any]) -> Any:
    """`decide()` run by the main process alone, its result (or its `MmrecError`) handed to every process, so all
    act on one view of the shared output directory: processes that start at different moments (one restarting
    while another still writes the checkpoint) or see the storage differently would otherwise take different paths
    and wait on each other forever."""
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None]
    if accelerator.is_main_process:
        try:
            box = [(decide(), None)]
        except MmrecError as e:
            box = [(None, e)]
    result, error = broadcast_object_list(box)[0]
    if error is not None:
        raise error
    return result


def end_process(code: int) -> NoReturn:
    """Exit with `code`; a process of a multi-process launch first waits for the others (on success), destroys
    the process group and flushes its logs, then exits without the interpreter's teardown. torch 2.14's FSDP2
    keeps the process group alive past `destroy_process_group` (DTensor's sharding caches hold its device mesh),
    and the group's threads can then abort that teardown (SIGABRT in about 1 of 10 runs of two CPU processes over
    gloo), which the launcher reports as a failed run after the run has finished."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        sys.exit(code)
    if code == 0:
        dist.barrier()
    dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def base_spec(spec: Any, sharded: bool) -> Any:
    """The base model's spec: under FSDP loaded on the CPU (unless the config places it), since `fully_shard` then
    moves only each process's shard to its GPU and no GPU ever holds the whole base."""
    if not sharded or spec.device_map is not None:
        return spec
    return dataclasses.replace(spec, device_map="cpu")


def prepare(accelerator: Any, model: Any, optimizer: Any) -> tuple[Any, Any, list[torch.nn.Parameter]]:
    """`accelerator.prepare` of the LoRA model and its optimizer, plus the trainable parameters as they are
    afterwards (FSDP2 replaces them with sharded ones: clipping the old ones would clip nothing)."""
    try:
        model, optimizer = accelerator.prepare(model, optimizer)
    except ValueError as e:
        if not is_sharded(accelerator):
            raise
        layers = sorted(getattr(model, "_no_split_modules", None) or [])
        raise ConfigError(f"accelerate could not shard the model with FSDP: {e} Set fsdp_transformer_layer_cls_to_wrap "
                          f"in the accelerate config to this model's layer classes (it names {layers})") from None
    return model, optimizer, [p for p in model.parameters() if p.requires_grad]


def is_sharded(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


# --- validation on every process -------------------------------------------------------------------------------

def user_share(valid: pd.DataFrame, rank: int, num_processes: int) -> np.ndarray:
    """Row positions of `valid` that process `rank` scores: a contiguous block of whole (user, stage) owners, in
    order of first appearance, so the shares are disjoint, cover every row and do not depend on anything else."""
    keys = valid["user_id"].astype(str).to_numpy() + "\0" + valid["stage"].astype(str).to_numpy()
    owners = pd.unique(keys)
    mine = np.array_split(owners, num_processes)[rank]
    return np.flatnonzero(np.isin(keys, mine))


class Lockstep:
    """Pairs the forwards of processes that run different numbers and kinds of forwards on a sharded model.

    Under FSDP each forward all-gathers the shards of the modules it runs: a text-only forward (a prompt prefix)
    runs the language model, one with images also the vision tower. While active, every forward of `model` first
    agrees with the other processes (one tiny all-reduce) on the kind that runs next, the lowest kind any process
    wants: the processes that want it run their own forward, the others a throwaway forward of that kind. On
    leaving, a process runs throwaway forwards until every process is done. `dummy(kind)` gives the keyword
    arguments of a throwaway forward (0: text only, 1: with images)."""

    TEXT, IMAGE, DONE = 0, 1, 2

    def __init__(self, model: Any, dummy: Callable[[int], dict[str, Any]], device: torch.device):
        self.model, self.dummy, self.device = model, dummy, device
        self._handle = None
        self._inside = False
        self.throwaway = 0  # throwaway forwards run (counted for tests)

    def __enter__(self) -> "Lockstep":
        # prepend: agree before FSDP's own pre-forward hook all-gathers anything
        self._handle = self.model.register_forward_pre_hook(self._before_forward, prepend=True, with_kwargs=True)
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                self._wait_for(self.DONE)
        finally:
            self._handle.remove()

    def _agree(self, kind: int) -> int:
        wanted = torch.tensor([kind], device=self.device)
        torch.distributed.all_reduce(wanted, op=torch.distributed.ReduceOp.MIN)
        return int(wanted.item())

    def _wait_for(self, kind: int) -> None:
        while (agreed := self._agree(kind)) != kind:
            self._inside = True
            try:
                with torch.no_grad():
                    self.model(**self.dummy(agreed))
            finally:
                self._inside = False
            self.throwaway += 1

    def _before_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not self._inside:
            self._wait_for(self.IMAGE if kwargs.get("pixel_values") is not None else self.TEXT)


def _dummy_inputs(scorer: Any, valid: pd.DataFrame) -> Callable[[int], dict[str, Any]]:
    """Throwaway forward inputs: one pad token (text only), or the first promptable validation row (with images)."""
    from mmrec.models.vlm_forward import model_device

    made: dict[int, dict[str, Any]] = {}

    def dummy(kind: int) -> dict[str, Any]:
        if kind not in made:
            dev = model_device(scorer.model)
            if kind == Lockstep.TEXT:
                made[kind] = {"input_ids": torch.tensor([[scorer.encoder.pad_id]], device=dev)}
            else:
                made[kind] = _first_prompt(scorer.encoder, scorer.model, valid, dev)
            made[kind]["logits_to_keep"] = 1
        return made[kind]

    return dummy


def _first_prompt(encoder: Any, model: Any, valid: pd.DataFrame, dev: torch.device) -> dict[str, Any]:
    """`model`'s forward inputs of the first validation row that `encoder` (a `PromptEncoder`) can prompt within
    `max_length`."""
    from mmrec.models.vlm_forward import stack_pixels, vision_dtype
    from mmrec.models.vlm_prompt import PromptTooLong

    rows = valid[["user_id", "stage", "item_id"]].astype(str)
    for user, stage, item_id in rows[encoder.context.check(rows) == ""].itertuples(index=False):
        try:
            prefix, item = encoder.encode(user, stage, item_id)
        except PromptTooLong:
            continue
        return {"input_ids": torch.tensor([prefix + list(item.ids)], device=dev),
                **stack_pixels([item], dev, vision_dtype(model))}
    raise MmrecError("no validation row can be prompted (see the warnings above); check the preferences, "
                     "images and train.max_length")


def validate(scorer: Any, valid: pd.DataFrame, accelerator: Any, sharded: bool) -> tuple[float, int]:
    """(global AUC, rows that could not be prompted) over all validation rows, every process scoring its share;
    every process gets the same numbers. NaN scores count against the AUC."""
    from accelerate.utils import gather_object

    if not len(valid):
        return float("nan"), 0
    rows = user_share(valid, accelerator.process_index, accelerator.num_processes)
    model, was_training = scorer.model, scorer.model.training
    model.eval()  # the throwaway forwards too: no dropout, no draw from the training RNG
    try:
        with Lockstep(model, _dummy_inputs(scorer, valid), accelerator.device) if sharded else nullcontext():
            part = scorer.score(valid.iloc[rows]) if len(rows) else np.zeros(0)
    finally:
        model.train(was_training)
    missing = len(scorer.missing) if len(rows) else 0
    scores = np.full(len(valid), np.nan)
    total_missing = 0
    for idx, s, m in gather_object([(rows, part, missing)]):
        scores[idx] = s
        total_missing += m
    return global_auc(valid["label"].to_numpy(), scores), total_missing


# --- full state under FSDP -------------------------------------------------------------------------------------

def _full_options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def _param_names(model: Any, optimizer: Any) -> list[str]:
    """The names of the optimizer's parameters, in its order (the index `Optimizer.state_dict()` uses)."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(model: Any, optimizer: Any, sharded: bool) -> tuple[dict[str, torch.Tensor], Any]:
    """(trainable tensors by name, optimizer or its state dict) to checkpoint. Under FSDP every process must call
    this (the shards are gathered); the full tensors land on the main process (the others get empty dicts)."""
    from mmrec.models.vlm_adapter import trainable_state

    if not sharded:
        return trainable_state(model), optimizer
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    weights = get_model_state_dict(model, options=_full_options())
    by_name = get_optimizer_state_dict(model, optimizer, options=_full_options())
    if not by_name:
        return weights, {}
    index = {name: i for i, name in enumerate(_param_names(model, optimizer))}
    unknown = [n for n in by_name["state"] if n not in index]
    if unknown:
        raise ConfigError(f"FSDP renamed the trainable parameter {unknown[0]}; only fully_shard (FSDP2) without "
                          "accelerate's activation checkpointing is supported")
    groups = [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]]
    return weights, {"state": {index[n]: s for n, s in by_name["state"].items()}, "param_groups": groups}


def load_full_state(model: Any, optimizer: Any, weights: Mapping[str, torch.Tensor], optim: Mapping[str, Any],
                    sharded: bool) -> None:
    """Load a checkpoint's trainable tensors and optimizer state (both in full, every process holding them) into
    the model and optimizer, scattered over the shards under FSDP."""
    from mmrec.models.vlm_adapter import load_trainable_state

    if not sharded:
        load_trainable_state(model, dict(weights))
        optimizer.load_state_dict(dict(optim))
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    names = _param_names(model, optimizer)
    missing = [n for n in names if n not in weights]
    if missing:
        raise ConfigError(f"the checkpoint lacks {len(missing)} trainable tensors (e.g. {missing[0]}); "
                          "it was written with other LoRA settings: re-run with --no-resume")
    load = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, dict(weights), options=load)  # torch replaces the dict's values with shards
    by_name = {"state": {names[int(i)]: dict(s) for i, s in optim["state"].items()},
               "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in optim["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, by_name, options=load)


def save_adapter(model: Any, path: Path, accelerator: Any, sharded: bool) -> None:
    """The peft adapter directory, written atomically by the main process; under FSDP every process must call
    this (the trainable shards are gathered first)."""
    weights = None
    if sharded:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        weights = get_model_state_dict(model, options=_full_options())
    if accelerator.is_main_process:
        with atomic_dir(path) as tmp:
            # the base's embeddings are never resized or trained: no copy of them in the adapter (peft would add
            # one, 2 x 260 MB for a 7B model, whenever lm_head or embed_tokens is a LoRA target)
            model.save_pretrained(str(tmp), save_embedding_layers=False,
                                  **({"state_dict": weights} if sharded else {}))
