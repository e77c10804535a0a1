"""MMREC CTR speed: scoring 1 M candidates with cached item embeddings, and item embedding per encoder.

    .venv/bin/python bench/bench_ctr.py [--candidates 1000000] [--items 20000] [--threads N]

Scoring: the shipped scorer (`CTRScorer.score` on a candidates DataFrame, history lookup included) reads
each item's content vector from a table computed once, against running the bottom MLP over 896-d dense
features (MiniLM 384 + ViT-B-32 512) for every candidate and history item, as a model without that table would.
Both use the same random weights; the scores agree. Embedding: items per second through each encoder
(MiniLM, the tiny test CLIP, a real-size ViT-B-32 with random weights), and through the on-disk cache on a
second pass (the cost a re-run or the scorer pays).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from results import emit  # bench/ is sys.path[0] when a benchmark runs as a script

from mmrec.encoders import (
    ImageEncoder,
    ImageEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
    build_tiny_open_clip,
    embed_images,
    embed_texts,
)
from mmrec.models.ctr import CTRConfig, CTRScorer, build_model
from mmrec.models.ctr_features import Catalogue

DENSE = 384 + 512  # text_image with MiniLM and ViT-B-32


def scoring(n_candidates: int, n_items: int, per_user: int = 21, history: int = 10) -> None:
    g = np.random.default_rng(0)
    n_users = n_candidates // per_user
    item_ids = [f"i{k}" for k in range(n_items)]
    users = [f"u{k}" for k in range(n_users)]
    hist = g.integers(0, n_items, size=(n_users, history))
    examples = pd.DataFrame({"user_id": users, "stage": "test", "history": [[item_ids[i] for i in h] for h in hist]})
    candidates = pd.DataFrame({"user_id": np.repeat(users, per_user), "stage": "test",
                               "item_id": np.asarray(item_ids, dtype=object)[g.integers(0, n_items,
                                                                                        n_users * per_user)]})
    mcfg = CTRConfig(variant="text_image")
    torch.manual_seed(0)
    model = build_model(mcfg, n_users, n_items, torch.arange(n_items + 1), DENSE).eval()
    features = torch.randn(n_items + 1, DENSE)
    scorer = CTRScorer(model, Catalogue(item_ids), users, examples, history, torch.device("cpu"), mcfg.score_batch_size)

    model.features, model.content_table = features, model.build_content_table(features)
    t = time.perf_counter()
    table_scores = scorer.score(candidates)
    t_table = time.perf_counter() - t
    model.content_table = None  # every candidate's and history item's features through the bottom MLP
    sub = candidates.iloc[: len(candidates) // 10]
    t = time.perf_counter()
    mlp_scores = scorer.score(sub)
    t_mlp = (time.perf_counter() - t) * len(candidates) / len(sub)
    assert np.allclose(table_scores[: len(sub)], mlp_scores, atol=1e-4)
    rate = len(candidates) / t_table
    print(f"scoring {len(candidates):,} candidates ({n_users:,} users x {per_user}, {n_items:,} items, "
          f"history {history}):")
    print(f"  content table (shipped): {t_table:6.2f} s  {rate:12,.0f} candidates/s")
    print(f"  bottom MLP per item     : {t_mlp:6.2f} s  {len(candidates) / t_mlp:12,.0f} candidates/s "
          "(extrapolated from 10%)")
    print(f"  ratio: {t_mlp / t_table:.1f}x")
    emit("ctr", f"scoring {len(candidates):,} candidates, cached content vectors, cand/s", rate, "cand/s",
         note=f"{t_table:.2f}s")
    emit("ctr", "content table vs bottom MLP per candidate, time", t_mlp / t_table, "x")


def _rate(fn, n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def embedding(n_texts: int, n_images: int, n_big: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        texts = [f"Acme {k} sticker: a small vinyl sticker with a striped circle outline, item {k}."
                 for k in range(n_texts)]
        g = np.random.default_rng(0)
        paths = []
        for k in range(n_images):
            paths.append(root / f"{k}.png")
            Image.fromarray(g.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(paths[-1])
        encoders = [
            ("MiniLM-L6 (text)", TextEncoder(TextEncoderConfig(model="minilm")), texts, embed_texts),
            ("tiny CLIP (image)", ImageEncoder(ImageEncoderConfig(model=str(build_tiny_open_clip(root / "clip")))),
             paths, embed_images),
            ("ViT-B-32 random weights (image)", ImageEncoder(ImageEncoderConfig(model="ViT-B-32", pretrained=None)),
             paths[:n_big], embed_images),
        ]
        print("embedding items (first pass encodes, second pass reads the cache):")
        for name, encoder, inputs, embed in encoders:
            encoder.encode(inputs[:2])  # load the model outside the timing
            cache = root / "cache" / name.split()[0]
            first = _rate(lambda: embed(encoder, inputs, cache), len(inputs))
            again = _rate(lambda: embed(encoder, inputs, cache), len(inputs))
            print(f"  {name:<32} {first:10,.1f} items/s   cached {again:12,.0f} items/s ({again / first:,.0f}x)")
            emit("ctr", f"embed {name}, items/s ({encoder.device})", first, "items/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--big-images", type=int, default=64, help="images through the real-size ViT-B-32")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    scoring(args.candidates, args.items)
    embedding(args.texts, args.images, args.big_images)


if __name__ == "__main__":
    main()
