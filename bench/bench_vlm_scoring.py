"""Speed of VLM Yes/No scoring and of LoRA vs QLoRA training, measured side by side in one run.

    python bench/bench_vlm_scoring.py                      # ~5 M-parameter tiny LLaVA, CPU, ~130-token preference
    python bench/bench_vlm_scoring.py --hidden 1024 --layers 8 --users 16 --device cuda   # a larger shape on a GPU

Compares, on the same model and candidates (21 per user):
1. the reference code's way: one candidate at a time, image first, `generate(max_new_tokens=30)`, P(Yes) from the
   first step's scores;
2. `mmrec score`'s way: batched single forward passes with the user's preference prefix computed once and its
   key/value cache reused (`VLMScorer`), and the same without the prefix cache (plain batched forward);
3. training tokens/s and memory of LoRA vs QLoRA (4-bit base), each in a fresh process (`vlm_train_child.py`), on
   a larger language model (`--train-hidden`, `--train-layers`) so that the weights dominate the memory.

Measuring: one warm-up of each way, then `--repeats` rounds with the cached and plain ways interleaved (the order
alternates per round); medians are reported with their range, and the reference way is timed per candidate
(median). On the CPU torch runs `--threads` threads (default 1) and the headline figures use the process's CPU
time, which other jobs on a shared machine do not inflate (wall time is printed too); on a GPU they use wall time
between `torch.cuda.synchronize()` calls. The FLOP counts (`vlm_flops.py`: model shapes x tokens really processed)
give the prefix cache's expected gain, and on a GPU the fraction of the chip's peak FLOP/s (`--peak-tflops`,
default 989 = H100/H200 dense bf16).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import emit  # noqa: E402  (bench/ is sys.path[0] when a benchmark runs as a script)
from vlm_flops import flop_count  # noqa: E402

from mmrec.models.vlm_forward import cached_p_yes, plain_p_yes, prefix_cache, select_cache, stack_pixels, vision_dtype  # noqa: E402
from mmrec.models.vlm_prompt import PromptBuilder  # noqa: E402

HERE = Path(__file__).resolve().parent
WORDS = ("striped dotted solid red orange yellow green blue purple circle square triangle diamond items colourful "
         "bright small large sticker badge tile coaster magnet patch paper vinyl ceramic metal fabric").split()


def preference(g: np.random.Generator, n_words: int) -> str:
    return "The user appears to have a preference for " + " ".join(g.choice(WORDS, n_words)) + "."


def build_model(args, out: Path, hidden: int, layers: int, heads: int) -> Path:
    from mmrec.tiny import build_tiny_llava

    return build_tiny_llava(out, "llava", seed=0, hidden=hidden, layers=layers, heads=heads,
                            kv_heads=max(1, heads // 2), vision_hidden=args.vision_hidden,
                            image_size=args.image_size, patch_size=args.patch_size)


def load(path: Path, device: str, quantization: str | None = None, attn: str | None = None):
    from mmrec.vlm import ModelSpec, load_vlm

    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    return load_vlm(ModelSpec(name_or_path=str(path), dtype=dtype, device_map=device, quantization=quantization,
                              attn_implementation=attn))


def candidates(args, loaded, g: np.random.Generator):
    """(prompt builder, users' preference texts, candidate images, candidate titles), seeded."""
    from PIL import Image

    from mmrec.models.vlm_build import make_builder

    builder: PromptBuilder = make_builder(loaded, True, "preference_first", 4096)
    users = [preference(g, args.pref_words) for _ in range(args.users)]
    images = [Image.fromarray(g.integers(0, 255, (args.image_size, args.image_size, 3), dtype=np.uint8))
              for _ in range(args.candidates)]
    titles = [f"{g.choice(WORDS)} {g.choice(WORDS)} item {i}" for i in range(args.candidates)]
    return builder, users, images, titles


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str):
    """(wall seconds, process CPU seconds, fn's result), the GPU's queued work included."""
    sync(device)
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    sync(device)
    return time.perf_counter() - w, time.process_time() - c, out


def reference_way(loaded, builder, users, images, titles, device: str):
    """Image-first prompt per candidate, generate 30 tokens, softmax of the first step's (Yes, No) scores.
    Returns per-candidate wall and CPU seconds and the P(Yes) values."""
    b = PromptBuilder(loaded, builder.yes_id, builder.no_id, order="image_first")
    model = loaded.model

    def one(pref, img, title) -> float:
        prefix, suffix = b.texts(pref, title)
        enc = loaded.processor(text=[prefix + suffix], images=[img], return_tensors="pt").to(model.device)
        enc["pixel_values"] = enc["pixel_values"].to(model.dtype)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=30, do_sample=False, output_scores=True,
                                 return_dict_in_generate=True, pad_token_id=loaded.tokenizer.pad_token_id)
        first = gen.scores[0][0, [builder.yes_id, builder.no_id]].float()
        return float(torch.softmax(first, -1)[0])

    one(users[0], images[0], titles[0])  # warm-up
    runs = [timed(lambda: one(pref, img, title), device) for pref in users for img, title in zip(images, titles)]
    return np.array([r[0] for r in runs]), np.array([r[1] for r in runs]), np.array([r[2] for r in runs])


