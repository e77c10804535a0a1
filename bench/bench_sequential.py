"""All-position training (one pass per sequence, a loss at every position) vs RecBole-style training (one
truncated prefix per target, a loss at its last position), same model, same data, measured side by side.

    .venv/bin/python bench/bench_sequential.py [--users 1000] [--items 2000] [--seconds 20]

Prints training targets per second for both schemes and their ratio, for SASRec and GRU4Rec at RecBole's
sizes (hidden 64, max length 50; batch 256 sequences vs RecBole's 2048 prefixes). Each scheme trains for
about `--seconds` seconds in alternating rounds (whole batches), so the numbers are rates, not epoch times.
"""
from __future__ import annotations

import argparse
import time
from typing import Iterator

import numpy as np
import torch
from results import emit  # bench/ is sys.path[0] when a benchmark runs as a script
from torch.nn import functional as F

from mmrec.batching import batches
from mmrec.models.gru4rec import GRU4Rec
from mmrec.models.sasrec import SASRec
from mmrec.models.sequential import SequentialModel, last_hidden, pad_batch, sequence_loss, windows

MAX_LEN = 50


def make_sequences(users: int, items: int, seed: int) -> list[list[int]]:
    g = np.random.default_rng(seed)
    return [g.integers(1, items + 1, size=int(g.integers(10, 90))).tolist() for _ in range(users)]


def all_position_steps(model: SequentialModel, seqs: list[list[int]], batch_size: int = 256) -> Iterator[int]:
    """Endless training steps of the all-position scheme; yields the targets each step trained on."""
    samples = [w for s in seqs for w in windows(s, MAX_LEN)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    while True:
        for sl in batches(len(samples), batch_size):
            chunk = samples[sl]
            loss = sequence_loss(model, pad_batch(chunk), "ce")
            opt.zero_grad()
            loss.backward()
            opt.step()
            yield sum(len(w) - 1 for w in chunk)


def prefix_steps(model: SequentialModel, seqs: list[list[int]], batch_size: int = 2048) -> Iterator[int]:
    """RecBole's scheme: every target is its own sample, its prefix truncated to MAX_LEN and padded to MAX_LEN."""
    samples = [(s[max(0, t - MAX_LEN):t], s[t]) for s in seqs for t in range(1, len(s))]
    order = np.random.default_rng(0).permutation(len(samples))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    while True:
        for sl in batches(len(order), batch_size):
            chunk = [samples[i] for i in order[sl]]
            batch = pad_batch([p for p, _ in chunk], MAX_LEN)
            target = torch.tensor([t for _, t in chunk]) - 1
            loss = F.cross_entropy(model.item_scores(last_hidden(model, batch)), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            yield len(chunk)


def side_by_side(steps: dict[str, Iterator[int]], seconds: float, rounds: int = 4) -> dict[str, float]:
    """Targets/s of each scheme, alternating short rounds so that a change in machine load hits both alike."""
    done = {name: 0 for name in steps}
    spent = {name: 0.0 for name in steps}
    for _ in range(rounds):
        for name, it in steps.items():
            start = time.perf_counter()
            while time.perf_counter() - start < seconds / rounds:
                done[name] += next(it)
            spent[name] += time.perf_counter() - start
    return {name: done[name] / spent[name] for name in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    seqs = make_sequences(args.users, args.items, 0)
    n_targets = sum(len(s) - 1 for s in seqs)
    print(f"{args.users} sequences, {n_targets} targets, {args.items} items, max_len {MAX_LEN}, "
          f"torch threads {torch.get_num_threads()}, ~{args.seconds:.0f} s per scheme")
    print(f"{'model':<8} {'all-position targets/s':>24} {'prefix-per-sample targets/s':>28} {'ratio':>7}")
    for name, build in (("SASRec", lambda: SASRec(args.items, MAX_LEN)), ("GRU4Rec", lambda: GRU4Rec(args.items))):
        torch.manual_seed(0)
        steps = {"all": all_position_steps(build(), seqs), "prefix": prefix_steps(build(), seqs)}
        rates = side_by_side(steps, args.seconds)
        fast, slow = rates["all"], rates["prefix"]
        print(f"{name:<8} {fast:>24.0f} {slow:>28.0f} {fast / slow:>6.1f}x")
        emit("sequential", f"{name} all-position vs prefix-per-sample training, targets/s", fast / slow, "x",
             note=f"{fast:.0f} vs {slow:.0f} targets/s")


if __name__ == "__main__":
    main()
