"""`mmrec demo`: the whole pipeline on the synthetic benchmark with tiny models, through the CLI."""
from __future__ import annotations

import json

import pytest

from mmrec.demo import demo_config
from mmrec.experiment import ExperimentConfig

MODELS = ["pop", "gru4rec", "sasrec", "mmrec_text", "mmrec_text_image", "mmrec", "llava_zero_shot", "mllm_msr",
          "tallrec"]


def _auc(out, model: str) -> float:
    return json.loads((out / "metrics" / f"{model}.json").read_text())["metrics"]["test"]["auc"]


@pytest.mark.slow
def test_demo_runs_every_stage_learns_and_resumes(tmp_path, run_cli):
    out = tmp_path / "demo"
    code, stdout, stderr = run_cli("demo", "--out", out, "--size", "small")
    assert code == 0, stderr
    table = stdout[stdout.index("Results on the test candidates"):]
    for model in MODELS:
        assert f"\n{model} " in table
        assert 0.0 <= _auc(out, model) <= 1.0
    assert "\nmllm_msr            true sentence " in table  # the output says which preference text it read
    assert (out / "summaries" / "items.parquet").is_file() and (out / "summaries" / "users.parquet").is_file()
    assert (out / "checkpoints" / "mllm_msr" / "adapter").is_dir()
    # MLLM-MSR learns the image's colour match: clearly above its text-only ablation (TALLRec) and chance. Test AUC
    # measured at this size (60 test users, so each AUC's standard error is ~0.03), experiment seeds 0 / 1 / 2:
    # mllm_msr 0.787 / 0.768 / 0.776, tallrec 0.664 / 0.651 / 0.662 (margins 0.12 / 0.12 / 0.11), untrained 0.507.
    # The bounds (0.7, and 0.05 above TALLRec) leave about 2 standard errors below the lowest measured value.
    auc = {m: _auc(out, m) for m in ("mllm_msr", "tallrec", "llava_zero_shot")}
    assert auc["mllm_msr"] > 0.7 and auc["mllm_msr"] > auc["tallrec"] + 0.05, auc
    assert abs(auc["llava_zero_shot"] - 0.5) < 0.1, auc
    # the summaries' truth metrics: random tiny models name the true colour and pattern only by chance
    assert "Summaries against the benchmark's truth" in table and "preferences, step 1" in table
    truth = json.loads((out / "metrics" / "truth" / "summaries.json").read_text())
    assert truth["item_summaries"]["faithful"] < 0.1
    html = (out / "report.html").read_text()
    assert "<img" in html and "mllm_msr" in html and "Summaries against the benchmark" in html
    assert "meaningless" in stdout and "mmrec run configs/mllm_msr/" in stdout
    assert "s CPU" in stdout and "[     done] finetune:mllm_msr" in stdout  # each stage's time, and the total

    # A second demo finds everything done and runs nothing.
    code, stdout, _ = run_cli("demo", "--out", out, "--size", "small")
    assert code == 0 and "[      run]" not in stdout and "[     skip] report" in stdout


@pytest.mark.parametrize("size", ["default", "small"])
@pytest.mark.parametrize("generated", [False, True])
def test_demo_config_validates(tmp_path, size, generated):
    models = {"llava": tmp_path / "l", "llm": tmp_path / "m", "clip": tmp_path / "c"}
    for folder in models.values():  # validation checks that local model folders exist
        folder.mkdir()
    cfg = ExperimentConfig.from_mapping(demo_config(tmp_path, models, size, generated))
    cfg.validate_all()
    assert set(cfg.model_names()) == set(MODELS) | ({"mllm_msr_generated"} if generated else set())
    expected = {"mllm_msr": "truth", "tallrec": "truth", **({"mllm_msr_generated": "summaries"} if generated else {})}
    assert {m: cfg.model(m).preference_source for m in expected} == expected


def test_demo_generated_dry_run_plans_the_whole_chain(tmp_path, run_cli):
    code, stdout, stderr = run_cli("demo", "--out", tmp_path / "demo", "--size", "small", "--generated", "--dry-run")
    assert code == 0, stderr
    assert "[would run] finetune:mllm_msr_generated" in stdout and "[would run] summarize-users" in stdout
    assert not (tmp_path / "demo" / "metrics").exists()  # a dry run trains nothing
