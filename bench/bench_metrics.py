"""Metric speed: vectorised `mmrec.metrics` vs a straightforward per-user loop, side by side in one run.

    python bench/bench_metrics.py [--users 1000000] [--candidates 101] [--loop-users 5000] [--seed 0]

Random scores (rounded so ties occur, and 0.1% NaN) with one positive per user, as in the sampled protocol.
Prints seconds and users/s for the vectorised path on all users (top-K metrics + GAUC, then global AUC
separately) and for the loop on a subset, the ratio of their rates, and checks both give the same numbers.
Rates use CPU time of this process (wall time is shown too): on a shared machine wall time mostly measures
the neighbours.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
from results import emit  # bench/ is sys.path[0] when a benchmark runs as a script

from mmrec.metrics import evaluate_matrix, global_auc

KS = (1, 5, 10, 20)


def loop_metrics(scores: np.ndarray, labels: np.ndarray, ks=KS) -> dict[str, float]:
    """The obvious implementation: per user, rank the positive (expected rank over ties), then each metric."""
    sums = {f"{m}@{k}": 0.0 for m in ("hr", "ndcg", "mrr") for k in ks}
    for s, lab in zip(scores, labels):
        t = s[lab][0]
        neg = s[~lab]
        if math.isnan(t):
            above, tied = len(neg), 0
        else:
            valid = neg[~np.isnan(neg)]
            above, tied = int((valid > t).sum()), int((valid == t).sum())
        for k in ks:
            ranks = range(above + 1, above + tied + 2)  # uniform over the tie group
            sums[f"hr@{k}"] += sum(r <= k for r in ranks) / (tied + 1)
            sums[f"ndcg@{k}"] += sum(1 / math.log2(r + 1) for r in ranks if r <= k) / (tied + 1)
            sums[f"mrr@{k}"] += sum(1 / r for r in ranks if r <= k) / (tied + 1)
    return {k: v / len(scores) for k, v in sums.items()}


class Timer:
    """Wall and CPU seconds of a block."""

    def __enter__(self) -> "Timer":
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c

    def line(self, label: str, users: int) -> str:
        return f"{label:<28}: {self.cpu:7.2f} s cpu ({self.wall:6.2f} s wall)  {users / self.cpu:12,.0f} users/s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--candidates", type=int, default=101)
    ap.add_argument("--loop-users", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    gen = np.random.default_rng(args.seed)
    scores = np.round(gen.random((args.users, args.candidates)), 3)
    scores[gen.random(scores.shape) < 0.001] = np.nan
    labels = np.zeros(scores.shape, dtype=bool)
    labels[np.arange(args.users), gen.integers(0, args.candidates, args.users)] = True
    print(f"{args.users:,} users x {args.candidates} candidates, K = {list(KS)}")

    with Timer() as vec:
        ev = evaluate_matrix(scores, labels, ks=KS, metrics=["hr", "ndcg", "mrr", "recall", "precision", "gauc"])
    print(vec.line("vectorised top-K + GAUC", args.users)
          + f"  (tie rate {ev.counts['tie_rate']:.3f}, invalid {ev.counts['invalid_rate']:.4f})")
    with Timer() as auc:
        global_auc(labels.ravel(), scores.ravel())
    print(auc.line("global AUC (pooled)", args.users))
    n = min(args.loop_users, args.users)
    with Timer() as loop:
        ref = loop_metrics(scores[:n], labels[:n])
    print(loop.line(f"per-user loop ({n:,} users)", n))
    speedup = (args.users / vec.cpu) / (n / loop.cpu)
    print(f"speed-up of the vectorised path over the loop: {speedup:.1f}x")
    emit("metrics", f"vectorised vs per-user loop ({args.users:,} users x {args.candidates})", speedup, "x")
    emit("metrics", f"seconds for {args.users:,} users x {args.candidates} (top-K + GAUC, CPU)", vec.cpu, "s",
         goal=10.0, higher_is_better=False)

    sub = evaluate_matrix(scores[:n], labels[:n], ks=KS, metrics=["hr", "ndcg", "mrr"]).summary
    worst = max(abs(sub[k] - v) for k, v in ref.items())
    print(f"max |vectorised - loop| on the subset: {worst:.2e}")
    if worst > 1e-9:
        raise SystemExit("mismatch between the vectorised metrics and the loop")


if __name__ == "__main__":
    main()
