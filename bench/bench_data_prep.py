"""Data-preparation benchmark: generated interactions through import, 5-core, leave-one-out split and
100 candidates per evaluated example (target + 99 negatives), timed per phase with peak memory.

    .venv/bin/python bench/bench_data_prep.py                              # 10 M interactions
    .venv/bin/python bench/bench_data_prep.py --rows 1e6 3e6 1e7           # memory should grow linearly

Each size runs in its own process so its peak RSS is its own. Goal on 2 cores: under 60 s and 4 GB at 10 M.
Phases: `import` = mmrec.data.canonical.write_tables (validate, sort into sequence order, Parquet + stats),
`kcore` = mmrec.data.kcore.kcore(5, 5), `split` = mmrec.data.splits.make_split (LOO, candidates, training
negatives, leakage check, hashes). Generation is timed but not part of the pipeline total. CPU seconds are printed \
beside wall
seconds: on shared cores the difference is time spent waiting for other jobs.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from results import emit  # bench/ is sys.path[0] when a benchmark runs as a script

GOAL_SECONDS, GOAL_GB = 60.0, 4.0


def generate(rows: int, seed: int = 0, mean_len: int = 50) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Columnar generator: Zipf-like item popularity, Poisson sequence lengths, rows in shuffled source order."""
    g = np.random.default_rng(seed)
    n_users = max(1, rows // mean_len)
    n_items = max(100, rows // 100)
    lengths = np.maximum(1, g.poisson(mean_len, n_users))
    lengths = (lengths * rows / lengths.sum()).astype(np.int64) + 1
    user = np.repeat(np.arange(n_users), lengths)[:rows]
    cdf = np.cumsum(1.0 / np.arange(1, n_items + 1) ** 0.8)
    item = np.searchsorted(cdf, g.random(len(user)) * cdf[-1])
    gaps = g.exponential(3600.0, len(user)).astype(np.int64)
    ts = np.cumsum(gaps)
    starts = np.r_[0, np.flatnonzero(np.diff(user)) + 1]
    ts = (ts - np.repeat(ts[starts], np.diff(np.r_[starts, len(user)]))
          + 1_600_000_000 + g.integers(0, 10**7, n_users)[user])
    order = g.permutation(len(user))
    user_ids = pa.array([f"u{k:08d}" for k in range(n_users)])
    item_ids = pa.array([f"i{k:07d}" for k in range(n_items)])
    inter = pa.table({"user_id": user_ids.take(pa.array(user[order])), "item_id": item_ids.take(pa.array(item[order])),
                      "timestamp": pa.array(ts[order])}).to_pandas()
    items = pa.table({"item_id": item_ids, "title": item_ids}).to_pandas()
    return items, inter


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # ru_maxrss is in KiB on Linux


class Phases:
    """Wall and CPU seconds per phase (CPU shows the work itself when other jobs share the cores)."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.peak: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        w, c = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        self.wall[name], self.cpu[name] = time.perf_counter() - w, time.process_time() - c
        self.peak[name] = peak_gb()
        return result


def child(rows: int, negatives: int) -> dict:
    from mmrec.data.canonical import write_tables
    from mmrec.data.kcore import kcore
    from mmrec.data.splits import SplitConfig, make_split

    p = Phases()
    items, inter = p.run("generate", generate, rows)
    with tempfile.TemporaryDirectory(prefix="mmrec-bench-") as tmp:
        inter, report = p.run("kcore", kcore, inter, 5, 5)
        items = items[items.item_id.isin(inter.item_id.unique())]
        p.run("import", write_tables, Path(tmp) / "ds", items, inter)
        del inter, items
        split = p.run("split", make_split, Path(tmp) / "ds", SplitConfig(protocol="loo", negatives=negatives, seed=0),
                      Path(tmp) / "split")
        candidates = sum(split.info["counts"]["candidates"].values())
    pipeline = ("kcore", "import", "split")
    return {"rows": rows, "kept": report["interactions_after"], "candidates": candidates, "wall": p.wall, "cpu": p.cpu,
            "peak_after": p.peak,
            "total_s": sum(p.wall[k] for k in pipeline), "total_cpu_s": sum(p.cpu[k] for k in pipeline),
            "peak_gb": peak_gb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=float, nargs="+", default=[1e7], help="interaction counts (e.g. 1e6 3e6 1e7)")
    parser.add_argument("--negatives", type=int, default=99, help="negatives per evaluated example (default 99)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(int(args.rows[0]), args.negatives)))
        return
    results = []
    for rows in args.rows:
        proc = subprocess.run([sys.executable, __file__, "--child", "--rows", str(int(rows)), "--negatives",
                               str(args.negatives)], capture_output=True, text=True,
                              env={**__import__("os").environ, "MMREC_NO_PROGRESS": "1"})
        if proc.returncode:
            sys.exit(f"benchmark at {int(rows)} rows failed:\n{proc.stderr}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        r = results[-1]
        phases = " | ".join(f"{k} {r['wall'][k]:.1f}s (cpu {r['cpu'][k]:.1f}s, peak so far {r['peak_after'][k]:.2f} GB)"
                            for k in r["wall"])
        print(f"{r['rows']:>11,} rows: {phases} | total {r['total_s']:.1f}s (cpu {r['total_cpu_s']:.1f}s) | "
              f"{r['rows'] / r['total_s']:,.0f} interactions/s | peak {r['peak_gb']:.2f} GB | "
              f"{r['kept']:,} kept by 5-core | {r['candidates']:,} candidates", flush=True)
    print("\n| rows | total s | cpu s | interactions/s | peak GB | bytes/interaction | time vs 60 s goal "
          "| memory vs 4 GB goal |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']:,} | {r['total_s']:.1f} | {r['total_cpu_s']:.1f} | {r['rows'] / r['total_s']:,.0f} | "
              f"{r['peak_gb']:.2f} | {r['peak_gb'] * 1024**3 / r['rows']:.0f} | {r['total_s'] / GOAL_SECONDS:.2f}x | "
              f"{r['peak_gb'] / GOAL_GB:.2f}x |")
    r = results[-1]  # the largest size is the headline (the goals are stated at 10 M)
    size = f"{r['rows'] / 1e6:g}M"
    emit("data_prep", f"prepare {size} interactions (5-core, LOO, 99 negatives), wall s", r["total_s"], "s",
         goal=GOAL_SECONDS, higher_is_better=False, note=f"cpu {r['total_cpu_s']:.1f}s")
    emit("data_prep", f"prepare {size} interactions, peak memory GB", r["peak_gb"], "GB", goal=GOAL_GB,
         higher_is_better=False)
    emit("data_prep", f"prepare {size} interactions, interactions/s", r["rows"] / r["total_s"], "rows/s")
    if len(results) > 1:
        a, b = results[0], results[-1]
        print(f"\nmemory growth {b['peak_gb'] / a['peak_gb']:.2f}x for {b['rows'] / a['rows']:.1f}x the rows "
              f"(linear would be at most {b['rows'] / a['rows']:.1f}x)")


if __name__ == "__main__":
    main()
