"""`mmrec demo`: the whole pipeline on the synthetic benchmark with tiny models, through the CLI."""
from __future__ import annotations

import json

import pytest

from mmrec.demo import demo_config
from mmrec.experiment import ExperimentConfig

MODELS = ["pop", "gru4rec", "sasrec", "mmrec_text", "mmrec_text_image", "mmrec", "llava_zero_shot", "mllm_msr"]


def test_demo_runs_every_stage_prints_the_table_and_resumes(tmp_path, run_cli):
    out = tmp_path / "demo"
    code, stdout, stderr = run_cli("demo", "--out", out, "--size", "small")
    assert code == 0, stderr
    table = stdout[stdout.index("Results on the test candidates"):]
    for model in MODELS:
        assert f"\n{model} " in table
        metrics = json.loads((out / "metrics" / f"{model}.json").read_text())
        assert 0.0 <= metrics["metrics"]["test"]["auc"] <= 1.0
    assert (out / "summaries" / "items.parquet").is_file() and (out / "summaries" / "users.parquet").is_file()
    assert (out / "checkpoints" / "mllm_msr" / "adapter").is_dir()
    html = (out / "report.html").read_text()
    assert "<img" in html and "mllm_msr" in html
    assert "meaningless" in stdout and "mmrec run configs/mllm_msr/" in stdout

    # A second demo finds everything done and runs nothing.
    code, stdout, _ = run_cli("demo", "--out", out, "--size", "small")
    assert code == 0 and "[      run]" not in stdout and "[     skip] report" in stdout


@pytest.mark.parametrize("size", ["default", "small"])
def test_demo_config_validates(tmp_path, size):
    models = {"llava": tmp_path / "l", "llm": tmp_path / "m", "clip": tmp_path / "c"}
    for folder in models.values():  # validation checks that local model folders exist
        folder.mkdir()
    cfg = ExperimentConfig.from_mapping(demo_config(tmp_path, models, size))
    cfg.validate_all()
    assert set(cfg.model_names()) == set(MODELS)
