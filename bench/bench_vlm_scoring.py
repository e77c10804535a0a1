"""Speed of VLM Yes/No scoring and of LoRA vs QLoRA training, measured side by side in one run.

    python bench/bench_vlm_scoring.py                      # ~5 M-parameter tiny LLaVA, CPU, ~130-token preference
    python bench/bench_vlm_scoring.py --hidden 1024 --layers 8 --users 16 --device cuda   # a larger shape on a GPU

Compares, on the same model and candidates (21 per user):
1. the reference code's way: one candidate at a time, image first, `generate(max_new_tokens=30)`, P(Yes) from the
   first step's scores;
2. `mmrec score`'s way: batched single forward passes with the user's preference prefix computed once and its
   key/value cache reused (`VLMScorer`), and the same without the prefix cache (plain batched forward);
3. training tokens/s and peak memory of LoRA vs QLoRA (4-bit base) on the same batches.
Prints candidates/s and the ratios; on a GPU also the fraction of the chip's peak FLOP/s the scorer reaches
(`--peak-tflops`, default 989 = H100/H200 dense bf16).
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrec.models.vlm_forward import cached_p_yes, plain_p_yes, prefix_cache  # noqa: E402
from mmrec.models.vlm_prompt import PromptBuilder  # noqa: E402
from results import emit  # noqa: E402  (bench/ is sys.path[0] when a benchmark runs as a script)

WORDS = ("striped dotted solid red orange yellow green blue purple circle square triangle diamond items colourful "
         "bright small large sticker badge tile coaster magnet patch paper vinyl ceramic metal fabric").split()


def preference(g: np.random.Generator, n_words: int) -> str:
    return "The user appears to have a preference for " + " ".join(g.choice(WORDS, n_words)) + "."


def build(args, tmp: Path):
    from mmrec.tiny import build_tiny_llava
    from mmrec.vlm import ModelSpec, load_vlm

    path = build_tiny_llava(tmp / "llava", "llava", seed=0, hidden=args.hidden, layers=args.layers,
                            heads=args.heads, kv_heads=max(1, args.heads // 2), vision_hidden=args.vision_hidden,
                            image_size=args.image_size, patch_size=args.patch_size)
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    spec = ModelSpec(name_or_path=str(path), dtype=dtype, device_map=args.device)
    return path, spec, load_vlm(spec)


def candidates(args, loaded, g):
    from PIL import Image

    from mmrec.models.vlm_scorer import make_builder

    builder: PromptBuilder = make_builder(loaded, True, "preference_first", 4096)
    users = [preference(g, args.pref_words) for _ in range(args.users)]
    images = [Image.fromarray(g.integers(0, 255, (args.image_size, args.image_size, 3), dtype=np.uint8))
              for _ in range(args.candidates)]
    titles = [f"{g.choice(WORDS)} {g.choice(WORDS)} item {i}" for i in range(args.candidates)]
    return builder, users, images, titles


def reference_way(loaded, builder, users, images, titles) -> tuple[float, np.ndarray]:
    """Image-first prompt per candidate, generate 30 tokens, softmax of the first step's (Yes, No) scores."""
    b = PromptBuilder(loaded, builder.yes_id, builder.no_id, order="image_first")
    model, dev, out = loaded.model, loaded.model.device, []
    t = time.perf_counter()
    for pref in users:
        for img, title in zip(images, titles):
            prefix, suffix = b.texts(pref, title)
            enc = loaded.processor(text=[prefix + suffix], images=[img], return_tensors="pt").to(dev)
            enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
            with torch.no_grad():
                gen = model.generate(**enc, max_new_tokens=30, do_sample=False, output_scores=True,
                                     return_dict_in_generate=True, pad_token_id=loaded.tokenizer.pad_token_id)
            first = gen.scores[0][0, [builder.yes_id, builder.no_id]].float()
            out.append(float(torch.softmax(first, -1)[0]))
    return time.perf_counter() - t, np.array(out)


