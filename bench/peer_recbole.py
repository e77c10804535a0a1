"""Peer check: RecBole 1.2.1 itself and mmrec on one mmrec split, metrics side by side.

    python bench/peer_recbole.py SPLIT_DIR [--out DIR] [--seeds 0 1 2] [--epochs 30] [--models pop gru4rec sasrec]

1. Creates RecBole's own virtual environment (`--venv`, default bench/.recbole-venv) once:
   recbole==1.2.1 with numpy<2, scipy<1.12, setuptools<81, pandas<3 and torch==2.14.1 (RecBole 1.2.1 does not run
   on numpy 2 or pandas 3; its Ray import needs pkg_resources). Its checkpoints are reloaded with
   TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1. mmrec's environment is never touched.
2. Exports the split with `eval.recbole_export` (RecBole's pre-split benchmark files = exactly our examples).
3. Trains Pop, GRU4Rec and SASRec in both toolkits with the same settings (sizes, lr, epochs, patience,
   CE loss, max length, seeds, optimizer steps per epoch) and evaluates the test stage by full ranking.
4. Prints one table: each metric for both toolkits (mean and standard deviation over seeds), the difference,
   whether it is within seed noise, and every protocol difference that remains, by name.

The protocols are made identical where they can be: full ranking over the catalogue, history not masked for the
sequential models (RecBole never masks them) and masked for Pop (RecBole masks a general model's train + valid
items at test, mmrec's `mask_history` the whole pre-target history: the same set under leave-one-out). RecBole's
Pop is trained with batches of one interaction, so its once-per-batch count update gives exact counts.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RECBOLE_PINS = ["recbole==1.2.1", "numpy<2", "scipy<1.12", "setuptools<81", "pandas<3", "torch==2.14.1"]
RECBOLE_NAMES = {"pop": "Pop", "gru4rec": "GRU4Rec", "sasrec": "SASRec"}
METRICS = ["hr@10", "ndcg@10", "mrr@10"]
RB_METRIC = {"hr@10": "hit@10", "ndcg@10": "ndcg@10", "mrr@10": "mrr@10"}
EXPORT_NAME = "mmrec_peer"  # not one of RecBole's bundled names (e.g. ml-100k), which it would silently replace


def ensure_venv(venv: Path) -> Path:
    """RecBole's interpreter, creating its environment on first use (pip output is shown)."""
    python = venv / "bin" / "python"
    if python.is_file() and _recbole_version(python) == "1.2.1":
        return python
    print(f"[peer] creating RecBole's environment in {venv} (once; several minutes)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check", *RECBOLE_PINS], check=True)
    if _recbole_version(python) != "1.2.1":
        sys.exit(f"[peer] {venv}: recbole 1.2.1 did not install; see pip's output above")
    return python


def _recbole_version(python: Path) -> str | None:
    out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('recbole'))"],
                         capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else None


def mmrec_cli(*args: Any, log: Path) -> None:
    """Run `mmrec ARGS` in a subprocess (this checkout first on the path); its output goes to `log`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with log.open("a") as fh:
        fh.write(f"$ mmrec {' '.join(map(str, args))}\n")
        fh.flush()
        done = subprocess.run([sys.executable, "-m", "mmrec", *map(str, args)], stdout=fh, stderr=fh, env=env,
                              check=False)
    if done.returncode:
        sys.exit(f"[peer] `mmrec {' '.join(map(str, args))}` failed; see {log}")


def mmrec_side(split: Any, split_dir: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate mmrec's models on the split; per model: metrics per seed and facts for the table."""
    import yaml

    from mmrec.experiment import ExperimentPaths
    from mmrec.io import read_json

    exp = out / "mmrec"
    link = exp / "exp" / "splits" / split.config.dir_name
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(split_dir.resolve(), target_is_directory=True)
    models = {"pop": {"kind": "pop"}}
    for name in ("gru4rec", "sasrec"):
        models[name] = {"kind": name, "lr": args.lr, "epochs": args.epochs, "patience": args.patience,
                        "batch_size": args.batch_size, "max_len": args.max_len, "loss": "ce", "device": "cpu"}
    cfg = {"experiment": {"dir": str(exp / "exp"), "seed": args.seeds[0], "seeds": list(args.seeds)},
           "data": {"path": str(split.dataset_dir)}, "split": split.info["config"],
           "models": {m: models[m] for m in args.models},
           "eval": {"ks": [10], "metrics": ["hr", "ndcg", "mrr"], "stages": ["test"], "protocol": "full"}}
    cfg_path = exp / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    paths, log = ExperimentPaths(exp / "exp"), exp / "mmrec.log"
    results: dict[str, Any] = {}
    for name in args.models:
        mask = f"eval.mask_history={'true' if name == 'pop' else 'false'}"
        t0 = time.perf_counter()
        seeds = ["--seeds", *args.seeds]
        mmrec_cli("finetune", cfg_path, "--model", name, *seeds, log=log)
        mmrec_cli("score", cfg_path, mask, "--model", name, *seeds, log=log)
        per_policy: dict[str, list[dict[str, float]]] = {}
        for policy in ("expected", "pessimistic", "optimistic"):
            mmrec_cli("eval", cfg_path, mask, f"eval.tie_policy={policy}", "--model", name, *seeds, log=log)
            per_policy[policy] = [read_json(paths.metrics(f"{name}@seed{s}"))["metrics"]["test"] for s in args.seeds]
        runs = [paths.checkpoint(f"{name}@seed{s}") / "run.json" for s in args.seeds]
        epochs = [(r.get("best_epoch"), r.get("epochs_run")) for r in map(read_json, runs) if name != "pop"]
        results[name] = {"seeds": per_policy["expected"], "pessimistic": per_policy["pessimistic"], "epochs": epochs,
                         "optimistic": per_policy["optimistic"], "wall_s": time.perf_counter() - t0,
                         "items": _catalogue_size(paths, name, args.seeds[0]), "users": len(split.examples_for("test"))}
        print(f"[peer] mmrec {name}: done in {results[name]['wall_s']:.0f} s", flush=True)
    return results


