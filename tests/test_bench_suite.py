"""`bench/run_all.py` gathers the benchmarks' figures into one table (speed itself is never asserted here)."""
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench"


def test_run_all_prints_the_table_with_goals():
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--only", "metrics"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout[proc.stdout.rindex("benchmark"):]
    assert "metrics" in table and "vectorised vs per-user loop" in table
    goal_line = next(line for line in table.splitlines() if line.startswith("metrics") and "seconds for" in line)
    assert goal_line.split()[-2:] in (["<=10s", "yes"], ["<=10s", "NO"])


def test_gpu_sizes_without_a_gpu_are_refused_clearly():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --gpu is valid here")
    proc = subprocess.run([sys.executable, str(BENCH / "run_all.py"), "--gpu", "--only", "metrics"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "CUDA" in (proc.stdout + proc.stderr)
