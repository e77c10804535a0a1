"""Scoring throughput: what `mmrec score` records about its own speed in a scores file's metadata, and the
candidates per second the report shows per model.

The clock times the scorer's calls only (not loading the model or reading the split), in this process: chunks
resumed from an earlier, interrupted process are counted as `resumed_candidates`, not timed. It keeps CPU seconds
(`time.process_time` of the whole process, which adds up the torch threads' time and is steadier than wall time on
a shared machine) and wall seconds. A model scored on the CPU is rated per CPU second; one scored on an
accelerator per wall second, since its work is not CPU time (the host mostly waits). The record names the threads
and the device so that numbers from different machines are not compared blindly.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from eval.protocol import scores_metadata

THROUGHPUT_KEY = "throughput"  # in the scores file's `mmrec` metadata
T = TypeVar("T")


@dataclass
class ScoringClock:
    """CPU and wall seconds of the scorer's calls and the candidate rows they scored."""

    candidates: int = 0
    cpu_s: float = 0.0
    wall_s: float = 0.0
    resumed_candidates: int = 0

    def time(self, rows: int, call: Callable[[], T]) -> T:
        """`call()`, its seconds added to the clock and `rows` to the candidates scored."""
        cpu, wall = time.process_time(), time.perf_counter()
        out = call()
        self.cpu_s += time.process_time() - cpu
        self.wall_s += time.perf_counter() - wall
        self.candidates += rows
        return out

    def record(self, scorer: Any) -> dict[str, Any]:
        """The metadata entry: counts, seconds, torch threads and the scorer's device."""
        import torch

        return {"candidates": self.candidates, "cpu_s": self.cpu_s, "wall_s": self.wall_s,
                "resumed_candidates": self.resumed_candidates, "torch_threads": torch.get_num_threads(),
                "device": scorer_device(scorer)}


def scorer_device(scorer: Any) -> str:
    """The scorer's `device`, else its model's (a VLM scorer's), else cpu (popularity has no model)."""
    device = getattr(scorer, "device", None)
    model = getattr(scorer, "model", None)
    if device is None and model is not None:
        device = getattr(model, "device", None)
        if device is None and hasattr(model, "parameters"):
            device = next((p.device for p in model.parameters()), None)
    return str(device or "cpu")


def read_throughput(scores_path: Path) -> dict[str, Any] | None:
    """The throughput a scores file was written with; None for a file without one (older, or another tool's)."""
    if not Path(scores_path).is_file():
        return None
    entry = scores_metadata(scores_path).get(THROUGHPUT_KEY)
    return entry if isinstance(entry, dict) else None


def on_cpu(record: dict[str, Any]) -> bool:
    return str(record.get("device") or "cpu").startswith("cpu")


def pooled_rate(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Pooled over runs (a model's seeds): all candidates timed / all seconds of one clock, `cpu` when every run
    scored on the CPU, else `wall`; with the threads and devices they ran on. None when no run timed any
    candidate."""
    timed = [r for r in records if r.get("candidates")]
    clock = "cpu" if all(on_cpu(r) for r in timed) else "wall"
    timed = [r for r in timed if (r.get(f"{clock}_s") or 0) > 0]
    if not timed:
        return None
    return {"rate": sum(r["candidates"] for r in timed) / sum(r[f"{clock}_s"] for r in timed), "clock": clock,
            "runs": len(timed), "threads": sorted({int(r.get("torch_threads") or 0) for r in timed}),
            "devices": sorted({str(r.get("device")) for r in timed})}


def fmt_rate(entry: dict[str, Any] | None) -> str:
    """A pooled rate as the report shows it: `593,382`, `1,204 (wall)` for wall-clock rates, `–` when unknown."""
    if not entry:
        return "–"
    return f"{entry['rate']:,.0f}" + (" (wall)" if entry.get("clock") == "wall" else "")


def model_throughput(paths: Any, runs: list[Any]) -> dict[str, dict[str, Any]]:
    """model -> `pooled_rate` of its runs' scores files (`paths`: ExperimentPaths; `runs`:
    report RunResults); models whose scores recorded no timing are left out."""
    records: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        entry = read_throughput(paths.scores(r.run))
        if entry is not None:
            records.setdefault(r.model, []).append(entry)
    pooled = {m: pooled_rate(rs) for m, rs in records.items()}
    return {m: p for m, p in pooled.items() if p is not None}


RATE_LABEL = "cand/s"


def rate_note(throughput: dict[str, dict[str, Any]]) -> str:
    """What the report's candidates/s are, with the threads and devices they were measured on."""
    threads = sorted({t for p in throughput.values() for t in p["threads"]})
    devices = sorted({d for p in throughput.values() for d in p["devices"]})
    return (f"{RATE_LABEL}: candidates scored per second of the scorer calls of `mmrec score`, pooled over the seeds "
            "of a model: per CPU second (time.process_time of the scoring process, which adds up its torch threads) "
            "for a model scored on the CPU, per wall second, marked (wall), for one scored on an accelerator "
            f"({', '.join(map(str, threads))} thread(s), device {', '.join(devices)}); a measure of the machine "
            "that scored, comparable only between runs scored on the same one.")
