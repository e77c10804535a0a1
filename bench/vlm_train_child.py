"""One training configuration of `bench_vlm_scoring.py` (LoRA or QLoRA) in a process of its own: tokens/s and memory.

    python bench/vlm_train_child.py MODEL_DIR lora|qlora [--device cpu] [--threads 1] [--steps 3] [--batch 2]

Prints one JSON line. A fresh process per configuration, because a process's peak memory only grows: measured
one after the other in one process, the second configuration would report the first one's peak.
Memory:
- counted from the tensors (exact, the same on any machine): the weights (a 4-bit weight's packed bytes plus its
  quantization constants), of which the language model's linear weights (what QLoRA quantizes); the trainable
  parameters + their gradients + AdamW state; the activations autograd saves for the backward pass. Their sum is
  what a training step holds at the end of its forward;
- the peak as the machine sees it: on CUDA `max_memory_allocated` over the timed steps (after
  `reset_peak_memory_stats`); on the CPU the process's peak resident memory above the resident memory just before
  loading (Python, torch and the libraries). The CPU figure also holds what the allocator kept after freeing,
  checkpoint pages read through mmap, and QLoRA's full-precision weights while it quantizes them at load time.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MIB = 2 ** 20


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / MIB


def peak_rss_mib() -> float:
    """The process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def preload_libraries() -> None:
    """Import what loading and LoRA import lazily (peft, bitsandbytes: ~200 MB resident) before the baseline is
    taken, so that both configurations' figures count the model and the training only."""
    import importlib

    for name in ("peft", "bitsandbytes", "transformers.models.llava.modeling_llava"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


class SavedActivations:
    """Bytes of the tensors autograd saves for the backward pass (each storage once, parameters excluded):
    the activation memory a training step holds at the end of its forward, whatever the allocator does."""

    def __init__(self, model: torch.nn.Module):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in self.params:
            self.seen[st.data_ptr()] = st.nbytes()
        return t

    def mib(self) -> float:
        return sum(self.seen.values()) / MIB


def _quant_bytes(state) -> int:
    """Bytes of a bitsandbytes quantization state (absmax, code, offset, and the nested state of double quant)."""
    if state is None:
        return 0
    own = (getattr(state, k, None) for k in ("absmax", "code", "offset"))
    return sum(t.numel() * t.element_size() for t in own if isinstance(t, torch.Tensor)) + \
        _quant_bytes(getattr(state, "state2", None))


def tensor_mib(model, opt) -> dict[str, float]:
    weights = lm_linear = train = 0
    for name, p in model.named_parameters():
        size = p.numel() * p.element_size() + _quant_bytes(getattr(p, "quant_state", None))
        if p.requires_grad:
            train += 2 * size  # the parameter and its gradient
            continue
        weights += size
        if "language_model" in name and p.dim() == 2 and "embed_tokens" not in name:
            lm_linear += size
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    train += sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                 if isinstance(t, torch.Tensor))
    return {"weights_mib": weights / MIB, "lm_linear_mib": lm_linear / MIB, "train_state_mib": train / MIB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("config", choices=("lora", "qlora"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3, help="timed steps (one untimed warm-up step before)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--pref-words", type=int, default=24)
    ap.add_argument("--image-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from bench_vlm_scoring import candidates, load

    from mmrec.models.vlm_adapter import apply_lora
    from mmrec.models.vlm_forward import lm_loss, train_batch, vision_dtype
    from mmrec.models.vlm_prompt import PromptBuilder
    from mmrec.models.vlm_rec import LoraSection

    quantized = args.config == "qlora"
    cuda = args.device.startswith("cuda")
    preload_libraries()
    base_rss = rss_mib()
    loaded = load(args.model_dir, args.device, "4bit" if quantized else None)
    model = apply_lora(loaded.model, LoraSection(r=8), quantized, gradient_checkpointing=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    shape = SimpleNamespace(users=8, candidates=16, pref_words=args.pref_words, image_size=args.image_size)
    builder, users, images, titles = candidates(shape, loaded, np.random.default_rng(0))
    b = PromptBuilder(loaded, builder.yes_id, builder.no_id)
    items = [b.encode_suffix(b.item_suffix_text(tt), img) for img, tt in zip(images, titles)]
    prefixes = [b.encode_prefix(b.prefix_text(p)) for p in users]
    cpu_clock = args.device == "cpu" and args.threads == 1
    clock = time.process_time if cpu_clock else time.perf_counter
    saved = SavedActivations(model)
    model.train()
    tokens, start = 0, 0.0
    for step in range(args.steps + 1):  # step 0 warms up (and allocates the optimizer state), untimed
        if step == 1:
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = clock()
        rows = [(prefixes[(step * args.batch + i) % len(prefixes)], items[(step + i) % len(items)])
                for i in range(args.batch)]
        tb = train_batch([p for p, _ in rows], [it for _, it in rows], [b.answer_ids(i % 2) for i in range(args.batch)],
                         loaded.tokenizer.pad_token_id, None, True, model.device, vision_dtype(model))
        with torch.autograd.graph.saved_tensors_hooks(saved.pack if step == 1 else lambda t: t, lambda t: t):
            loss, _ = lm_loss(model(**tb.inputs).logits, tb.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        tokens += tb.tokens if step else 0
    if cuda:
        torch.cuda.synchronize()
    seconds = clock() - start
    mem = tensor_mib(model, opt)
    out = {"config": args.config, "tokens_per_s": tokens / seconds, "clock": "CPU" if cpu_clock else "wall",
           "params": sum(p.numel() for p in model.parameters()),  # a 4-bit weight counts its packed bytes
           "dtype": "bfloat16" if cuda else "float32",  # the base's, as `load` picks it
           **mem, "activations_mib": saved.mib(),
           "tensors_mib": mem["weights_mib"] + mem["train_state_mib"] + saved.mib(),
           "peak_mib": torch.cuda.max_memory_allocated() / MIB if cuda else peak_rss_mib() - base_rss}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
