"""The config system: typed sections, overrides, and errors that name the file and key."""
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml

from mmrec.config import apply_overrides, from_dict, load_layered_yaml, load_section, load_yaml, to_dict
from mmrec.errors import ConfigError
from mmrec.experiment import ExperimentConfig


@dataclass
class Lora:
    r: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: ["q_proj"])


@dataclass
class Train:
    lr: float = 1e-4
    mode: Literal["answer", "full"] = "answer"
    out: Path = Path("out")
    limit: Optional[int] = None
    lora: Lora = field(default_factory=Lora)


def test_from_dict_builds_nested_sections_and_converts_losslessly():
    cfg = from_dict(Train, {"lr": 1, "lora": {"r": 16, "targets": ["a", "b"]}, "out": "x/y"})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.lora.r == 16 and cfg.lora.targets == ["a", "b"]
    assert cfg.out == Path("x/y")
    assert to_dict(cfg)["lora"] == {"r": 16, "alpha": 16.0, "targets": ["a", "b"]}


def test_unknown_key_names_file_key_and_suggestion():
    with pytest.raises(ConfigError, match=r"f\.yaml: unknown key 'lora\.alpah'; did you mean 'alpha'\?"):
        from_dict(Train, {"lora": {"alpah": 8}}, where="f.yaml")


@pytest.mark.parametrize("data, message", [
    ({"lr": "fast"}, "key 'lr' must be a number"),
    ({"lora": {"r": 1.5}}, "key 'lora.r' must be an integer"),
    ({"mode": "half"}, "key 'mode' must be one of 'answer', 'full'"),
    ({"lora": {"targets": "q"}}, "key 'lora.targets' must be a list"),
    ({"limit": True}, "key 'limit' must be int"),
])
def test_wrong_types_are_reported_with_the_dotted_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Train, data, where="f.yaml")


