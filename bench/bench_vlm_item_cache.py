"""Host memory of the VLM scorer's item cache vs the cost of re-processing an evicted item, with LLaVA-NeXT's real
image-processor settings (llava-hf/llava-v1.6-mistral-7b-hf: 336 px, five grid pinpoints).

    python bench/bench_vlm_item_cache.py

For photos of several sizes, side by side: the bytes one cached item's pixels take in float32 (what the processor
returns) and in bf16 (what `PromptEncoder` keeps for a bf16 model), and the CPU time of processing the photo again
(median of `--repeats`, `time.process_time`, one torch thread: other jobs on a shared machine do not inflate it).
These are what `score.cache_mb` trades: a byte budget of cached items against re-processing the rest.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import emit  # noqa: E402  (bench/ is sys.path[0] when a benchmark runs as a script)

PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
SIZES = [(500, 500), (1000, 750), (1280, 720)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    from PIL import Image
    from transformers import LlavaNextImageProcessor

    torch.set_num_threads(1)
    processor = LlavaNextImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                        image_grid_pinpoints=PINPOINTS)
    g = np.random.default_rng(0)
    print(f"{'photo':>10} {'pixels':>22} {'float32 MiB':>12} {'bf16 MiB':>9} {'process ms (CPU)':>17}")
    for w, h in SIZES:
        photo = Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8))
        processor(images=[photo], return_tensors="pt")  # warm-up
        times = []
        for _ in range(args.repeats):
            t = time.process_time()
            pix = processor(images=[photo], return_tensors="pt")["pixel_values"]
            times.append(time.process_time() - t)
        f32 = pix.numel() * 4 / 2**20
        ms = statistics.median(times) * 1000
        print(f"{w}x{h:<5} {str(tuple(pix.shape)):>22} {f32:12.2f} {f32 / 2:9.2f} {ms:17.1f}")
        emit("item_cache", f"LLaVA-NeXT item pixels {w}x{h}, bf16", f32 / 2, "MiB")
        emit("item_cache", f"LLaVA-NeXT re-processing {w}x{h}", ms, "ms CPU", higher_is_better=False)
    print(f"\nitems in the default score.cache_mb (2048) at bf16: ~{int(2048 // (f32 / 2))}; "
          f"4,096 float32 items (the old count bound): {4096 * f32 / 1024:.1f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