def mmrec_way(loaded, builder, users, images, titles, batch: int, use_cache: bool) -> np.ndarray:
    """What VLMScorer does: items encoded once, users' prefixes once, candidates in batched forwards."""
    model, pad = loaded.model, loaded.tokenizer.pad_token_id
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
    return np.array(out)


def interleaved(args, loaded, builder, users, images, titles):
    """{"cache"|"plain": [(wall, cpu) per round]} and their P(Yes), after one untimed warm-up of each way."""
    run = {name: (lambda c=(name == "cache"): mmrec_way(loaded, builder, users, images, titles, args.batch, c))
           for name in ("cache", "plain")}
    for fn in run.values():
        fn()
    times: dict[str, list[tuple[float, float]]] = {"cache": [], "plain": []}
    probs = {}
    for r in range(args.repeats):
        for name in (("cache", "plain") if r % 2 == 0 else ("plain", "cache")):
            wall, cpu, probs[name] = timed(run[name], args.device)
            times[name].append((wall, cpu))
    return times, probs


def breakdown(args, loaded, builder, users, images, titles) -> dict[str, float]:
    """Median seconds of the parts of one user's cached scoring (and of its plain forward), `args.batch` cands."""
    model, pad, dev = loaded.model, loaded.tokenizer.pad_token_id, args.device
    items = [builder.encode_suffix(builder.item_suffix_text(tt), img) for img, tt in zip(images, titles)]
    items = items[:args.batch]
    prefix = builder.encode_prefix(builder.prefix_text(users[0]))
    cache, pmask, plen = prefix_cache(model, [prefix], pad)
    owner = torch.zeros(len(items), dtype=torch.long)
    pix = stack_pixels(items, model.device, vision_dtype(model))["pixel_values"]
    cfg = model.config
    parts = {
        "prefix forward (once per user)": lambda: prefix_cache(model, [prefix], pad),
        "cache selection (expand view)": lambda: select_cache(cache, owner),
        "vision tower + projector": lambda: model.get_image_features(
            pixel_values=pix, vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy),
        "suffix forward (vision included)": lambda: cached_p_yes(model, cache, pmask, plen, owner, items,
                                                                 builder.yes_id, builder.no_id, pad),
        "plain forward (vision included)": lambda: plain_p_yes(model, [prefix] * len(items), items,
                                                               builder.yes_id, builder.no_id, pad),
    }
    clock = 1 if use_cpu_clock(args) else 0
    out = {}
    with torch.no_grad():
        for name, fn in parts.items():
            fn()
            out[name] = float(np.median([timed(fn, dev)[clock] for _ in range(max(3, args.repeats))]))
        if args.profile:
            profile_ops({k: parts[k] for k in ("suffix forward (vision included)", "plain forward (vision included)")},
                        dev)
    return out


def profile_ops(parts: dict, device: str) -> None:
    """torch.profiler's operator table of each part (`--profile`): which operators the time goes to."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sort = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    for name, fn in parts.items():
        with profile(activities=acts, record_shapes=True) as prof:
            fn()
            sync(device)
        print(f"--profile: {name}")
        print(prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=12,
                                                                 max_name_column_width=44, max_shapes_column_width=60))


def use_cpu_clock(args) -> bool:
    """CPU seconds are the honest clock on a CPU run with one thread; with more threads they add up the threads'
    busy (and spinning) time, and on a GPU they miss the device's work."""
    return args.device == "cpu" and args.threads == 1


def spread(values) -> str:
    return f"{np.min(values):.2f}-{np.max(values):.2f}"