def test_overrides_parse_yaml_values_and_create_sections():
    data = apply_overrides({"lora": {"r": 8}}, ["lora.r=4", "lr=3e-4", "lora.targets=[q,v]", "limit=null"])
    cfg = from_dict(Train, data)
    assert cfg.lora.r == 4 and cfg.lr == 3e-4 and cfg.lora.targets == ["q", "v"] and cfg.limit is None
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        apply_overrides({}, ["lora.r"])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+ invalid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_load_section_applies_overrides(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("lr: 0.1\nlora:\n  r: 2\n")
    assert load_section(Train, f, ["lora.alpha=4"]).lora.alpha == 4.0


def test_experiment_rejects_unknown_sections_and_model_kinds(tmp_path):
    f = tmp_path / "e.yaml"
    f.write_text("experiment:\n  seed: 3\nspilt: {}\n")
    with pytest.raises(ConfigError, match="unknown section 'spilt'; did you mean 'split'"):
        ExperimentConfig.load(f)
    cfg = ExperimentConfig.from_mapping({"experiment": {"seed": 3, "dir": "r"}, "models": {"m": {"kind": "nope"}}})
    assert cfg.seed == 3 and cfg.dir == Path("r")
    with pytest.raises(ConfigError, match="models.m.kind' must be one of"):
        cfg.model("m")


def test_validate_command_reports_bad_config(tmp_path, run_cli):
    f = tmp_path / "e.yaml"
    f.write_text("experiment:\n  seed: many\n")
    code, _, err = run_cli("validate", f)
    assert code == 2 and "experiment.seed' must be an integer" in err and str(f) in err


def test_overrides_may_follow_options(tmp_path, run_cli):
    f = tmp_path / "e.yaml"
    f.write_text("experiment:\n  seed: 1\n")
    code, out, _ = run_cli("validate", f, "--quiet", "experiment.seed=2")
    assert code == 0 and "OK" in out
    code, _, err = run_cli("validate", f, "--quiet", "experiment.seed=x")
    assert code == 2 and "experiment.seed' must be an integer" in err


def test_tests_run_tiny_models_on_one_thread():
    """conftest sets OMP_NUM_THREADS=1 before torch loads; tiny models are 10-40x slower with spinning threads."""
    import torch

    assert torch.get_num_threads() == 1


def _write(path, text):
    path.write_text(text)
    return path


def test_base_config_is_merged_under_its_child(tmp_path):
    _write(tmp_path / "main.yaml", "split: {negatives: 20, seed: 1}\nmodels: {a: {kind: pop}, b: {kind: sasrec}}\n")
    (tmp_path / "sub").mkdir()
    child = _write(tmp_path / "sub" / "abl.yaml", "base: ../main.yaml\nremove: [models.b]\nsplit: {seed: 2}\n")
    assert load_layered_yaml(child) == {"split": {"negatives": 20, "seed": 2}, "models": {"a": {"kind": "pop"}}}


@pytest.mark.parametrize("text, message", [
    ("base: missing.yaml\n", "missing.yaml: config file not found"),
    ("base: main.yaml\nremove: [models.zzz]\n", "'remove' names 'models.zzz', which main.yaml does not have"),
    ("remove: [models.a]\n", "'remove' drops keys of a 'base' config"),
    ("base: self.yaml\n", "leads back to a file already being loaded"),
    ("base: main.yaml\nremove: models.a\n", "'remove' must be a list of dotted keys"),
])
def test_base_config_errors_name_the_file_and_key(tmp_path, text, message):
    _write(tmp_path / "main.yaml", "models: {a: {kind: pop}}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_layered_yaml(_write(tmp_path / "self.yaml", text))


def test_validate_names_a_missing_local_model_folder_and_its_key(tmp_path, run_cli):
    """A local path that does not exist is named as a missing folder with its config key, before any stage runs."""
    f = tmp_path / "e.yaml"
    for section, path in (("item_summaries", tmp_path / "no-such-model"), ("user_summaries", "./models/llama")):
        f.write_text(f"{section}:\n  model:\n    name_or_path: {path}\n")
        code, _, err = run_cli("validate", f)
        assert code == 2 and f"{section}.model.name_or_path" in err and "Traceback" not in err
        assert f"local model folder '{path}' does not exist" in err
    f.write_text(f"models:\n  rec:\n    kind: vlm\n    model: {{name_or_path: {tmp_path}/gone/llava}}\n")
    code, _, err = run_cli("validate", f)
    assert code == 2 and "models.rec.model.name_or_path" in err and "does not exist" in err
    (tmp_path / "llava").mkdir()
    for name in (tmp_path / "llava", "llava-hf/llava-v1.6-mistral-7b-hf"):  # a folder that exists, a hub id
        f.write_text(f"item_summaries:\n  model:\n    name_or_path: {name}\n")
        assert run_cli("validate", f, "--quiet")[0] == 0


def test_command_line_options_come_from_the_dataclass():
    """One rule from a config dataclass to flags: every field is a `--field-name` option with the field's type,
    choices and help (its `metadata['help']`); options left out keep the defaults; the command line and the YAML
    give the same config."""
    import argparse

    from mmrec.config import add_options, options_from_args
    from mmrec.data.splits import SplitConfig

    parser = argparse.ArgumentParser()
    add_options(parser, SplitConfig)
    flags = {a.dest: a for a in parser._actions if a.option_strings and a.dest != "help"}
    fields = {f.name: f for f in dataclasses.fields(SplitConfig)}
    assert set(flags) == set(fields)
    for name, f in fields.items():
        assert f.metadata.get("help"), f"SplitConfig.{name} has no help"
        assert flags[name].help.startswith(f.metadata["help"])
    assert flags["protocol"].choices == ["loo", "temporal", "paper"]
    args = parser.parse_args(["--protocol", "paper", "--user-fractions", "0.7", "0.1", "0.2", "--top-k", "11",
                              "--sampling-data", "all"])
    values = options_from_args(args, SplitConfig)
    assert values == {"protocol": "paper", "user_fractions": [0.7, 0.1, 0.2], "top_k": 11, "sampling_data": "all"}
    assert from_dict(SplitConfig, values) == from_dict(SplitConfig, yaml.safe_load(
        "protocol: paper\nuser_fractions: [0.7, 0.1, 0.2]\ntop_k: 11\nsampling_data: all\n"))
    with pytest.raises(SystemExit):
        parser.parse_args(["--sampling", "weird"])


def test_add_options_required_paths_switches_and_empty_lists():
    """A field without a default is a required flag; Path, bool and list fields get their command-line forms, and
    a flag left out keeps the dataclass default (options_from_args drops it)."""
    import argparse

    from mmrec.config import add_options, option, options_from_args

    @dataclasses.dataclass(kw_only=True)
    class Opts:
        source: Path = option(dataclasses.MISSING, "input file")
        folder: Path | None = option(None, "optional folder")
        fast: bool = option(False, "a switch")
        cols: list[str] = option([], "columns, possibly none")
        sizes: list[int] = option([1, 2], "at least one size")
        skipped: int = option(3, "left to the caller")

    parser = argparse.ArgumentParser()
    add_options(parser, Opts, skip=["skipped"])
    assert "--skipped" not in parser._option_string_actions
    with pytest.raises(SystemExit):
        parser.parse_args([])  # --source is required
    args = parser.parse_args(["--source", "a.csv", "--fast", "--cols"])
    values = options_from_args(args, Opts)
    assert values == {"source": Path("a.csv"), "fast": True, "cols": []}
    assert from_dict(Opts, values) == Opts(source=Path("a.csv"), fast=True)
    assert options_from_args(parser.parse_args(["--source", "b", "--no-fast"]), Opts)["fast"] is False
    with pytest.raises(SystemExit):
        parser.parse_args(["--source", "a.csv", "--sizes"])  # a non-empty default needs a value
    assert Opts(source=Path("x")).cols is not Opts(source=Path("y")).cols  # list defaults are copied


def test_split_command_has_no_table_of_its_own():
    from data_prep import split_cli

    assert not hasattr(split_cli, "_FIELDS")


def test_a_leading_tilde_in_a_config_path_is_the_home_folder(tmp_path, monkeypatch):
    """YAML does not expand `~` as a shell does: `experiment.dir: ~/runs/x` must not make a folder named `~`."""
    from mmrec.experiment import ExperimentSection
    from mmrec.vlm import ModelSpec

    monkeypatch.setenv("HOME", str(tmp_path))
    section = from_dict(ExperimentSection, {"dir": "~/runs/x"}, where="exp.yaml", prefix="experiment")
    assert section.dir == tmp_path / "runs" / "x"
    spec = from_dict(ModelSpec, {"name_or_path": "~/models/llava"}, where="exp.yaml", prefix="m.model")
    assert spec.name_or_path == str(tmp_path / "models" / "llava")
    assert ModelSpec(name_or_path="llava-hf/llava-1.5-7b-hf").name_or_path == "llava-hf/llava-1.5-7b-hf"


def test_a_prepared_dataset_path_may_start_at_the_home_folder(tmp_path, monkeypatch):
    from mmrec.data.prep_config import PrepConfig

    monkeypatch.setenv("HOME", str(tmp_path))
    assert from_dict(PrepConfig, {"path": "~/data/ml"}, where="exp.yaml", prefix="data").path == tmp_path / "data/ml"
