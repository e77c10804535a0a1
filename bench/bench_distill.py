"""Distillation on the synthetic benchmark: teacher (the tiny LLaVA recipe), plain and distilled students, test
AUC and NDCG@10 over seeds, the share of the teacher-student gap closed, and each model's CPU candidates/s.

    python bench/bench_distill.py [--config configs/distill/synthetic.yaml] [--seeds 0 1 2]

Runs the config's stages through the CLI (each resumes or skips finished work): the teacher is trained once
(`distill.teacher_run`), its signals are scored once, every student trains and scores once per seed. Throughput is
CPU time per test candidate on one thread, measured side by side in this process (`time.process_time`), so it
holds on a loaded machine: the teacher's prefix-cached batched scorer against each student's scorer.
Prerequisites (the tiny model and the data) are in the config's header.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402  (after OMP_NUM_THREADS is set)
from results import emit  # noqa: E402  (bench/ is sys.path[0] when a benchmark runs as a script)

from mmrec.cli import main as mmrec  # noqa: E402  (after the sys.path insert)
from mmrec.distill.summary import gap_summary  # noqa: E402
from mmrec.experiment import ExperimentConfig, ExperimentPaths  # noqa: E402
from mmrec.io import read_json  # noqa: E402

METRICS = ("auc", "ndcg@10")
PAIRS = (("sasrec", "sasrec_distill"), ("gru4rec", "gru4rec_distill"))


def cli(*args: str) -> None:
    code = mmrec([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"`mmrec {' '.join(args)}` failed (exit {code})")


def metrics(paths: ExperimentPaths, run: str) -> dict[str, float]:
    m = read_json(paths.metrics(run))["metrics"]["test"]
    return {k: float(m[k]) for k in METRICS}


def cpu_per_candidate(scorer, candidates, repeats: int) -> float:
    """Best-of-`repeats` CPU seconds per candidate row of one scoring pass."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        scorer.score(candidates)
        best = min(best, time.process_time() - t0)
    return best / len(candidates)


def catalogue_per_candidate(scorer, examples, repeats: int) -> float:
    """Best-of-`repeats` CPU seconds per (user, item) when the student ranks the whole catalogue for each user
    (one forward per user and one matrix product): how a student serves."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        scorer.score_catalogue(examples)
        best = min(best, time.process_time() - t0)
    return best / (len(examples) * len(scorer.item_ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs/distill/synthetic.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = ExperimentConfig.load(args.config)
    paths = cfg.paths
    students = [m for pair in PAIRS for m in pair if m in cfg.model_names()]
    seeds = [str(s) for s in args.seeds]

    cli("run", args.config, "--only", "prep", "--only", "split")
    cli("finetune", args.config, "--model", "teacher")
    distilled = [m for m in students if getattr(cfg.model(m), "distill", None) is not None]
    cli("distill-signals", args.config, *[a for m in distilled for a in ("--model", m)], "--seeds", *seeds)
    cli("finetune", args.config, *[a for m in students for a in ("--model", m)], "--seeds", *seeds)
    cli("score", args.config, "--model", "teacher")
    cli("score", args.config, *[a for m in students for a in ("--model", m)], "--seeds", *seeds)
    cli("eval", args.config, "--model", "teacher")
    cli("eval", args.config, *[a for m in students for a in ("--model", m)], "--seeds", *seeds)

    # Throughput: CPU seconds per test candidate, the teacher and each student scoring the same rows.
    from finetune.cli import RECIPES  # noqa: F401  (kinds are registered with their recipes)
    from mmrec.data.splits import load_split
    from mmrec.models.vlm_build import scorer_from_checkpoint

    split = load_split(cfg.split_dir)
    cands = split.candidates[split.candidates["stage"] == "test"].reset_index(drop=True)
    teacher_rows = cands.iloc[: min(len(cands), 21 * 40)]  # 40 users: the teacher is slow
    teacher = scorer_from_checkpoint(cfg, "teacher", paths.checkpoint("teacher"))
    speed = {"teacher": 1.0 / cpu_per_candidate(teacher, teacher_rows, 1)}
    catalogue: dict[str, float] = {}
    test_examples = split.examples[split.examples["stage"] == "test"]
    import importlib

    from mmrec.experiment import MODEL_KINDS
    for m in students:
        run_cfg = cfg.with_overrides([f"experiment.seed={seeds[0]}"])
        module = importlib.import_module(MODEL_KINDS[cfg.model(m).kind].split(":")[0])
        scorer = module.load_scorer(run_cfg, m, paths.checkpoint(f"{m}@seed{seeds[0]}"))
        speed[m] = 1.0 / cpu_per_candidate(scorer, cands, 5)
        catalogue[m] = 1.0 / catalogue_per_candidate(scorer, test_examples, 5)

    t = metrics(paths, "teacher")
    print(f"\nTest stage, {len(cands)} candidates ({cands['user_id'].nunique()} users), sampled protocol; "
          f"students over seeds {', '.join(seeds)}; teacher trained once.")
    print("cand/s: CPU seconds of one torch thread per test candidate; catalogue: per (user, item) when ranking all "
          "items per test user")
    print(f"{'model':<18} {'AUC':>15} {'NDCG@10':>15} {'cand/s':>10} {'x teacher':>10} {'catalogue/s':>12} "
          f"{'x teacher':>10}")
    print(f"{'teacher':<18} {t['auc']:>15.4f} {t['ndcg@10']:>15.4f} {speed['teacher']:>10.1f} {1.0:>10.1f}")
    from mmrec.metrics import mean_ci

    per = {m: [metrics(paths, f"{m}@seed{s}") for s in seeds] for m in students}
    for m in students:
        cells = [mean_ci([r[k] for r in per[m]]) for k in METRICS]
        text = " ".join(f"{c[0]:>7.4f} ± {c[1]:<5.3f}" for c in cells)
        print(f"{m:<18} {text} {speed[m]:>10.0f} {speed[m] / speed['teacher']:>10.0f} {catalogue[m]:>12.0f} "
              f"{catalogue[m] / speed['teacher']:>10.0f}")
    print("\nShare of the plain student's gap to the teacher closed by distillation (mean ± 95% CI over seeds):")
    for plain, dist in PAIRS:
        if plain not in per or dist not in per:
            continue
        for k in METRICS:
            g = gap_summary([t[k]], [r[k] for r in per[plain]], [r[k] for r in per[dist]])
            seeds_text = ", ".join(f"{x:.2f}" for x in g["per_seed"])
            print(f"  {dist:<16} {k:<8} {g['mean']:.3f} ± {g['ci95']:.3f}  (per seed: {seeds_text})")
            emit("distill", f"{dist} gap closed ({k})", g["mean"], "share", goal=0.5 if plain == "sasrec" else None,
                 note=f"± {g['ci95']:.3f} over {g['n']} seeds")
        emit("distill", f"{dist} candidates/s vs teacher", speed[dist] / speed["teacher"], "x", goal=1000)
        emit("distill", f"{dist} catalogue candidates/s vs teacher", catalogue[dist] / speed["teacher"], "x",
             goal=1000)


if __name__ == "__main__":
    main()
