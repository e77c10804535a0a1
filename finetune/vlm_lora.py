"""LoRA / QLoRA finetuning of the VLM Yes/No recommender: `mmrec finetune CONFIG --model NAME`
(`accelerate launch -m finetune CONFIG ...` for several processes, GPUs or nodes: DDP, or FSDP2 through an
accelerate config file; `finetune/distributed.py` says what is supported and why).

The recipe (`LoraRecipe`, in torchtune's shape) reads setup -> train loop -> save:
- the run guard: a finished run with the same settings is kept, an interrupted one resumes from `last/`;
- `setup`: the base VLM (4-bit for QLoRA), its prompt encoder (`mmrec.models.vlm_encoder`: one item cache, shared
  by the training rows and validation), the validation candidates and the scorer `mmrec score` uses. A model with
  `finetune: false` (zero-shot baselines) stops here: `validate_base` records its base model and validation AUC;
- `setup_training`: the split's training rows (positives + negatives) that can be prompted, LoRA on the base, the
  optimizer and a warm-up + cosine/linear/constant schedule prepared by accelerate, the resumed state if any;
- `train`: seeded epochs of micro-batches with gradient accumulation and clipping; every `eval_every` steps (or
  epoch) the validation candidates are scored (every process its share of the users) and the adapter with the
  best AUC is kept; every `checkpoint_every` steps a resumable checkpoint is written;
- `save`: the merged model if asked for, and the finished run record.

Checkpoint directory: adapter/ (best adapter, `PeftModel.from_pretrained`), merged/ (optional), vlm_rec.json
(run record), train_log.jsonl + tb/ (TensorBoard), last/ (resumable state).
"""
from __future__ import annotations

import contextlib
import json
import math
import resource
import shutil
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from finetune.checkpoint import capture_rng, check_previous_run, load_checkpoint, run_fingerprint, save_checkpoint
from finetune.distributed import (
    base_spec,
    full_state,
    is_sharded,
    load_full_state,
    make_accelerator,
    on_main,
    prepare,
    save_adapter,
    validate,
)
from finetune.vlm_data import batches_per_epoch, epoch_batches, training_rows, validation_rows
from mmrec.checkpoint_files import TRAIN_LOG_FILE
from mmrec.config import to_dict
from mmrec.data.splits import load_split
from mmrec.errors import ConfigError
from mmrec.experiment import ExperimentConfig
from mmrec.io import write_json, write_text
from mmrec.models.vlm_adapter import apply_lora, merge_adapter
from mmrec.models.vlm_build import ADAPTER_DIR, RUN_FILE, make_encoder, make_scorer, resolve
from mmrec.models.vlm_context import report_missing
from mmrec.models.vlm_encoder import TrainingEncoder
from mmrec.models.vlm_forward import (
    TrainBatch,
    answer_logits,
    answer_loss,
    lm_loss,
    model_device,
    vision_dtype,
    yes_no_loss,
)
from mmrec.models.vlm_prompt import PromptBuilder
from mmrec.progress import get_logger, progress
from mmrec.seeding import derive_seed, seed_everything

STATE_DIR = "last"
log = get_logger("finetune.vlm_lora")


@dataclass
class LoopState:
    """Where the loop stands, saved in every checkpoint: the next micro-batch to run is (`epoch`, `batch`)."""

    epoch: int = 0
    batch: int = 0
    step: int = 0  # optimizer steps done
    best_auc: float = -math.inf
    best_step: int = -1
    tokens: int = 0  # tokens trained on, all processes
    seconds: float = 0.0  # training time before this (re)start


def _peak_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _scheduler(optimizer: Any, tcfg: Any, total_steps: int) -> Any:
    from transformers import get_scheduler

    name = "constant_with_warmup" if tcfg.schedule == "constant" else tcfg.schedule
    return get_scheduler(name, optimizer, num_warmup_steps=tcfg.warmup_steps, num_training_steps=total_steps)


