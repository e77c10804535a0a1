"""A small hand-built experiment directory for the report tests: dataset with images (one corrupt, one missing),
a split, metrics of three runs (one model over two seeds), scores, summaries and a training log."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from PIL import Image

from mmrec.data.canonical import write_tables
from mmrec.experiment import ExperimentPaths
from mmrec.io import write_json, write_parquet

SPLIT = "loo"
ITEMS = [f"i{k}" for k in range(10)]
# user -> sequence (leave-one-out: last item test target, second to last valid target)
USERS = {"u1": ["i0", "i1", "i2", "i3"], "u2": ["i4", "i5", "i6"], "u3": ["i7", "i8", "i0", "i1", "i2"]}
# run -> metrics on the test stage (values chosen so the table cells are easy to check by hand)
METRICS = {
    "pop": {"hr@1": 0.25, "hr@3": 0.5, "ndcg@1": 0.25, "ndcg@3": 0.4, "auc": 0.55, "gauc": 0.5,
            "tie_rate": 0.1, "invalid_rate": 0.0},
    "sasrec@seed0": {"hr@1": 0.5, "hr@3": 1.0, "ndcg@1": 0.5, "ndcg@3": 0.8, "auc": 0.9, "gauc": 0.9,
                     "tie_rate": 0.0, "invalid_rate": 0.0},
    "sasrec@seed1": {"hr@1": 0.7, "hr@3": 1.0, "ndcg@1": 0.7, "ndcg@3": 0.9, "auc": 0.8, "gauc": 0.85,
                     "tie_rate": 0.0, "invalid_rate": 0.25},
}
# run -> per-user NDCG@3 of u1, u2, u3 (the per-user file `mmrec eval` writes beside the metrics)
PER_USER = {"pop": [0.5, 0.0, 1.0], "sasrec@seed0": [1.0, 0.5, 1.0], "sasrec@seed1": [1.0, 1.0, 0.5]}
COLORS = ["red", "green", "blue", "orange", "purple", "cyan", "yellow", "gray"]


def make_dataset(root: Path) -> None:
    (root / "images").mkdir(parents=True)
    rows = []
    for k, item in enumerate(ITEMS):
        image = f"images/{item}.png"
        if k < len(COLORS):
            Image.new("RGB", (40 + 10 * k, 30), COLORS[k]).save(root / image)
        elif k == 8:
            (root / image).write_bytes(b"not an image")  # corrupt: shown as 'no image', counted in the notes
        else:
            image = None
        rows.append({"item_id": item, "title": f"Item <{k}> & co", "text": "", "image": image})
    inter = [{"user_id": u, "item_id": i, "timestamp": t, "rating": None}
             for u, seq in USERS.items() for t, i in enumerate(seq)]
    write_tables(root, pd.DataFrame(rows), pd.DataFrame(inter))


def make_split(split_dir: Path, dataset_dir: Path) -> pd.DataFrame:
    """A real leave-one-out split with 3 sampled negatives per example; returns its candidates."""
    from mmrec.data.splits import SplitConfig
    from mmrec.data.splits import make_split as split

    return split(dataset_dir, SplitConfig(protocol="loo", negatives=3, valid_negatives=3), split_dir).candidates


# run -> (candidates, CPU seconds) its scoring recorded: pop 100,000 cand/s; sasrec pooled 6000 / 0.006 = 1,000,000
THROUGHPUT = {"pop": (1000, 0.01), "sasrec@seed0": (3000, 0.002), "sasrec@seed1": (3000, 0.004)}


def make_scores(paths: ExperimentPaths, candidates: pd.DataFrame, run: str, bonus: float) -> None:
    """The target scores 0.5 + `bonus`, a user's j-th negative 0.6 - 0.1 j; sasrec@seed1 has one NaN (invalid).
    The metadata records the run's THROUGHPUT as `mmrec score` does."""
    from eval.score_cli import write_with_meta
    from eval.throughput import THROUGHPUT_KEY

    df = candidates[["user_id", "stage", "item_id", "label"]].copy()
    j = df.groupby(["user_id", "stage", "label"]).cumcount()  # j-th negative, wherever the target sits
    df["score"] = (0.5 + bonus) * df["label"] + (0.6 - 0.1 * j) * (1 - df["label"])
    if run == "sasrec@seed1":
        df.loc[df.index[1], "score"] = float("nan")
    n, cpu = THROUGHPUT[run]
    speed = {"candidates": n, "cpu_s": cpu, "wall_s": 2 * cpu, "resumed_candidates": 0, "torch_threads": 1,
             "device": "cpu"}
    write_with_meta(df.drop(columns="label"), paths.scores(run), {THROUGHPUT_KEY: speed})


def make_experiment(root: Path, *, summaries: bool = True, logs: bool = True) -> ExperimentPaths:
    paths = ExperimentPaths(root)
    make_dataset(paths.dataset)
    candidates = make_split(paths.split(SPLIT), paths.dataset)
    for run, metrics in METRICS.items():
        seed = int(run.split("seed")[1]) if "@seed" in run else 0
        manifest = {"run": run, "split": {"name": SPLIT}, "tie_policy": "expected",
                    "protocol": {"name": "sampled", "candidates_sha256": "c0ffee" * 4},
                    "seeds": {"experiment": seed}, "versions": {"torch": "2.x", "mmrec": "0.1"}}
        write_json({"run": run, "stage": "test", "metrics": metrics, "manifest": manifest}, paths.metrics(run))
        make_scores(paths, candidates, run, bonus=0.0 if run == "pop" else 0.3)
        write_parquet(pd.DataFrame({"user_id": list(USERS), "stage": "test", "ndcg@3": PER_USER[run]}),
                      paths.metrics(run).with_name(f"{run}.per_user.parquet"))
    if summaries:
        write_parquet(pd.DataFrame({"item_id": ITEMS, "summary": [f"A photo of thing {k} <img>" for k in range(10)]}),
                      paths.item_summaries)
        write_parquet(pd.DataFrame({"user_id": list(USERS), "stage": ["test"] * 3,
                                    "preference": [f"likes {u}" for u in USERS],
                                    "steps": [[f"{u} step {s}" for s in range(1, 3)] for u in USERS]}),
                      paths.user_summaries)
    if logs:
        log = paths.checkpoint("sasrec@seed0") / "train_log.jsonl"
        log.parent.mkdir(parents=True)
        lines = [json.dumps({"epoch": e, "step": 10 * e, "loss": 1.0 / (e + 1), "valid_ndcg@10": 0.1 * e,
                             "epoch_seconds": 2.0, "examples_per_second": 500.0})
                 for e in range(5)]
        log.write_text("\n".join(lines) + '\n{"epoch": 5, "lo')  # torn last line from a crash: skipped
    return paths
