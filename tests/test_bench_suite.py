"""`bench/run_all.py` gathers the benchmarks' figures into one table (speed itself is never asserted here)."""
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

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


def _bench_module(name: str):
    """A module of bench/ (they import each other as top-level names, as when a script runs)."""
    import importlib

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_vlm_flop_count_matches_torch_flop_counter(tmp_path):
    """The FLOPs the scoring benchmark divides by (GPU peak fraction, the prefix cache's bound) are those torch
    counts on a real forward: eager attention (its matmuls are counted), one user, suffixes of equal length."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from mmrec.models.vlm_forward import cached_p_yes, plain_p_yes, prefix_cache
    from mmrec.tiny import build_tiny_llava

    bench, flops = _bench_module("bench_vlm_scoring"), _bench_module("vlm_flops")
    loaded = bench.load(build_tiny_llava(tmp_path / "m", "llava", seed=0, vision_hidden=64), "cpu", attn="eager")
    args = SimpleNamespace(users=1, candidates=3, pref_words=12, image_size=32)
    builder, users, images, _ = bench.candidates(args, loaded, np.random.default_rng(0))
    prefix = builder.encode_prefix(builder.prefix_text(users[0]))
    items = [builder.encode_suffix(builder.item_suffix_text("a red item"), img) for img in images]
    model, pad, s = loaded.model, loaded.tokenizer.pad_token_id, len(items[0].ids)
    with torch.no_grad(), FlopCounterMode(display=False) as cached:
        cache, pmask, plen = prefix_cache(model, [prefix], pad)
        cached_p_yes(model, cache, pmask, plen, torch.zeros(3, dtype=torch.long), items, builder.yes_id,
                     builder.no_id, pad)
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        plain_p_yes(model, [prefix] * 3, items, builder.yes_id, builder.no_id, pad)
    for counter, is_cached in ((cached, True), (plain, False)):
        expected = flops.flop_count(model, [len(prefix)], [s] * 3, cached=is_cached)
        assert abs(counter.get_total_flops() - expected) <= 0.01 * expected, (is_cached, counter.get_total_flops())
    assert cached.get_total_flops() < plain.get_total_flops()


def test_vlm_scoring_bench_runs_at_tiny_sizes():
    """The whole script, LoRA and QLoRA children included, on a tiny shape; its figures reach run_all's file."""
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.jsonl"
        args = ["--hidden", "64", "--layers", "1", "--users", "2", "--candidates", "3", "--batch", "2",
                "--pref-words", "4", "--repeats", "1", "--train-hidden", "128", "--train-layers", "1",
                "--train-steps", "1", "--train-batch", "1"]
        proc = subprocess.run([sys.executable, str(BENCH / "bench_vlm_scoring.py"), *args],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "MMREC_BENCH_JSON": str(out)})
        assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
        rows = {r["measure"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert "ratio prefix cache / plain batched" in proc.stdout and "qlora" in proc.stdout
    lm = next(r for m, r in rows.items() if m.startswith("train QLoRA vs LoRA, LM linear weight bytes"))
    assert 0.1 < lm["value"] < 0.2  # NF4 + double-quantized constants vs float32: ~1/7.8
    cache_vs_plain = next(r for m, r in rows.items() if m.startswith("prefix cache vs plain"))
    assert cache_vs_plain["value"] > 0 and "FLOP bound" in cache_vs_plain["note"]


def test_item_cache_bench_runs_and_reports_its_figures():
    import json
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.jsonl"
        proc = subprocess.run([sys.executable, str(BENCH / "bench_vlm_item_cache.py"), "--repeats", "1"],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "MMREC_BENCH_JSON": str(out)})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert "(1, 5, 3, 336, 336)" in proc.stdout and "25.8 GiB" in proc.stdout
    assert {r["unit"] for r in rows} == {"MiB", "ms CPU"} and len(rows) == 6


def test_gpu_smoke_runs_at_tiny_sizes_on_the_cpu(capsys):
    """bench/gpu_smoke.py's code path (meta-device build + to_empty + init, item summaries, LoRA steps, cached
    scoring, the plan's estimates beside) at tiny sizes; on a GPU the same script runs the 7B shapes."""
    smoke = _bench_module("gpu_smoke")
    assert smoke.main(["--tiny", "--steps", "1", "--new-tokens", "4", "--score-batch", "4", "--pref-words", "20"]) == 0
    out = capsys.readouterr().out
    for phase, unit in (("item summaries", "images/s"), ("LoRA training", "tokens/s"), ("scoring", "candidates/s")):
        line = next(line for line in out.splitlines() if line.startswith(phase))
        assert unit in line and "MiB" in line  # the plan's estimate beside the throughput
    assert "plan: weights" in out and "KV cache" in out and "LoRA weights+grads+AdamW" in out