class RunLog:
    """train_log.jsonl plus TensorBoard events; a resumed run first drops what came after its checkpoint."""

    def __init__(self, out_dir: Path, step: int, enabled: bool):
        self.path = out_dir / TRAIN_LOG_FILE
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        kept = []
        if self.path.is_file() and step > 0:
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= step]
        write_text("".join(line + "\n" for line in kept), self.path)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out_dir / "tb"), purge_step=step if step > 0 else None)

    def write(self, entry: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(entry) + "\n")
        for key, value in entry.items():
            if key not in ("step", "epoch", "best") and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, entry["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def train(cfg: ExperimentConfig, name: str, out_dir: Path, resume: bool = True) -> Path:
    """Finetune model `name` into `out_dir`, or with `finetune: false` record its base model and validation AUC; a
    finished run with the same settings is kept, an interrupted one resumes (unless not `resume`)."""
    recipe = LoraRecipe(cfg, name, Path(out_dir), resume)
    if recipe.previous.finished:
        log.info(f"{name}: already trained (best valid AUC {recipe.previous.record.get('best_auc')}), kept")
        return recipe.out_dir
    recipe.setup()
    if not recipe.mcfg.finetune:
        recipe.validate_base()
        return recipe.out_dir
    recipe.setup_training()
    recipe.train()
    recipe.save()
    return recipe.out_dir


@dataclass
class LossWindow:
    """The optimizer steps since the last log line: their summed loss (each micro-batch's scaled by its step's
    number of micro-batches), how many there were, the tokens they read and when the window opened."""

    loss: float = 0.0
    steps: int = 0
    tokens: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, tokens: int) -> None:
        self.loss += loss
        self.tokens += tokens