def score_report(args, loaded, builder, users, images, titles) -> None:
    n_ref = args.reference_users * args.candidates
    wall_ref, cpu_ref, p_ref = reference_way(loaded, builder, users[:args.reference_users], images, titles,
                                             args.device)
    times, probs = interleaved(args, loaded, builder, users, images, titles)
    clock, clock_name = (1, "CPU") if use_cpu_clock(args) else (0, "wall")
    n = len(users) * args.candidates
    t = {k: np.array(v)[:, clock] for k, v in times.items()}
    ref_cps = float(1 / np.median((cpu_ref if clock else wall_ref)))
    cache_cps, plain_cps = float(n / np.median(t["cache"])), float(n / np.median(t["plain"]))
    ratios = t["plain"] / t["cache"]
    wall_ratios = np.array(times["plain"])[:, 0] / np.array(times["cache"])[:, 0]
    print(f"candidates/s by {clock_name} time ({args.repeats} interleaved rounds of {n} candidates, median; "
          f"reference: median of {n_ref} candidates)")
    print(f"reference (1 at a time, generate 30): {ref_cps:9.1f}")
    print(f"mmrec score, plain batched forward:   {plain_cps:9.1f}")
    print(f"mmrec score, prefix cache:            {cache_cps:9.1f}")
    print(f"ratio mmrec score / reference:        {cache_cps / ref_cps:9.2f}x")
    print(f"ratio prefix cache / plain batched:   {np.median(ratios):9.2f}x  (median of per-round ratios, range "
          f"{spread(ratios)}; by wall time {np.median(wall_ratios):.2f}x, range {spread(wall_ratios)})")
    print(f"max |P(Yes)| difference cache vs plain: {np.abs(probs['cache'] - probs['plain']).max():.2e}; "
          f"vs reference (image-first prompt, so not equal): mean {np.abs(p_ref.mean() - probs['cache'].mean()):.3f}")

    pref_lens = [len(builder.encode_prefix(builder.prefix_text(u))) for u in users]
    suf_lens = [len(builder.encode_suffix(builder.item_suffix_text(tt), img).ids) for img, tt in zip(images, titles)]
    f_cache = flop_count(loaded.model, pref_lens, suf_lens, cached=True)
    f_plain = flop_count(loaded.model, pref_lens, suf_lens, cached=False)
    print(f"FLOPs per candidate: prefix cache {f_cache / n / 1e9:.3f} G, plain {f_plain / n / 1e9:.3f} G: the "
          f"cache can give at most {f_plain / f_cache:.2f}x; measured {np.median(ratios):.2f}x "
          f"({np.median(ratios) / (f_plain / f_cache):.0%} of it)")
    parts = breakdown(args, loaded, builder, users, images, titles)
    print(f"one user's {min(args.batch, args.candidates)} candidates, median {clock_name} ms per part:")
    for name, sec in parts.items():
        print(f"  {name:<34} {1000 * sec:8.1f}")

    n_params = sum(p.numel() for p in loaded.model.parameters())
    shape = f"{n_params / 1e6:.1f}M params, {args.device}"
    emit("scoring", f"batched prefix-cache score vs generate per cand., {shape}", cache_cps / ref_cps, "x",
         goal=5.0, note=f"{cache_cps:.1f} vs {ref_cps:.1f} candidates/s ({clock_name} time)")
    emit("scoring", f"prefix cache vs plain batched forward, cand/s ({args.candidates} cand/user)",
         float(np.median(ratios)), "x", note=f"range {spread(ratios)} over {args.repeats} rounds; FLOP bound "
                                             f"{f_plain / f_cache:.2f}x")
    emit("scoring", f"mmrec score, candidates/s ({shape})", cache_cps, "cand/s")
    if args.device.startswith("cuda"):
        peak = args.peak_tflops * 1e12
        flops = f_cache / np.median(t["cache"])
        # the forwards alone: one user's prefix + one batch of its candidates, as timed in the breakdown
        batch = min(args.batch, args.candidates)
        f_fwd = flop_count(loaded.model, pref_lens[:1], suf_lens[:batch], cached=True)
        fwd = f_fwd / (parts["prefix forward (once per user)"] + parts["suffix forward (vision included)"])
        print(f"GPU: {cache_cps:.1f} candidates/s = {flops / 1e12:.2f} TFLOP/s end to end (prompt building "
              f"included), {flops / peak:.2%} of {args.peak_tflops:.0f} TFLOP/s peak; the forwards alone "
              f"{fwd / 1e12:.2f} TFLOP/s, {fwd / peak:.2%}")
        emit("scoring", f"scoring, % of {args.peak_tflops:.0f} TFLOP/s peak (GPU, end to end)", 100 * flops / peak,
             "%", note=f"{flops / 1e12:.2f} TFLOP/s; forwards alone {100 * fwd / peak:.1f}%")