def _catalogue_size(paths: Any, name: str, seed: int) -> int | None:
    import pandas as pd

    ranks = paths.scores(f"{name}@seed{seed}").with_name(f"{name}@seed{seed}.full.parquet")
    if not ranks.is_file():
        return None
    df = pd.read_parquet(ranks, columns=["n_ranked", "n_masked"])
    return int((df["n_ranked"] + df["n_masked"]).max())


def recbole_side(python: Path, split: Any, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train and evaluate RecBole's models on the exported split, one child process per model and seed."""
    from eval.recbole_export import export_recbole

    data = out / "recbole_data"
    if not (data / EXPORT_NAME / "export.json").is_file():
        export_recbole(split, data, EXPORT_NAME, max_history=args.max_len)
    info = json.loads((data / EXPORT_NAME / "export.json").read_text())
    yaml_file = data / EXPORT_NAME / f"{EXPORT_NAME}.yaml"
    train = info["stages"]["train"]
    # mmrec's batch counts sequences, RecBole's prefixes: the same optimizer steps per epoch
    prefixes_per_batch = max(1, round(args.batch_size * train["rows"] / max(train["examples"], 1)))
    common = {"seed": None, "reproducibility": True, "use_gpu": False, "show_progress": False, "topk": [10],
              "metrics": ["Hit", "NDCG", "MRR"], "valid_metric": "NDCG@10", "metric_decimal_place": 8,
              "eval_batch_size": 1024, "worker": 0, "state": "INFO"}
    results: dict[str, Any] = {}
    for name in args.models:
        model = RECBOLE_NAMES[name]
        if name == "pop":  # a general model: RecBole's own leave-one-out on the .inter file (timestamps = positions)
            cfg = {**common, "epochs": 1, "train_batch_size": 1, "benchmark_filename": None,
                   "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "train_neg_sample_args": None,
                   "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"}}
        else:
            cfg = {**common, "epochs": args.epochs, "stopping_step": args.patience, "learning_rate": args.lr,
                   "train_batch_size": prefixes_per_batch, "MAX_ITEM_LIST_LENGTH": args.max_len, "loss_type": "CE",
                   "train_neg_sample_args": None}
        runs = []
        t0 = time.perf_counter()
        for seed in args.seeds:
            job = {"model": model, "dataset": EXPORT_NAME, "config_files": [str(yaml_file)], "threads": args.threads,
                   "config": {**cfg, "seed": seed, "checkpoint_dir": str(out / "recbole_ckpt" / f"{name}_{seed}"),
                              "data_path": str(data)}}
            log = out / f"recbole_{name}_seed{seed}.log"
            with log.open("w") as fh:
                done = subprocess.run([str(python), str(Path(__file__).with_name("recbole_child.py")), json.dumps(job)],
                                      stdout=fh, stderr=subprocess.STDOUT, cwd=out,
                                      env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "PYTHONPATH": ""},
                                      check=False)
            lines = [ln for ln in log.read_text().splitlines() if ln.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.exit(f"[peer] RecBole {model} (seed {seed}) failed; see {log}")
            runs.append(json.loads(lines[-1][len("RESULT "):]))
            text = log.read_text()
            best = re.search(r"best eval result in epoch (\d+)", text)
            runs[-1]["epochs"] = (int(best.group(1)) + 1 if best else None,  # RecBole counts epochs from 0
                                  len(re.findall(r"epoch \d+ training", text)))
        results[name] = {"seeds": [{m: r["test"][RB_METRIC[m]] for m in METRICS} for r in runs],
                         "items": runs[0]["items"], "users": runs[0]["test_rows"],
                         "epochs": [r["epochs"] for r in runs] if name != "pop" else [],
                         "wall_s": time.perf_counter() - t0, "train_batch_size": cfg["train_batch_size"]}
        print(f"[peer] RecBole {model}: done in {results[name]['wall_s']:.0f} s", flush=True)
    return results


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def noise(ours: list[float], theirs: list[float], n_users: int) -> float:
    """Half-width of 'within seed noise': twice the combined standard error of the two seed means; with one seed,
    twice the binomial standard error of a hit rate over the test users (a stand-in for the seed spread)."""
    if len(ours) > 1 and len(theirs) > 1:
        return 2 * math.sqrt(statistics.variance(ours) / len(ours) + statistics.variance(theirs) / len(theirs)) + 1e-9
    p = min(max(statistics.fmean(ours + theirs), 1e-3), 1 - 1e-3)
    return 2 * math.sqrt(2 * p * (1 - p) / max(n_users, 1))


def _pairs(epochs: list[Any]) -> str:
    return ", ".join(f"{b}/{r}" for b, r in epochs) or "-"


def differences(name: str, ours: dict[str, Any], theirs: dict[str, Any]) -> list[str]:
    """The protocol differences that remain for one model, by name."""
    out = []
    if ours["items"] is not None and ours["items"] != theirs["items"]:
        out.append(f"catalogue: mmrec ranks {ours['items']} items, RecBole {theirs['items']} (every item in its files)")
    if ours["users"] is not None and ours["users"] != theirs["users"]:
        out.append(f"test rows: mmrec {ours['users']}, RecBole {theirs['users']}")
    if name == "pop":
        out.append("ties: mmrec keeps them (expected rank; pessimistic/optimistic bounds checked), "
                   "RecBole's torch.topk order picks one")
    else:
        out.append("training: mmrec each sequence once with a loss at every position, RecBole one prefix per target "
                   f"(batch {theirs['train_batch_size']} prefixes = the same steps per epoch)")
        out.append("model selection: mmrec early-stops on its own validation protocol (run.json), RecBole on full-"
                   "ranking valid NDCG@10")
        out.append("initial weights and dropout draws: same equations (tests/test_recbole_layers.py), other random "
                   "streams")
        out.append(f"epochs (best, run) per seed: mmrec {_pairs(ours['epochs'])}, RecBole {_pairs(theirs['epochs'])}")
    return out


def table(ours: dict[str, Any], theirs: dict[str, Any], seeds: list[int]) -> tuple[str, bool]:
    header = (f"| model | metric | mmrec (mean ± sd, {len(seeds)} seed(s)) | RecBole 1.2.1 | difference | "
              "within noise |")
    lines = [header, "|---|---|---:|---:|---:|---|"]
    all_ok = True
    notes = []
    for name in ours:
        for metric in METRICS:
            a = [r[metric] for r in ours[name]["seeds"]]
            b = [r[metric] for r in theirs[name]["seeds"]]
            (ma, sa), (mb, sb) = _mean_sd(a), _mean_sd(b)
            if name == "pop":  # deterministic but for ties: RecBole's value must lie within mmrec's tie bounds
                lo = min(r[metric] for r in ours[name]["pessimistic"])
                hi = max(r[metric] for r in ours[name]["optimistic"])
                ok = lo - 1e-6 <= mb <= hi + 1e-6
                verdict = f"{'yes' if ok else 'NO'} (tie bounds {lo:.4f}-{hi:.4f})"
            else:
                half = noise(a, b, ours[name]["users"] or theirs[name]["users"])
                ok = abs(ma - mb) <= half
                verdict = f"{'yes' if ok else 'NO'} (±{half:.4f})"
            all_ok &= ok
            lines.append(f"| {name} | {metric} | {ma:.4f} ± {sa:.4f} | {mb:.4f} ± {sb:.4f} | {ma - mb:+.4f} | "
                         f"{verdict} |")
        notes += [f"- {name}: {d}" for d in differences(name, ours[name], theirs[name])]
    return "\n".join(lines + ["", "Protocol differences that remain:", *notes]), all_ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("split", type=Path, help="an mmrec split directory (from `mmrec split`; loo for Pop)")
    parser.add_argument("--out", type=Path, default=None, help="work directory (default: SPLIT/peer_recbole)")
    parser.add_argument("--venv", type=Path, default=Path(__file__).resolve().parent / ".recbole-venv")
    parser.add_argument("--models", nargs="+", default=["pop", "gru4rec", "sasrec"], choices=list(RECBOLE_NAMES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64, help="mmrec sequences per batch (RecBole: prefixes, "
                                                                    "scaled to the same steps per epoch)")
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each RecBole process")
    args = parser.parse_args(argv)

    from mmrec.data.splits import load_split

    split = load_split(args.split)
    if "pop" in args.models and split.info["protocol"] != "loo":
        sys.exit("[peer] Pop is compared through RecBole's own leave-one-out split: needs a loo split "
                 "(or leave pop out with --models gru4rec sasrec)")
    out = (args.out or args.split / "peer_recbole").resolve()
    out.mkdir(parents=True, exist_ok=True)
    python = ensure_venv(args.venv.resolve())
    theirs = recbole_side(python, split, out, args)
    ours = mmrec_side(split, args.split, out, args)
    text, ok = table(ours, theirs, args.seeds)
    print(text)
    (out / "peer_table.md").write_text(text + "\n")
    (out / "peer_results.json").write_text(json.dumps({"mmrec": ours, "recbole": theirs}, indent=1))
    print(f"[peer] {'all rows within noise' if ok else 'some rows differ beyond noise'}; table in {out}/peer_table.md")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