class LoraRecipe:
    """One model's run, torchtune's recipe shape: the run guard (constructor), `setup` (base model, prompts,
    validation; all a zero-shot model needs, then `validate_base`), `setup_training` (rows, LoRA, optimizer,
    schedule, resumed state), `train` (the loop, which validates and checkpoints when due) and `save`."""

    def __init__(self, cfg: ExperimentConfig, name: str, out_dir: Path, resume: bool):
        self.cfg = cfg
        self.name = name
        self.out_dir = out_dir
        mcfg = resolve(cfg, name)
        split = load_split(cfg.split_dir)
        fingerprint = run_fingerprint(mcfg, cfg.seed, split.candidates_sha256)
        self.mcfg = mcfg
        self.tcfg = mcfg.train
        self.split = split
        self.fingerprint = fingerprint
        self.accelerator = make_accelerator(self.tcfg.precision, quantized=mcfg.model.quantization is not None)
        guard = partial(check_previous_run, out_dir / RUN_FILE, out_dir / STATE_DIR, name, fingerprint, resume)
        self.previous = on_main(self.accelerator, guard)
        self.validated = False  # whether this process has validated yet

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def _record(self) -> None:
        if self.main:
            write_json(self.info, self.out_dir / RUN_FILE)

    # -- setup --------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """The base model (on the CPU under FSDP, which shards it later), the prompt encoder, the validation rows
        and their scorer, and the run record; a fresh run starts from an empty directory."""
        from mmrec.vlm import load_vlm

        cfg, mcfg = self.cfg, self.mcfg
        self.sharded = is_sharded(self.accelerator)  # FSDP2: every process takes part in every forward and gather
        seed_everything(cfg.seed)
        self.loaded = load_vlm(base_spec(mcfg.model, self.sharded and mcfg.finetune))
        self.encoder = make_encoder(cfg, mcfg, self.split, self.loaded)
        self.valid = validation_rows(self.split, self.tcfg.valid_users, cfg.seed)
        self.scorer = make_scorer(self.loaded, self.encoder, mcfg, desc=f"{self.name} valid")
        builder = self.encoder.builder
        self.info = {"kind": "vlm", "model": self.name, "variant": mcfg.variant, "base": to_dict(mcfg.model),
                     "seed": cfg.seed, "fingerprint": self.fingerprint,
                     "candidates_sha256": self.split.candidates_sha256, "finished": False, "yes_id": builder.yes_id,
                     "no_id": builder.no_id, "adapter": None, "best_auc": None}
        if self.main and not self.previous.resuming:
            shutil.rmtree(self.out_dir, ignore_errors=True)  # never mix a fresh run with an older one's files
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.accelerator.wait_for_everyone()
        self._record()

    def validate_base(self) -> None:
        """A zero-shot model's whole run: its base model's validation AUC, recorded."""
        auc, missing = validate(self.scorer, self.valid, self.accelerator, sharded=False)  # the base is not sharded
        self.info.update(finished=True, best_auc=auc if math.isfinite(auc) else None, valid_missing=missing)
        self._record()
        log.info(f"{self.name}: zero-shot, base model recorded; valid AUC {auc:.4f}")

    def setup_training(self) -> None:
        """The training rows that can be prompted, LoRA on the base, the optimizer and schedule prepared by
        accelerate, and the loop state: fresh, or the checkpoint's."""
        cfg, mcfg, tcfg, acc = self.cfg, self.mcfg, self.tcfg, self.accelerator
        rows, skipped = self._promptable_rows()
        torch.manual_seed(derive_seed(cfg.seed, self.name, "lora_init"))
        model = apply_lora(self.loaded.model, mcfg.lora, mcfg.model.quantization is not None,
                           tcfg.gradient_checkpointing)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.lr,
                                      weight_decay=tcfg.weight_decay)
        self.n_batches = batches_per_epoch(len(rows), tcfg.batch_size, acc.num_processes)
        steps_per_epoch = -(-self.n_batches // tcfg.grad_accum)
        self.total_steps = steps_per_epoch * tcfg.epochs
        self.scheduler = _scheduler(optimizer, tcfg, self.total_steps)
        self.model, self.optimizer, self.trainable = prepare(acc, model, optimizer)
        self.plain = acc.unwrap_model(self.model)  # the FSDP2 model itself (fully_shard keeps the module object)
        torch.manual_seed(derive_seed(cfg.seed, self.name, "dropout", acc.process_index))  # per-process dropout
        self.state = self._resume() if self.previous.resuming else LoopState()
        self.run_log = RunLog(self.out_dir, self.state.step, enabled=self.main)
        self.scorer.model = self.plain  # validation scores the model in training, prompts from the same encoder
        self.device = model_device(self.plain)
        self.batches = TrainingEncoder(self.encoder, rows, _image_id(self.loaded), mcfg.loss != "full", self.device,
                                       vision_dtype(self.plain))
        self.info.update(train_rows=len(rows), skipped_rows=len(skipped), steps=self.total_steps,
                         processes=acc.num_processes,
                         skipped_by_reason={str(k): int(v) for k, v in skipped["reason"].value_counts().items()},
                         trainable_params=sum(p.numel() for p in self.trainable))
        self._record()
        log.info(f"{self.name}: {len(rows)} training rows, {len(self.valid)} validation candidates, "
                 f"{self.total_steps} steps on {acc.num_processes} process(es), "
                 f"{self.info['trainable_params']} trainable parameters")

    def _promptable_rows(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(training rows that can be prompted, the others with their reason): a row the prompt cannot be built
        for (what scoring would give NaN, over-long prompts too) is reported and left out, never silently."""
        rows = training_rows(self.split, self.tcfg.negatives, self.cfg.seed)
        desc = f"{self.name} training rows"
        reasons = self.encoder.check(rows, desc)
        skipped = report_missing(rows, reasons, desc)
        rows = rows[reasons == ""].reset_index(drop=True)
        if not len(rows):
            raise ConfigError(f"model '{self.name}': no training row has a preference and an image; see the "
                              "warning above")
        return rows, skipped

    def _resume(self) -> LoopState:
        """The loop state saved in `last/`, its trainable weights, optimizer and scheduler loaded back (and this
        process's RNG state)."""
        acc = self.accelerator
        nproc = acc.num_processes
        state_dir = self.out_dir / STATE_DIR
        saved = load_checkpoint(state_dir, None, acc.process_index)
        if saved.meta.get("processes", nproc) != nproc:  # its data position counts global batches of nproc rows each
            raise ConfigError(f"{state_dir} was written by {saved.meta['processes']} process(es): resume it with as "
                              f"many (this launch has {nproc}), or re-run with --no-resume")
        load_full_state(self.plain, self.optimizer, saved.model, saved.optimizer, self.sharded)
        self.scheduler.load_state_dict(saved.meta["scheduler"])
        state = LoopState(**saved.loop)
        log.info(f"{self.name}: resuming at step {state.step}/{self.total_steps} (epoch {state.epoch + 1}, "
                 f"batch {state.batch})")
        return state

    # -- the training loop --------------------------------------------------------------------------------------

    def train(self) -> None:
        """Seeded epochs of micro-batches from the loop state's position on; every `grad_accum` of them close an
        optimizer step. Validates once at the end if no step was due to."""
        tcfg, acc, state = self.tcfg, self.accelerator, self.state
        self.bar = progress(total=self.total_steps, desc=f"train {self.name}", unit="step")
        self.bar.update(state.step)
        self.window = LossWindow()
        self.start_time = time.perf_counter() - state.seconds
        self.model.train()
        for epoch in range(state.epoch, tcfg.epochs):
            start = state.batch if epoch == state.epoch else 0
            batches = epoch_batches(len(self.batches), tcfg.batch_size, acc.num_processes, acc.process_index,
                                    self.cfg.seed, epoch, start)
            for b, idx in batches:
                if self._micro_batch(b, idx):
                    self._optimizer_step(epoch, b)
        self.bar.close()
        if not self.validated and state.best_step < 0:  # validation never ran (eval_every beyond the last step)
            self._validate(tcfg.epochs - 1)

    def _micro_batch(self, b: int, idx: Any) -> bool:
        """Forward and backward of the epoch's micro-batch `b` (rows `idx`), its loss scaled by its step's number
        of micro-batches; True when it closes an optimizer step (gradients are synchronised only then)."""
        grad_accum = self.tcfg.grad_accum
        step_start = b - b % grad_accum
        in_step = min(grad_accum, self.n_batches - step_start)
        last = b == step_start + in_step - 1
        batch = self.batches.batch(idx)
        sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
        with sync:  # the prepared model runs under autocast when `precision` asks for it
            loss = batch_loss(self.model, batch, self.mcfg.loss, self.encoder.builder)
            self.accelerator.backward(loss / in_step)
        self.window.add(float(loss.detach()) / in_step, batch.tokens)
        return last

    def _optimizer_step(self, epoch: int, b: int) -> None:
        """The optimizer step that micro-batch `b` closes, then what is due after it: a log line, validation, a
        checkpoint. The loop state then points at the next micro-batch."""
        tcfg, state = self.tcfg, self.state
        if tcfg.clip > 0:
            self.accelerator.clip_grad_norm_(self.trainable, tcfg.clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.epoch = epoch
        state.batch = b + 1
        self.window.steps += 1
        self.bar.update(1)
        if state.step % tcfg.log_every == 0 or state.step == self.total_steps:
            self._log_window(epoch)
        end_of_epoch = b + 1 == self.n_batches
        if end_of_epoch:
            state.epoch = epoch + 1
            state.batch = 0
        if (tcfg.eval_every and state.step % tcfg.eval_every == 0) or (end_of_epoch and not tcfg.eval_every):
            self._validate(epoch)
        if state.step % tcfg.checkpoint_every == 0 or state.step == self.total_steps:
            self._checkpoint()

    def _log_window(self, epoch: int) -> None:
        """One log line for the steps since the last: mean loss and tokens over all processes, then a new window."""
        acc, window = self.accelerator, self.window
        tokens = int(acc.reduce(torch.tensor(window.tokens, device=self.device), "sum"))
        mean_loss = float(acc.reduce(torch.tensor(window.loss / window.steps, device=self.device), "mean"))
        seconds = time.perf_counter() - window.start
        self.state.tokens += tokens
        self.run_log.write({"step": self.state.step, "epoch": epoch, "loss": mean_loss,
                            "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tokens / seconds,
                            "peak_mem_mb": _peak_mb()})
        self.bar.set_postfix(loss=f"{mean_loss:.4f}")
        self.window = LossWindow()

    def _validate(self, epoch: int) -> None:
        """The validation AUC, the adapter kept when it improved. Every process scores its share and gets the
        same AUC, so all agree on saving (a collective on FSDP)."""
        state, acc = self.state, self.accelerator
        self.validated = True
        auc, self.info["valid_missing"] = validate(self.scorer, self.valid, acc, self.sharded)  # NaN rows: too long
        improved = not math.isfinite(state.best_auc) or (math.isfinite(auc) and auc > state.best_auc)
        if improved or not len(self.valid):
            state.best_auc = auc if math.isfinite(auc) else state.best_auc
            state.best_step = state.step
            save_adapter(self.plain, self.out_dir / ADAPTER_DIR, acc, self.sharded)
        self.run_log.write({"step": state.step, "epoch": epoch, "valid_auc": auc, "best": bool(improved)})
        if self.main:
            log.info(f"{self.name} step {state.step}: valid AUC {auc:.4f}" + (" (best)" if improved else ""))
        acc.wait_for_everyone()

    def _checkpoint(self) -> None:
        """The resumable state after this step, with every process's RNG state (gathered from all of them)."""
        from accelerate.utils import gather_object

        self.state.seconds = time.perf_counter() - self.start_time
        rng_states = gather_object([capture_rng(all_devices=False)])
        checkpoint(self.out_dir, self.plain, self.optimizer, self.scheduler, self.state, rng_states, self.fingerprint,
                   self.main, self.sharded)
        self.accelerator.wait_for_everyone()

    # -- save ---------------------------------------------------------------------------------------------------

    def save(self) -> None:
        """The run's end: the logs closed, base + adapter merged when `train.merge` asks, the record finished."""
        state = self.state
        self.run_log.close()
        if self.main and self.tcfg.merge:
            merged_spec = base_spec(self.mcfg.model, self.sharded)  # on the CPU under FSDP
            merge_adapter(merged_spec, self.out_dir / ADAPTER_DIR, self.out_dir / "merged")
        self.info.update(finished=True, adapter=ADAPTER_DIR,
                         best_auc=state.best_auc if math.isfinite(state.best_auc) else None,
                         best_step=state.best_step, tokens=state.tokens, seconds=time.perf_counter() - self.start_time,
                         peak_mem_mb=_peak_mb(), truncated_prompts=self.encoder.builder.truncated,
                         merged="merged" if self.tcfg.merge else None)
        self._record()
        self.accelerator.wait_for_everyone()


def batch_loss(model: Any, batch: TrainBatch, loss: str, builder: PromptBuilder) -> torch.Tensor:
    """The micro-batch's training loss of kind `loss` (`VLMRecConfig.loss`: yes_no, answer or full)."""
    if loss == "yes_no":
        return yes_no_loss(answer_logits(model, batch), batch, builder.yes_id, builder.no_id)
    if loss == "answer":
        return answer_loss(model, batch)
    return lm_loss(model(**batch.inputs).logits, batch.labels)[0]


def checkpoint(out_dir: Path, model: Any, optimizer: Any, scheduler: Any, state: LoopState,
               rng_states: list[dict[str, torch.Tensor]], fingerprint: str, main: bool, sharded: bool) -> None:
    """Write the resumable state `last/` (main process; under FSDP every process gathers first): trainable
    tensors, optimizer, scheduler, every process's RNG, the loop state; a separate function so tests can
    interrupt right after it."""
    weights, optim = full_state(model, optimizer, sharded)
    if main:
        save_checkpoint(out_dir / STATE_DIR, weights, optim, state, rng_states,
                        scheduler=scheduler.state_dict(), fingerprint=fingerprint)


def _image_id(loaded: Any) -> int | None:
    tok = loaded.tokenizer
    tid = tok.convert_tokens_to_ids(loaded.image_token)
    return None if tid is None or tid == tok.unk_token_id else int(tid)
