"""Speed of the summarize stages, measured side by side in one run (ratios, not absolute times).

1. Preference summarization batched across users vs one user at a time: same model, same users, same code
   path (`batch_size` B vs 1), each from an empty cache. Goal: >= 4x users/s on a small model on CPU.
2. Item summarization: a second run over an already cached dataset vs the first run. Goal: >= 100x.

    python bench/bench_summarize.py                       # CPU defaults (tiny models, ~1 minute on 2 cores)
    python bench/bench_summarize.py --hidden 512 --layers 8 --users 256 --batch-size 64 --dtype bfloat16   # a GPU

Models are built locally (random weights, mmrec.tiny); the GPU is used when there is one.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("MMREC_NO_PROGRESS", "1")

from results import emit  # noqa: E402  (bench/ is sys.path[0] when a benchmark runs as a script)


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=32, help="synthetic users (default 32)")
    p.add_argument("--items", type=int, default=120, help="synthetic items (default 120)")
    p.add_argument("--hidden", type=int, default=128, help="language-model width of both tiny models (default 128)")
    p.add_argument("--layers", type=int, default=2, help="language-model layers (default 2)")
    p.add_argument("--max-new-tokens", type=int, default=64,
                   help="tokens per preference step (default 64; the paper allows 1024)")
    p.add_argument("--item-tokens", type=int, default=128, help="tokens per item summary (default 128; the paper: 200)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size of the batched runs (default 32)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    return p.parse_args()


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    args = parse()
    import pandas as pd
    import torch

    from mmrec.cli import main as mmrec_main
    from mmrec.data.splits import SplitConfig, load_split, make_split
    from mmrec.summarize.generation import TextGenerator
    from mmrec.summarize.items import ItemSummaryConfig, summarize_items
    from mmrec.summarize.users import UserSummaryConfig, summarize_users
    from mmrec.tiny import build_tiny_llava, build_tiny_llm
    from mmrec.vlm import ModelSpec, load_llm

    if args.threads:
        torch.set_num_threads(args.threads)
    device = (f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available()
              else f"cpu ({torch.get_num_threads()} threads)")
    root = Path(tempfile.mkdtemp(prefix="bench_summarize."))
    mmrec_main(["prep", "synthetic", "--users", str(args.users), "--items", str(args.items), "--interactions-per-user",
                "10", "--min-length", "6", "--out", str(root / "dataset")])
    make_split(root / "dataset", SplitConfig(protocol="loo", negatives=1), root / "split")
    split = load_split(root / "split")
    sizes = {"hidden": args.hidden, "layers": args.layers, "heads": 4, "kv_heads": 2}
    llm_dir = build_tiny_llm(root / "llm", **sizes)
    vlm_dir = build_tiny_llava(root / "llava", "llava", **sizes)
    print(f"device: {device}; users {args.users}, items {args.items}, LM hidden {args.hidden} x {args.layers} layers, "
          f"{args.max_new_tokens} tokens per step, {args.item_tokens} per item, batch {args.batch_size}")

    # -- 1. preferences: batched across users vs one user at a time ------------------------------------
    items = split.dataset.items
    summaries = root / "items_fixed.parquet"
    pd.DataFrame({"item_id": items["item_id"], "summary": "a small coloured shape on a white background",
                  "status": "ok"}).to_parquet(summaries, index=False)
    spec = ModelSpec(name_or_path=str(llm_dir), dtype=args.dtype)
    loaded = load_llm(spec)
    rates, tables = {}, {}
    for name, bs in (("one user at a time", 1), (f"batched x{args.batch_size}", args.batch_size)):
        cfg = UserSummaryConfig(model=spec, max_new_tokens=args.max_new_tokens, batch_size=bs, stages=["test"])
        gen = TextGenerator(lambda: loaded, cfg.settings())
        out = root / f"users_{bs}.parquet"
        stats, secs = timed(lambda: summarize_users(cfg, split, summaries, out, root / f"cache_users_{bs}",
                                                    generator=gen))
        rates[name] = stats.examples / secs
        tables[name] = pd.read_parquet(out)
        print(f"  preferences, {name:<20} {stats.examples} users, {stats.steps} steps, {gen.calls} model calls "
              f"in {secs:.2f}s -> {rates[name]:.1f} users/s")
    one, batched = rates.values()
    same = (tables["one user at a time"]["steps"].map(list).tolist()
            == tables[f"batched x{args.batch_size}"]["steps"].map(list).tolist())
    print(f"RATIO preference summarization, batched / one at a time: {batched / one:.1f}x users/s "
          f"(goal >= 4x); identical texts: {same}")
    where = "GPU" if torch.cuda.is_available() else "CPU"
    emit("summarize", f"preferences batched x{args.batch_size} vs one user at a time, users/s", batched / one, "x",
         goal=4.0, note=f"{batched:.1f} vs {one:.1f} users/s; identical texts: {same}")
    emit("summarize", f"preferences batched, users/s ({args.hidden}x{args.layers} LM, {where})", batched, "users/s")

    # -- 2. items: first run vs a re-run over the cached dataset ---------------------------------------
    icfg = ItemSummaryConfig(model=ModelSpec(name_or_path=str(vlm_dir), dtype=args.dtype),
                             max_new_tokens=args.item_tokens, batch_size=args.batch_size)
    run_items = lambda: summarize_items(icfg, root / "dataset", root / "items.parquet", root / "cache_items")  # noqa: E731
    first, t_first = timed(run_items)
    reruns = [timed(run_items) for _ in range(3)]
    second, t_second = reruns[0][0], sorted(t for _, t in reruns)[1]
    print(f"  items, first run  {first.line()} in {t_first:.2f}s (model load included)")
    print(f"  items, re-runs    {second.line()} in {t_second:.3f}s (median of 3)")
    print(f"RATIO item summarization, first / cached re-run time: {t_first / t_second:.0f}x (goal >= 100x)")
    emit("summarize", "items: first run vs cached re-run, time", t_first / t_second, "x", goal=100.0,
         note=f"{t_first:.2f}s vs {t_second:.3f}s")
    emit("summarize", f"items first run, items/s ({where}, model load included)", first.items / t_first, "items/s")
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(f"GPU peak memory allocated: {peak:.0f} MiB")
        emit("summarize", "peak GPU memory allocated, MiB", peak, "MiB", higher_is_better=False)


if __name__ == "__main__":
    main()
