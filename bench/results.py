"""How a benchmark hands its headline numbers to `bench/run_all.py`: one JSON line per figure.

A script calls `emit(...)` next to its own printing; when run by `run_all.py` (which sets MMREC_BENCH_JSON) the
figures are appended to that file and shown in one table with their goals. Run alone, `emit` does nothing.
"""
from __future__ import annotations

import json
import os


def emit(bench: str, measure: str, value: float, unit: str = "x", goal: float | None = None,
         higher_is_better: bool = True, note: str = "") -> None:
    """Record one figure, e.g. emit("scoring", "batched+prefix vs generate per candidate", 7.1, "x", goal=5)."""
    path = os.environ.get("MMREC_BENCH_JSON")
    if not path:
        return
    met = None if goal is None else (value >= goal if higher_is_better else value <= goal)
    row = {"bench": bench, "measure": measure, "value": float(value), "unit": unit, "goal": goal,
           "higher_is_better": higher_is_better, "met": met, "note": note}
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
