"""bench/peer_recbole.py end to end on a small generated dataset: RecBole 1.2.1 and mmrec side by side.

Opt-in (it installs RecBole into its own virtual environment on first use and trains six models):
    MMREC_PEER_RECBOLE=1 python -m pytest tests/test_peer_recbole.py
`MMREC_PEER_RECBOLE_VENV` points it at an existing environment (default bench/.recbole-venv)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("MMREC_PEER_RECBOLE") != "1",
                                 reason="opt-in: set MMREC_PEER_RECBOLE=1 (installs RecBole 1.2.1, trains 6 models)")]


def test_peer_recbole_agrees_where_protocols_are_identical(tmp_path, run_cli) -> None:
    data = tmp_path / "syn"
    assert run_cli("prep", "synthetic", "--users", "150", "--items", "60", "--min-length", "5", "--seed", "1",
                   "--out", data)[0] == 0
    assert run_cli("split", data, "--protocol", "loo", "--negatives", "10")[0] == 0
    venv = os.environ.get("MMREC_PEER_RECBOLE_VENV", str(ROOT / "bench" / ".recbole-venv"))
    out = tmp_path / "peer"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "peer_recbole.py"), str(data / "splits" / "loo"),
                           "--out", str(out), "--venv", venv, "--seeds", "0", "--epochs", "3", "--batch-size", "16"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = (out / "peer_table.md").read_text()
    for model in ("pop", "gru4rec", "sasrec"):
        assert sum(line.startswith(f"| {model} |") for line in table.splitlines()) == 3
    assert "NO" not in table.split("Protocol differences")[0]
    results = json.loads((out / "peer_results.json").read_text())
    pop_ours, pop_theirs = results["mmrec"]["pop"], results["recbole"]["pop"]
    # Pop has no seed noise: RecBole's number lies between mmrec's pessimistic and optimistic tie bounds
    for metric in ("hr@10", "ndcg@10", "mrr@10"):
        theirs = pop_theirs["seeds"][0][metric]
        assert pop_ours["pessimistic"][0][metric] - 1e-6 <= theirs <= pop_ours["optimistic"][0][metric] + 1e-6
    assert pop_ours["items"] == pop_theirs["items"] and pop_ours["users"] == pop_theirs["users"]
