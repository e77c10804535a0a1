"""Candidate scoring of the students (SASRec, GRU4Rec, the CTR head) at the distillation benchmark's sizes: the
vectorised scorers (`SequentialScorer.score`, `CTRScorer.score`) against the per-user scorers they replaced, side
by side in one process.

    python bench/bench_student_scoring.py [--users 150] [--candidates 21] [--items 400] [--history 7]

Sizes default to `bench/bench_distill.py`'s test stage (150 users x 21 persisted candidates over 400 items, 7 items
of history each, max_len 50). Weights are random: the speed does not depend on training. Throughput is CPU time
(`time.process_time`) of one torch thread, best of `--repeats` passes, so it holds on a loaded machine; the
teacher's figure to compare with is bench_distill's (the tiny LLaVA, prefix-cached: 388 candidates/s there).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402  (after OMP_NUM_THREADS is set)
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from results import emit  # noqa: E402  (bench/ is sys.path[0] when a benchmark runs as a script)

from mmrec.batching import batches  # noqa: E402  (after the sys.path insert)
from mmrec.models.ctr import CTRConfig, CTRScorer, build_model  # noqa: E402  (after the sys.path insert)
from mmrec.models.ctr_features import Catalogue  # noqa: E402
from mmrec.models.gru4rec import GRU4Rec  # noqa: E402
from mmrec.models.sasrec import SASRec  # noqa: E402
from mmrec.models.sequential import (  # noqa: E402
    PAD,
    UNSEEN_SCORE,
    ItemVocab,
    SequentialModel,
    SequentialScorer,
    pad_batch,
)

TEACHER_CAND_S = 388.0  # bench/bench_distill.py, tiny LLaVA teacher, one thread (docs/distillation.md, "Measured")


class PerUserScorer:
    """The scorer before vectorisation (mmrec 53c6c39): a dict of histories, each encoded item by item at every
    call and padded to max_len, one dict lookup per candidate row and per candidate item."""

    def __init__(self, model: SequentialModel, vocab: ItemVocab, examples: pd.DataFrame, max_len: int):
        self.model, self.vocab, self.max_len, self.batch_size = model.eval(), vocab, max_len, 512
        evaluated = examples[examples["stage"] != "train"]
        self.histories = {(u, s): h for u, s, h in zip(evaluated["user_id"], evaluated["stage"], evaluated["history"])}

    @torch.no_grad()
    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        keys = list(zip(candidates["user_id"], candidates["stage"]))
        order = list(dict.fromkeys(keys))
        encoded = [self.vocab.encode(list(self.histories[k]))[-self.max_len:] for k in order]
        states = []
        for sl in batches(len(encoded), self.batch_size):
            batch = pad_batch(encoded[sl], self.max_len)
            lengths = (batch != PAD).sum(1).clamp(min=1)
            states.append(self.model(batch)[torch.arange(batch.shape[0]), lengths - 1])
        state = torch.cat(states)
        row_of = {k: i for i, k in enumerate(order)}
        rows = torch.as_tensor(np.fromiter((row_of[k] for k in keys), dtype=np.int64, count=len(keys)))
        items = np.fromiter((self.vocab.index.get(i, PAD) for i in candidates["item_id"]), dtype=np.int64,
                            count=len(keys))
        values = (state[rows] * self.model.item_embedding(torch.as_tensor(items))).sum(-1).double().numpy()
        return np.where(items == PAD, UNSEEN_SCORE, values)


class PerUserCTRScorer(CTRScorer):
    """The CTR scorer before vectorisation (mmrec 53c6c39): each call rebuilds the scored users' history rows and
    finds rows and items through pandas indexes built from Python lists."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        evaluated = args[3][args[3]["stage"] != "train"]
        self.index = pd.MultiIndex.from_arrays([evaluated["user_id"], evaluated["stage"]])
        self.histories = list(evaluated["history"])
        self.item_index = pd.Index(self.catalogue.item_ids)

    def score(self, candidates: pd.DataFrame) -> np.ndarray:
        pos = self.index.get_indexer(pd.MultiIndex.from_arrays([candidates["user_id"], candidates["stage"]]))
        uniq, group = np.unique(pos, return_inverse=True)
        hists = self.catalogue.history_rows([self.histories[i] for i in uniq], self.history_len)
        users = self.user_index.get_indexer(pd.Index(self.index.get_level_values(0)[uniq])).astype(np.int64) + 1
        cands = self.item_index.get_indexer(pd.Index(list(candidates["item_id"]))).astype(np.int64) + 1
        return self._forward(users, hists, cands, group.astype(np.int64))


