"""Every benchmark of mmrec in one run, printed as one table of figures with their goals.

    python bench/run_all.py            # CPU sizes (about 9 minutes on 2 shared cores)
    python bench/run_all.py --gpu      # the same scripts at GPU sizes (larger models, bf16, random weights; needs CUDA)
    python bench/run_all.py --only scoring metrics

Each benchmark is a standalone script in bench/ that measures mmrec and the reference approach side by side in
one process and prints its own details; here each runs in its own process (so peak memory is its own) and its
headline figures (see bench/results.py) are gathered into the table. Ratios are the point: absolute seconds
depend on the machine and on whatever else it runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, CPU arguments, GPU arguments). CPU sizes keep the whole run near 10 minutes on 2 cores; GPU sizes
# use larger model shapes in bf16 (random weights: speed does not depend on them) and more users.
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "scoring": ("bench_vlm_scoring.py", [],
                ["--device", "cuda", "--hidden", "2048", "--layers", "16", "--heads", "16", "--vision-hidden", "256",
                 "--image-size", "224", "--patch-size", "14", "--users", "32", "--candidates", "101", "--batch", "101",
                 "--reference-users", "1", "--train-hidden", "2048", "--train-layers", "16", "--train-steps", "10",
                 "--train-batch", "16"]),
    "summarize": ("bench_summarize.py", [],
                  ["--hidden", "1024", "--layers", "8", "--users", "256", "--items", "500", "--batch-size", "64",
                   "--dtype", "bfloat16"]),
    "data_prep": ("bench_data_prep.py", ["--rows", "1e7"], ["--rows", "1e6", "1e7"]),
    "metrics": ("bench_metrics.py", ["--users", "1000000"], ["--users", "1000000"]),
    "sequential": ("bench_sequential.py", ["--seconds", "10"], ["--seconds", "20"]),
    "ctr": ("bench_ctr.py", [], ["--texts", "4096", "--images", "2048", "--big-images", "1024"]),
    "item_cache": ("bench_vlm_item_cache.py", [], []),
    "students": ("bench_student_scoring.py", [], []),
    "convergence": ("bench_convergence.py", ["--shapes", "synthetic", "--models", "gru4rec"],
                    ["--shapes", "synthetic", "ml-100k", "ml-1m", "--device", "cuda"]),
}


def run_one(name: str, gpu: bool, results: Path, log_dir: Path) -> tuple[int, float]:
    script, cpu_args, gpu_args = BENCHMARKS[name]
    cmd = [sys.executable, str(HERE / script), *(gpu_args if gpu else cpu_args)]
    env = {**os.environ, "MMREC_BENCH_JSON": str(results), "MMREC_NO_PROGRESS": "1"}
    t0 = time.time()
    with open(log_dir / f"{name}.log", "w") as log:
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log.write(proc.stdout)
    print(proc.stdout.rstrip(), flush=True)
    return proc.returncode, time.time() - t0


def table(rows: list[dict]) -> str:
    head = f"{'benchmark':<11} {'figure':<66} {'value':>18} {'goal':>10} {'met':>4}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        unit = r["unit"]
        value = f"{r['value']:.2f}{unit}" if unit in ("x", "s") else f"{r['value']:,.1f} {unit}"
        goal = ""
        if r["goal"] is not None:
            sign = ">=" if r["higher_is_better"] else "<="
            goal = f"{sign}{r['goal']:g}" + (unit if unit in ("x", "s") else f" {unit}")
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        row = f"{r['bench']:<11} {r['measure'][:66]:<66} {value:>18} {goal:>10} {met:>4}  {r.get('note', '')}"
        lines.append(row.rstrip())
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="GPU sizes (run on a machine with a CUDA GPU)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument("--logs", type=Path, default=None, help="keep each benchmark's output here")
    args = parser.parse_args()
    names = args.only or list(BENCHMARKS)
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            print("--gpu runs the GPU sizes (bf16 models, --device cuda) and needs a CUDA GPU, but torch sees none; "
                  "run without --gpu for the CPU sizes", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.jsonl"
        log_dir = args.logs or Path(tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        failed = []
        for name in names:
            code, seconds = run_one(name, args.gpu, results, log_dir)
            print(f"== {name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {seconds:.0f}s\n", flush=True)
            if code != 0:
                failed.append(name)
        rows = [json.loads(line) for line in results.read_text().splitlines()] if results.exists() else []
    print(table(rows))
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