def train_report(args, path: Path) -> None:
    """LoRA and QLoRA each in a fresh process (so each peak is its own), then their figures side by side."""
    res = {}
    for name in ("lora", "qlora"):
        cmd = [sys.executable, str(HERE / "vlm_train_child.py"), str(path), name, "--device", args.device,
               "--threads", str(args.threads), "--steps", str(args.train_steps), "--batch", str(args.train_batch),
               "--pref-words", str(args.pref_words), "--image-size", str(args.image_size)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "MMREC_BENCH_JSON": ""})
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("{")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"training benchmark ({name}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        res[name] = json.loads(line)
    lo, q = res["lora"], res["qlora"]
    peak = "peak GPU allocated" if args.device.startswith("cuda") else "peak RSS above runtime"
    print(f"training, each configuration in a fresh process: {lo['params'] / 1e6:.1f} M parameters "
          f"({lo['dtype']}), batch {args.train_batch}, {args.train_steps} timed steps after a warm-up, "
          f"{lo['clock']} time; MiB counted from the tensors, and the process's peak")
    print(f"{'':6} {'tokens/s':>9} {'LM linear':>10} {'weights':>8} {'trainable+grad+Adam':>20} {'activations':>12} "
          f"{'sum':>7} {peak:>23}")
    for name, r in res.items():
        print(f"{name:6} {r['tokens_per_s']:9.0f} {r['lm_linear_mib']:10.1f} {r['weights_mib']:8.1f} "
              f"{r['train_state_mib']:20.1f} {r['activations_mib']:12.1f} {r['tensors_mib']:7.1f} "
              f"{r['peak_mib']:23.0f}")
    ratio = {k: q[k] / lo[k] for k in ("tokens_per_s", "lm_linear_mib", "tensors_mib", "peak_mib")}
    print(f"QLoRA / LoRA: tokens/s {ratio['tokens_per_s']:.2f}x; LM linear weights {ratio['lm_linear_mib']:.3f}x "
          f"(1/{1 / ratio['lm_linear_mib']:.1f} of a {lo['dtype']} base); training memory from the tensors "
          f"{ratio['tensors_mib']:.2f}x; {peak} {ratio['peak_mib']:.2f}x")
    shape = f"{lo['params'] / 1e6:.0f}M params, {args.device}"
    emit("scoring", "train QLoRA vs LoRA, tokens/s", ratio["tokens_per_s"], "x",
         note=f"{q['tokens_per_s']:.0f} vs {lo['tokens_per_s']:.0f} tokens/s ({shape})")
    emit("scoring", f"train QLoRA vs LoRA, LM linear weight bytes ({lo['dtype']} base)", ratio["lm_linear_mib"],
         "x", higher_is_better=False, note=f"{q['lm_linear_mib']:.1f} vs {lo['lm_linear_mib']:.1f} MiB")
    emit("scoring", "train QLoRA vs LoRA, memory (weights+grads+Adam+activations)", ratio["tensors_mib"], "x",
         higher_is_better=False, note=f"{q['tensors_mib']:.0f} vs {lo['tensors_mib']:.0f} MiB, from the tensors")
    emit("scoring", f"train QLoRA vs LoRA, {peak}", ratio["peak_mib"], "x", higher_is_better=False,
         note=f"{q['peak_mib']:.0f} vs {lo['peak_mib']:.0f} MiB, fresh process each")
    emit("scoring", f"train LoRA, tokens/s ({shape})", lo["tokens_per_s"], "tok/s")


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
    ap.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds of the cached and plain ways")
    ap.add_argument("--reference-users", type=int, default=1, help="users for the (slow) reference way")
    ap.add_argument("--train-hidden", type=int, default=2048, help="training benchmark: language model width")
    ap.add_argument("--train-layers", type=int, default=2, help="training benchmark: language model layers")
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on the CPU)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="the GPU's peak dense FLOP/s in TFLOP/s")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--profile", action="store_true", help="also print torch.profiler's operator tables")
    args = ap.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"--device {args.device} needs a CUDA GPU and torch sees none; run without --device (CPU sizes)")
    args.threads = args.threads or (1 if args.device == "cpu" else torch.get_num_threads())
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        score_dir = build_model(args, Path(tmp) / "score", args.hidden, args.layers, args.heads)
        loaded = load(score_dir, args.device)
        builder, users, images, titles = candidates(args, loaded, np.random.default_rng(0))
        n_params = sum(p.numel() for p in loaded.model.parameters())
        pref_tokens = len(builder.encode_prefix(builder.prefix_text(users[0])))
        suffix_tokens = len(builder.encode_suffix(builder.item_suffix_text(titles[0]), images[0]).ids)
        print(f"model: {n_params / 1e6:.2f} M parameters on {args.device}, {args.threads} torch thread(s); prefix "
              f"{pref_tokens} tokens, suffix {suffix_tokens} tokens (image included); {args.candidates} candidates "
              f"per user, {args.batch} per forward")
        with torch.no_grad():
            score_report(args, loaded, builder, users, images, titles)
        if not args.skip_train:
            del loaded
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the children need the GPU's memory
            heads = max(args.heads, args.train_hidden // 128)  # head_dim 128 at most, as in real models
            same = (args.train_hidden, args.train_layers, heads) == (args.hidden, args.layers, args.heads)
            train_report(args, score_dir if same else build_model(args, Path(tmp) / "train", args.train_hidden,
                                                                  args.train_layers, heads))


if __name__ == "__main__":
    main()