def ctr_scorers(vocab: ItemVocab, examples: pd.DataFrame, unseen: str, users: int) -> tuple[Any, Any]:
    """(per-user, vectorised) scorers of one CTR head (MMREC-style sizes, id features only: scoring reads a content
    table either way) over the whole catalogue, the unseen item included."""
    items = [unseen, *vocab.item_ids]
    model = build_model(CTRConfig(variant="id_only"), users, len(items), torch.arange(len(items) + 1), 0)
    args = (model, Catalogue(items), [f"user{u}" for u in range(users)], examples, 10, torch.device("cpu"))
    return PerUserCTRScorer(*args), CTRScorer(*args)


def data(users: int, candidates: int, items: int, history: int, seed: int = 0
         ) -> tuple[ItemVocab, pd.DataFrame, pd.DataFrame]:
    """(vocabulary of all items but one, valid + test examples, the test stage's candidates): the unseen item
    appears in some histories and candidate lists, as an item left out of training does."""
    rng = np.random.default_rng(seed)
    ids = [f"item{k}" for k in range(items)]
    rows = [(f"user{u}", stage, list(rng.choice(ids, history)), ids[0])
            for stage in ("valid", "test") for u in range(users)]
    examples = pd.DataFrame(rows, columns=["user_id", "stage", "history", "target"])
    cands = pd.DataFrame([(f"user{u}", "test", item) for u in range(users)
                          for item in rng.choice(ids, candidates, replace=False)],
                         columns=["user_id", "stage", "item_id"])
    return ItemVocab(ids[1:]), examples, cands


def cpu_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Best-of-`repeats` CPU seconds of one call (after one untimed warm-up)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=150)
    parser.add_argument("--candidates", type=int, default=21)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--history", type=int, default=7)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    vocab, examples, cands = data(args.users, args.candidates, args.items, args.history)
    models = {"sasrec": SASRec(len(vocab), args.max_len), "gru4rec": GRU4Rec(len(vocab)), "ctr": None}
    print(f"{len(cands)} candidates ({args.users} users x {args.candidates}), {args.items} items, history "
          f"{args.history}, max_len {args.max_len}; CPU seconds of one torch thread, best of {args.repeats}")
    print(f"{'model':<8} {'per-user cand/s':>16} {'vectorised cand/s':>18} {'speed-up':>9} {'x teacher':>10} "
          f"{'setup ms':>9} {'max |diff|':>11}")
    for name, model in models.items():
        t0 = time.process_time()
        if model is None:
            slow, fast = ctr_scorers(vocab, examples, "item0", args.users)
        else:
            fast = SequentialScorer(model, vocab, examples, args.max_len, torch.device("cpu"))
            slow = PerUserScorer(model, vocab, examples, args.max_len)
        setup = time.process_time() - t0
        a, b = slow.score(cands), fast.score(cands)
        finite = np.isfinite(a)
        if not (np.isfinite(b) == finite).all():
            raise SystemExit(f"{name}: the two scorers disagree on which candidates are unseen")
        diff = float(np.abs(a[finite] - b[finite]).max())
        before = len(cands) / cpu_seconds(lambda: slow.score(cands), args.repeats)
        after = len(cands) / cpu_seconds(lambda: fast.score(cands), args.repeats)
        print(f"{name:<8} {before:>16,.0f} {after:>18,.0f} {after / before:>8.1f}x {after / TEACHER_CAND_S:>10,.0f} "
              f"{setup * 1e3:>9.1f} {diff:>11.1e}")
        emit("students", f"{name} candidates/s, vectorised vs per-user scorer", after / before, "x")
        emit("students", f"{name} candidates/s vs the tiny teacher's {TEACHER_CAND_S:.0f}", after / TEACHER_CAND_S,
             "x", goal=1000)
    print("setup: CPU time of building the scorers (the vectorised one encodes the histories of every valid and "
          "test user once); x teacher: against bench_distill's 388 candidates/s")


if __name__ == "__main__":
    main()
