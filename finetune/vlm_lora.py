"""LoRA / QLoRA finetuning of the VLM Yes/No recommender: `mmrec finetune CONFIG --model NAME`
(`accelerate launch -m finetune CONFIG ...` for several processes, GPUs or nodes: DDP, or FSDP2 through an
accelerate config file; `finetune/distributed.py` says what is supported and why).

Top to bottom: read the split's training rows (positives + negatives) and validation candidates, load the base
VLM (4-bit for QLoRA), wrap it with LoRA, then loop over seeded epochs of micro-batches with gradient
accumulation, clipping and a warm-up + cosine/linear schedule; every `eval_every` steps (or epoch) score the
validation candidates (every process its share of the users) with the same scorer `mmrec score` uses and keep
the adapter with the best AUC; every
`checkpoint_every` steps write a resumable checkpoint. A model with `finetune: false` (zero-shot baselines)
only records its base model and its validation AUC.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from finetune.checkpoint import capture_rng, check_previous_run, load_checkpoint, save_checkpoint
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
from mmrec.config import to_dict
from mmrec.data.splits import load_split
from mmrec.errors import ConfigError
from mmrec.experiment import ExperimentConfig
from mmrec.io import hash_json, write_json, write_text
from mmrec.models.vlm_adapter import apply_lora, merge_adapter
from mmrec.models.vlm_build import ADAPTER_DIR, RUN_FILE, make_encoder, make_scorer, resolve
from mmrec.models.vlm_context import report_missing
from mmrec.models.vlm_encoder import TrainingEncoder
from mmrec.models.vlm_forward import (
    answer_logits,
    answer_loss,
    lm_loss,
    model_device,
    vision_dtype,
    yes_no_loss,
)
from mmrec.progress import get_logger, progress
from mmrec.seeding import derive_seed, seed_everything

LOG_FILE = "train_log.jsonl"
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


def _fingerprint(cfg: ExperimentConfig, mcfg: Any, candidates_sha256: str) -> str:
    """Same run = same model settings (scoring speed knobs aside), seed and split."""
    settings = {k: v for k, v in to_dict(mcfg).items() if k != "score"}
    return hash_json({"model": settings, "seed": cfg.seed, "candidates": candidates_sha256})


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
        self.path, self.enabled = out_dir / LOG_FILE, enabled
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


def _record(out_dir: Path, info: dict[str, Any], accelerator: Any) -> None:
    if accelerator.is_main_process:
        write_json(info, out_dir / RUN_FILE)


def train(cfg: ExperimentConfig, name: str, out_dir: Path, resume: bool = True) -> Path:
    from accelerate.utils import gather_object

    from mmrec.vlm import load_vlm

    mcfg, tcfg, out_dir = resolve(cfg, name), resolve(cfg, name).train, Path(out_dir)
    split = load_split(cfg.split_dir)
    fingerprint = _fingerprint(cfg, mcfg, split.candidates_sha256)
    accelerator = make_accelerator(tcfg.precision, quantized=mcfg.model.quantization is not None)
    main, rank, nproc = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    previous = on_main(accelerator, lambda: check_previous_run(out_dir / RUN_FILE, out_dir / STATE_DIR, name,
                                                               fingerprint, resume))
    if previous.finished:
        log.info(f"{name}: already trained (best valid AUC {previous.record.get('best_auc')}), kept")
        return out_dir

    sharded = is_sharded(accelerator)  # FSDP2: every process takes part in every forward and state gather
    seed_everything(cfg.seed)
    loaded = load_vlm(base_spec(mcfg.model, sharded and mcfg.finetune))
    encoder = make_encoder(cfg, mcfg, split, loaded)
    builder = encoder.builder
    valid = validation_rows(split, tcfg.valid_users, cfg.seed)
    info = {"kind": "vlm", "model": name, "variant": mcfg.variant, "base": to_dict(mcfg.model), "seed": cfg.seed,
            "fingerprint": fingerprint, "candidates_sha256": split.candidates_sha256, "finished": False,
            "yes_id": builder.yes_id, "no_id": builder.no_id, "adapter": None, "best_auc": None}
    if main and not previous.resuming:
        shutil.rmtree(out_dir, ignore_errors=True)  # never mix a fresh run with an older one's files
        out_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    _record(out_dir, info, accelerator)

    if not mcfg.finetune:  # zero-shot: record the base model and how it does on validation
        scorer = make_scorer(loaded, encoder, mcfg, desc=f"{name} valid")
        auc, missing = validate(scorer, valid, accelerator, sharded=False)  # the base model is not sharded
        info.update(finished=True, best_auc=auc if math.isfinite(auc) else None, valid_missing=missing)
        _record(out_dir, info, accelerator)
        log.info(f"{name}: zero-shot, base model recorded; valid AUC {auc:.4f}")
        return out_dir

    # Training rows: a row the prompt cannot be built for is reported and left out, never silently.
    rows = training_rows(split, tcfg.negatives, cfg.seed)
    scorer = make_scorer(loaded, encoder, mcfg, desc=f"{name} valid")
    reasons = encoder.check(rows, f"{name} training rows")  # what scoring would give NaN, over-long prompts too
    skipped = report_missing(rows, reasons, f"{name} training rows")
    rows = rows[reasons == ""].reset_index(drop=True)
    if not len(rows):
        raise ConfigError(f"model '{name}': no training row has a preference and an image; see the warning above")

    torch.manual_seed(derive_seed(cfg.seed, name, "lora_init"))
    model = apply_lora(loaded.model, mcfg.lora, mcfg.model.quantization is not None, tcfg.gradient_checkpointing)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tcfg.lr,
                                  weight_decay=tcfg.weight_decay)
    n_batches = batches_per_epoch(len(rows), tcfg.batch_size, nproc)
    steps_per_epoch = -(-n_batches // tcfg.grad_accum)
    total_steps = steps_per_epoch * tcfg.epochs
    scheduler = _scheduler(optimizer, tcfg, total_steps)
    model, optimizer, trainable = prepare(accelerator, model, optimizer)
    plain = accelerator.unwrap_model(model)  # the FSDP2 model itself (fully_shard keeps the module object)
    torch.manual_seed(derive_seed(cfg.seed, name, "dropout", rank))  # per-process dropout streams
    state = LoopState()
    if previous.resuming:
        saved = load_checkpoint(out_dir / STATE_DIR, None, rank)
        if saved.meta.get("processes", nproc) != nproc:  # its data position counts global batches of nproc rows each
            raise ConfigError(f"{out_dir / STATE_DIR} was written by {saved.meta['processes']} process(es): resume "
                              f"it with as many (this launch has {nproc}), or re-run with --no-resume")
        load_full_state(plain, optimizer, saved.model, saved.optimizer, sharded)
        scheduler.load_state_dict(saved.meta["scheduler"])
        state = LoopState(**saved.loop)
        log.info(f"{name}: resuming at step {state.step}/{total_steps} (epoch {state.epoch + 1}, batch {state.batch})")
    run_log = RunLog(out_dir, state.step, enabled=main)
    scorer.model = plain  # one encoder, hence one item cache, encodes the training rows and validation's
    device, pixel_dtype = model_device(plain), vision_dtype(plain)
    batches = TrainingEncoder(encoder, rows, _image_id(loaded), mcfg.loss != "full", device, pixel_dtype)
    info.update(train_rows=len(rows), skipped_rows=len(skipped), steps=total_steps, processes=nproc,
                skipped_by_reason={str(k): int(v) for k, v in skipped["reason"].value_counts().items()},
                trainable_params=sum(p.numel() for p in trainable))
    _record(out_dir, info, accelerator)
    log.info(f"{name}: {len(rows)} training rows, {len(valid)} validation candidates, {total_steps} steps on "
             f"{nproc} process(es), {info['trainable_params']} trainable parameters")

    evaluated: list[int] = []  # steps validated at

    def evaluate_and_keep(epoch: int) -> None:
        """Every process scores its share and gets the same AUC, so all agree on saving (a collective on FSDP)."""
        evaluated.append(state.step)
        auc, info["valid_missing"] = validate(scorer, valid, accelerator, sharded)  # NaN rows, e.g. too long
        improved = not math.isfinite(state.best_auc) or (math.isfinite(auc) and auc > state.best_auc)
        if improved or not len(valid):
            state.best_auc, state.best_step = (auc if math.isfinite(auc) else state.best_auc), state.step
            save_adapter(plain, out_dir / ADAPTER_DIR, accelerator, sharded)
        run_log.write({"step": state.step, "epoch": epoch, "valid_auc": auc, "best": bool(improved)})
        if main:
            log.info(f"{name} step {state.step}: valid AUC {auc:.4f}" + (" (best)" if improved else ""))
        accelerator.wait_for_everyone()

    bar = progress(total=total_steps, desc=f"train {name}", unit="step")
    bar.update(state.step)
    window_loss, window_n, window_tokens, t0 = 0.0, 0, 0, time.perf_counter()
    start_time = time.perf_counter() - state.seconds
    model.train()
    for epoch in range(state.epoch, tcfg.epochs):
        start = state.batch if epoch == state.epoch else 0
        for b, idx in epoch_batches(len(rows), tcfg.batch_size, nproc, rank, cfg.seed, epoch, start):
            step_start = b - b % tcfg.grad_accum
            in_step = min(tcfg.grad_accum, n_batches - step_start)
            last = b == step_start + in_step - 1
            batch = batches.batch(idx)
            sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
            with sync:  # the prepared model runs under autocast when `precision` asks for it
                if mcfg.loss == "yes_no":
                    loss = yes_no_loss(answer_logits(model, batch), batch, builder.yes_id, builder.no_id)
                elif mcfg.loss == "answer":
                    loss = answer_loss(model, batch)
                else:
                    loss = lm_loss(model(**batch.inputs).logits, batch.labels)[0]
                accelerator.backward(loss / in_step)
            window_loss, window_tokens = window_loss + float(loss.detach()) / in_step, window_tokens + batch.tokens
            if not last:
                continue
            if tcfg.clip > 0:
                accelerator.clip_grad_norm_(trainable, tcfg.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step, state.epoch, state.batch = state.step + 1, epoch, b + 1
            window_n += 1
            bar.update(1)
            if state.step % tcfg.log_every == 0 or state.step == total_steps:
                tokens = int(accelerator.reduce(torch.tensor(window_tokens, device=device), "sum"))
                mean_loss = float(accelerator.reduce(torch.tensor(window_loss / window_n, device=device), "mean"))
                dt = time.perf_counter() - t0
                state.tokens += tokens
                run_log.write({"step": state.step, "epoch": epoch, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                               "tokens_per_s": tokens / dt, "peak_mem_mb": _peak_mb()})
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                window_loss, window_n, window_tokens, t0 = 0.0, 0, 0, time.perf_counter()
            end_of_epoch = b + 1 == n_batches
            if end_of_epoch:
                state.epoch, state.batch = epoch + 1, 0
            if (tcfg.eval_every and state.step % tcfg.eval_every == 0) or (end_of_epoch and not tcfg.eval_every):
                evaluate_and_keep(epoch)
            if state.step % tcfg.checkpoint_every == 0 or state.step == total_steps:
                state.seconds = time.perf_counter() - start_time
                rng_states = gather_object([capture_rng(all_devices=False)])  # every process's RNG
                checkpoint(out_dir, plain, optimizer, scheduler, state, rng_states, fingerprint, main, sharded)
                accelerator.wait_for_everyone()
    bar.close()
    if not evaluated and state.best_step < 0:  # validation never ran (eval_every beyond the last step)
        evaluate_and_keep(tcfg.epochs - 1)
    run_log.close()
    if main and tcfg.merge:
        merge_adapter(base_spec(mcfg.model, sharded), out_dir / ADAPTER_DIR, out_dir / "merged")  # CPU under FSDP
    info.update(finished=True, adapter=ADAPTER_DIR, best_auc=state.best_auc if math.isfinite(state.best_auc) else None,
                best_step=state.best_step, tokens=state.tokens, seconds=time.perf_counter() - start_time,
                peak_mem_mb=_peak_mb(), truncated_prompts=builder.truncated, merged="merged" if tcfg.merge else None)
    _record(out_dir, info, accelerator)
    accelerator.wait_for_everyone()
    return out_dir


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

