"""Do the default GRU4Rec / SASRec settings train to convergence? Early stopping must fire before the epoch cap.

    .venv/bin/python bench/bench_convergence.py [--shapes synthetic ml-100k ml-1m] [--models gru4rec sasrec]
        [--work DIR] [--set key=value ...] [--device auto]

For each dataset shape it generates the synthetic benchmark (`data_prep/synthetic.py`: users with drifting tastes,
Zipf-like popularity) with that shape's users, items and mean sequence length, splits it leave-one-out (100
sampled validation/test negatives; 20 for `synthetic`), trains each model with its **default** settings (plus
`--set` overrides, e.g. `--set batch_size=256 epochs=50` for the old defaults), and prints per model: batch size,
optimizer steps per epoch, epochs run, best epoch, whether early stopping fired, mean seconds per epoch and the best
validation NDCG@10. Shapes: `synthetic` = configs/baselines/synthetic.yaml's 800 users x 120 items x 20 per user;
`ml-100k` = 943 x 1682 x 106 and `ml-1m` = 6040 x 3706 x 165 (MovieLens' sizes; the interactions are
synthetic, so only the shape - and thus steps per epoch - matches). Seconds depend on the machine's load.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results import emit  # noqa: E402  bench/ is sys.path[0] when a benchmark runs as a script

from data_prep import synthetic  # noqa: E402
from finetune.sequential import train  # noqa: E402
from mmrec.data.splits import SplitConfig, make_split  # noqa: E402
from mmrec.experiment import ExperimentConfig  # noqa: E402

SHAPES = {"synthetic": (800, 120, 20), "ml-100k": (943, 1682, 106), "ml-1m": (6040, 3706, 165)}
NEGATIVES = {"synthetic": 20}  # sampled validation/test negatives (100 unless listed; 120 items leave too few)


def dataset(work: Path, shape: str, seed: int = 0) -> Path:
    """The generated dataset of `shape` and its leave-one-out split (reused when already in `work`)."""
    users, items, per_user = SHAPES[shape]
    out = work / shape
    if not (out / "splits" / "loo" / "split.json").is_file():
        options = synthetic.SyntheticOptions(users=users, items=items, interactions_per_user=float(per_user),
                                             seed=seed)
        synthetic.run(options, out)
        split = SplitConfig(protocol="loo", negatives=NEGATIVES.get(shape, 100), seed=seed)
        make_split(out, split, out / "splits" / "loo")
    return out / "splits" / "loo"


def converge(work: Path, split_dir: Path, shape: str, model: str, overrides: dict, device: str) -> dict:
    root = work / f"exp-{shape}-{model}"
    (root / "splits").mkdir(parents=True, exist_ok=True)
    if not (root / "splits" / "loo").exists():
        (root / "splits" / "loo").symlink_to(split_dir.resolve(), target_is_directory=True)
    cfg = ExperimentConfig.from_mapping(
        {"experiment": {"dir": str(root), "seed": 0}, "split": {"protocol": "loo", "name": "loo"},
         "models": {model: {"kind": model, "device": device, **overrides}}}, source=f"bench {shape} {model}")
    out = train(cfg, model, root / "ckpt" / model, resume=False)
    run = json.loads((out / "run.json").read_text())
    return {"shape": shape, "model": model, "batch": run["batch_size"], "steps/epoch": run["steps_per_epoch"],
            "cap": run["config"]["epochs"], "epochs": run["epochs_run"], "best epoch": run["best_epoch"],
            "stopped early": run["stopped_early"], "s/epoch": run["epoch_seconds_mean"],
            "valid ndcg@10": round(run["best"], 4)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", default=["synthetic", "ml-100k"], choices=list(SHAPES))
    p.add_argument("--models", nargs="+", default=["gru4rec", "sasrec"], choices=["gru4rec", "sasrec"])
    p.add_argument("--work", type=Path, default=None, help="keep datasets and runs here (default: a temp dir)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model settings over the defaults")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args()
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = int(value) if value.isdigit() else value
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        rows = []
        for shape in args.shapes:
            split_dir = dataset(work, shape)
            for model in args.models:
                rows.append(converge(work, split_dir, shape, model, overrides, args.device))
                print(json.dumps(rows[-1]), flush=True)
                emit("convergence", f"{shape} {model}: early stopping fired (1 = yes)",
                     float(rows[-1]["stopped early"]), "", goal=1.0,
                     note=f"{rows[-1]['epochs']} of {rows[-1]['cap']} epochs, best {rows[-1]['best epoch']}")
    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


if __name__ == "__main__":
    main()
