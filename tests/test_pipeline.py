"""`mmrec run`: every stage in order, skipping what is up to date, re-running what a change affects."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mmrec.experiment import ExperimentConfig
from mmrec.pipeline import Pipeline


def write_config(tmp_path: Path, **split) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = {
        "experiment": {"dir": str(tmp_path / "exp"), "seed": 0},
        "data": {"source": "synthetic", "options": {"users": 40, "items": 80, "seed": 0}},
        "split": {"protocol": "loo", "negatives": 10, **split},
        "models": {"pop": {"kind": "pop"}},
        "eval": {"ks": [1, 5]},
        "report": {"gallery_users": 2},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def plan_lines(out: str) -> dict[str, str]:
    """stage name -> verb ('run', 'skip', 'would run') from the printed plan."""
    plan = {}
    for line in out.splitlines():
        if line.startswith("[") and "]" in line:
            verb, rest = line[1:].split("]", 1)
            if verb.strip() in ("run", "skip", "would run"):
                plan[rest.split()[0]] = verb.strip()
    return plan


STAGES = ["prep", "split", "finetune:pop", "score:pop", "eval", "report"]


def test_run_skips_finished_stages_and_reruns_only_what_a_change_affects(tmp_path, run_cli):
    config = write_config(tmp_path)
    code, out, _ = run_cli("run", config)
    assert code == 0 and plan_lines(out) == {s: "run" for s in STAGES}
    exp = tmp_path / "exp"
    assert (exp / "metrics" / "pop.json").is_file() and (exp / "report.html").is_file()
    first_metrics = json.loads((exp / "metrics" / "pop.json").read_text())
    # every stage that ran says how long it took, in wall and CPU time (the CPU time does not depend on the load)
    done = {line.split()[2] for line in out.splitlines() if line.startswith("[     done]") and line.endswith(" s CPU")}
    assert done == set(STAGES)
    stamps = [json.loads((exp / ".mmrec" / "stages" / f"{s.replace(':', '__')}.json").read_text()) for s in STAGES]
    assert all(stamp["cpu_seconds"] >= 0 for stamp in stamps)

    code, out, _ = run_cli("run", config)
    assert code == 0 and plan_lines(out) == {s: "skip" for s in STAGES}

    # An override of the split section re-runs the split and everything downstream, not the data preparation.
    code, out, _ = run_cli("run", config, "split.negatives=5", "--dry-run")
    assert code == 0 and plan_lines(out) == {"prep": "skip", **{s: "would run" for s in STAGES[1:]}}
    assert json.loads((exp / "metrics" / "pop.json").read_text()) == first_metrics  # dry run touched nothing

    # Only the report section changed: only the report re-runs.
    code, out, _ = run_cli("run", config, "report.gallery_users=1")
    assert code == 0 and plan_lines(out) == {**{s: "skip" for s in STAGES[:-1]}, "report": "run"}


def test_only_and_from_select_stages(tmp_path, run_cli):
    config = write_config(tmp_path)
    assert run_cli("run", config)[0] == 0
    code, out, _ = run_cli("run", config, "--only", "eval", "--dry-run")
    assert code == 0 and [s for s, v in plan_lines(out).items() if v == "would run"] == ["eval"]
    code, out, _ = run_cli("run", config, "--from", "score", "--dry-run")
    assert [s for s, v in plan_lines(out).items() if v == "would run"] == ["score:pop", "eval", "report"]
    code, _, err = run_cli("run", config, "--only", "sumarize")
    assert code == 2 and "no stage 'sumarize'" in err


def test_interrupted_stage_resumes_and_failure_is_one_clear_line(tmp_path, run_cli, monkeypatch):
    config = write_config(tmp_path)
    cfg = ExperimentConfig.load(config)
    pipeline = Pipeline(cfg, str(config), [])
    calls = []

    def crash(fresh: bool) -> None:
        calls.append(fresh)
        raise KeyboardInterrupt  # the process is killed in the middle of the split

    split = next(s for s in pipeline.stages if s.name == "split")
    monkeypatch.setattr(split, "run", crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run()
    assert calls == [False]
    # The next run sees the interrupted stage, resumes it (no fresh start) and finishes everything after it.
    code, out, _ = run_cli("run", config)
    assert code == 0 and "interrupted earlier: resumes" in out and plan_lines(out)["prep"] == "skip"

    bad = write_config(tmp_path / "bad", negatives=500)
    code, out, err = run_cli("run", bad)
    assert code == 2 and "cannot draw 500" in err and "Traceback" not in err


def test_training_restarts_fresh_when_its_config_changed(tmp_path):
    config = write_config(tmp_path)
    cfg = ExperimentConfig.load(config)
    Pipeline(cfg, str(config), []).run()
    changed = ExperimentConfig.load(config, ["models.pop.count=users"])
    pipeline = Pipeline(changed, str(config), ["models.pop.count=users"])
    seen = {}
    for stage in pipeline.stages:
        original = stage.run
        stage.run = lambda fresh, name=stage.name, run=original: (seen.__setitem__(name, fresh), run(fresh))
    pipeline.run()
    # Only the changed model re-runs; its training starts over instead of resuming the old config's checkpoint.
    assert set(seen) == {"finetune:pop", "score:pop", "eval", "report"} and seen["finetune:pop"] is True


def test_a_changed_input_file_reruns_prep_and_what_follows(tmp_path, run_cli, synthetic_dataset):
    import os
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_dataset, data, ignore=shutil.ignore_patterns("splits"))
    config = write_config(tmp_path)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"] = {"path": str(data)}
    config.write_text(yaml.safe_dump(cfg))
    assert run_cli("run", config, "--only", "prep")[0] == 0
    code, out, _ = run_cli("run", config, "--dry-run")
    assert plan_lines(out)["prep"] == "skip"
    table = data / "interactions.parquet"
    stat = table.stat()
    os.utime(table, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the dataset was re-prepared
    code, out, _ = run_cli("run", config, "--dry-run")
    assert code == 0 and plan_lines(out)["prep"] == "would run" and plan_lines(out)["split"] == "would run"