def mmrec_way(loaded, builder, users, images, titles, batch: int, use_cache: bool) -> tuple[float, np.ndarray]:
    """What VLMScorer does: items encoded once, users' prefixes once, candidates in batched forwards."""
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
    t = time.perf_counter()
    items = [builder.encode_suffix(builder.item_suffix_text(tt), img) for img, tt in zip(images, titles)]
    out = []
    for pref in users:
        prefix = builder.encode_prefix(builder.prefix_text(pref))
        if use_cache:
            cache, pmask, plen = prefix_cache(model, [prefix], pad)
        for s in range(0, len(items), batch):
            chunk = items[s:s + batch]
            if use_cache:
                owner = torch.zeros(len(chunk), dtype=torch.long)
                p = cached_p_yes(model, cache, pmask, plen, owner, chunk, builder.yes_id, builder.no_id, pad)
            else:
                p = plain_p_yes(model, [prefix] * len(chunk), chunk, builder.yes_id, builder.no_id, pad)
            out += p.tolist()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, np.array(out)


def train_speed(spec, builder, users, images, titles, quantized: bool, steps: int, batch: int) -> tuple[float, float]:
    """Tokens/s and peak memory (MiB) of LoRA training steps (QLoRA: 4-bit base)."""
    import dataclasses

    from mmrec.models.vlm_adapter import apply_lora
    from mmrec.models.vlm_forward import lm_loss, train_batch, vision_dtype
    from mmrec.models.vlm_rec import LoraSection
    from mmrec.vlm import load_vlm

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    spec = dataclasses.replace(spec, quantization="4bit" if quantized else None)
    loaded = load_vlm(spec)
    model = apply_lora(loaded.model, LoraSection(r=8), quantized, gradient_checkpointing=False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    b = PromptBuilder(loaded, builder.yes_id, builder.no_id)
    items = [b.encode_suffix(b.item_suffix_text(tt), img) for img, tt in zip(images, titles)]
    prefixes = [b.encode_prefix(b.prefix_text(p)) for p in users]
    model.train()
    tokens, t = 0, None
    for step in range(steps + 1):  # step 0 warms up, untimed
        if step == 1:
            t = time.perf_counter()
        rows = [(prefixes[(step * batch + i) % len(prefixes)], items[(step + i) % len(items)]) for i in range(batch)]
        tb = train_batch([p for p, _ in rows], [it for _, it in rows], [b.answer_ids(i % 2) for i in range(batch)],
                         loaded.tokenizer.pad_token_id, None, True, model.device, vision_dtype(model))
        loss, _ = lm_loss(model(**tb.inputs).logits, tb.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        tokens += tb.tokens if step else 0
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return tokens / (time.perf_counter() - t), peak


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=320)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vision-hidden", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=8)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=21, help="candidates per user")
    ap.add_argument("--pref-words", type=int, default=24, help="preference length in words (~130-token prefix)")
    ap.add_argument("--batch", type=int, default=21, help="candidates per forward")
    ap.add_argument("--reference-users", type=int, default=2, help="users for the (slow) reference way")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's peak dense FLOP/s in TFLOP/s")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {args.device} needs a CUDA GPU and torch sees none; run without --device (CPU sizes)")
    torch.manual_seed(0)
    g = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path, spec, loaded = build(args, Path(tmp))
        n_params = sum(p.numel() for p in loaded.model.parameters())
        builder, users, images, titles = candidates(args, loaded, g)
        pref_tokens = len(builder.encode_prefix(builder.prefix_text(users[0])))
        suffix_tokens = len(builder.encode_suffix(builder.item_suffix_text(titles[0]), images[0]).ids)
        print(f"model: {n_params / 1e6:.2f} M parameters on {args.device}; prefix {pref_tokens} tokens, "
              f"suffix {suffix_tokens} tokens (image included); {args.candidates} candidates per user")
        mmrec_way(loaded, builder, users[:1], images, titles, args.batch, True)  # warm-up
        n_ref = args.reference_users * args.candidates
        t_ref, p_ref = reference_way(loaded, builder, users[:args.reference_users], images, titles)
        t_cache, p_cache = mmrec_way(loaded, builder, users, images, titles, args.batch, True)
        t_plain, p_plain = mmrec_way(loaded, builder, users, images, titles, args.batch, False)
        n = len(users) * args.candidates
        ref_cps, cache_cps, plain_cps = n_ref / t_ref, n / t_cache, n / t_plain
        print(f"reference (1 at a time, generate 30): {ref_cps:9.1f} candidates/s")
        print(f"mmrec score, plain batched forward:   {plain_cps:9.1f} candidates/s")
        print(f"mmrec score, prefix cache:            {cache_cps:9.1f} candidates/s")
        print(f"ratio mmrec score / reference:        {cache_cps / ref_cps:9.2f}x")
        print(f"ratio prefix cache / plain batched:   {cache_cps / plain_cps:9.2f}x  (at {args.candidates} candidates/user)")
        print(f"max |P(Yes)| difference cache vs plain: {np.abs(p_cache - p_plain).max():.2e}; "
              f"vs reference (image-first prompt, so not equal): mean {np.abs(p_ref.mean() - p_cache.mean()):.3f}")
        shape = f"{n_params / 1e6:.1f}M params, {args.device}"
        emit("scoring", f"batched prefix-cache score vs generate per cand., {shape}", cache_cps / ref_cps, "x",
             goal=5.0, note=f"{cache_cps:.1f} vs {ref_cps:.1f} candidates/s")
        emit("scoring", f"prefix cache vs plain batched forward, cand/s ({args.candidates} cand/user)",
             cache_cps / plain_cps, "x", note=f"{cache_cps:.1f} vs {plain_cps:.1f} candidates/s")
        emit("scoring", f"mmrec score, candidates/s ({shape})", cache_cps, "cand/s")
        if args.device == "cuda":
            flops = 2 * n_params * (pref_tokens / args.candidates + suffix_tokens) * cache_cps
            print(f"GPU: {cache_cps:.1f} candidates/s = {flops / 1e12:.2f} TFLOP/s, "
                  f"{flops / (args.peak_tflops * 1e12):.2%} of {args.peak_tflops:.0f} TFLOP/s peak")
            emit("scoring", f"scoring, % of {args.peak_tflops:.0f} TFLOP/s peak (GPU)",
                 100 * flops / (args.peak_tflops * 1e12), "%", note=f"{flops / 1e12:.2f} TFLOP/s")
        if args.skip_train:
            return
        lora = train_speed(spec, builder, users, images, titles, False, args.train_steps, args.train_batch)
        qlora = train_speed(spec, builder, users, images, titles, True, args.train_steps, args.train_batch)
        print(f"train LoRA : {lora[0]:9.0f} tokens/s, peak memory {lora[1]:8.0f} MiB")
        print(f"train QLoRA: {qlora[0]:9.0f} tokens/s, peak memory {qlora[1]:8.0f} MiB")
        print(f"ratio QLoRA / LoRA tokens/s: {qlora[0] / lora[0]:.2f}x; peak memory {qlora[1] / lora[1]:.2f}x "
              "(CPU peak is the process's max RSS, which includes everything loaded so far)")
        mem = "GPU allocated" if args.device.startswith("cuda") else "CPU max RSS"
        emit("scoring", "train QLoRA vs LoRA, tokens/s", qlora[0] / lora[0], "x",
             note=f"{qlora[0]:.0f} vs {lora[0]:.0f} tokens/s")
        emit("scoring", f"train QLoRA vs LoRA, peak memory ({mem})", qlora[1] / lora[1], "x", higher_is_better=False,
             note=f"{qlora[1]:.0f} vs {lora[1]:.0f} MiB")
        emit("scoring", f"train LoRA, tokens/s ({shape})", lora[0], "tok/s")
        emit("scoring", f"train LoRA, peak memory MiB ({mem})", lora[1], "MiB", higher_is_better=False)
        emit("scoring", f"train QLoRA, peak memory MiB ({mem})", qlora[1], "MiB", higher_is_better=False)


if __name__ == "__main__":
    main()
