"""`mmrec prep`'s options: each source's dataclass makes its flags and reads a config's `data.options`, so the
two never disagree; the flags, the YAML keys and the synthetic dataset's reuse stamp stay what users already have."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from data_prep import synthetic
from data_prep.cli import SOURCES, source
from data_prep.config import load_options, prep_from_config
from mmrec.commands import build_parser
from mmrec.config import from_dict, options_from_args
from mmrec.data.prep_config import PrepConfig
from mmrec.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CLEANING = ["--bad-lines", "--copy-images", "--image-policy", "--max-pixels", "--min-item", "--min-rating",
            "--min-user", "--out", "--require-image", "--workers"]
# The flags each source had when they were declared by hand: scripts that use them must keep working.
FLAGS = {
    "synthetic": ["--drift", "--image-size", "--interactions-per-user", "--items", "--min-length", "--noise", "--out",
                  "--seed", "--tie-rate", "--users"],
    "amazon2023": CLEANING + ["--download", "--download-workers", "--image-size", "--images", "--max-text-chars",
                              "--meta", "--retries", "--retry-backoff", "--reviews"],
    "microlens": CLEANING + ["--covers", "--pairs", "--time-format", "--titles"],
    "movielens": CLEANING + ["--format", "--max-tags", "--posters", "--posters-key", "--root"],
    "recbole": CLEANING + ["--images", "--inter", "--item", "--item-field", "--rating-field", "--time-field",
                           "--title-field", "--user-field"],
    "generic": CLEANING + ["--delimiter", "--format", "--image-col", "--images", "--interactions", "--item-col",
                           "--items", "--items-id-col", "--rating-col", "--text-cols", "--time-col", "--time-format",
                           "--title-col", "--user-col"],
}
REQUIRED = {"synthetic": ["--out"], "amazon2023": ["--meta", "--out", "--reviews"], "microlens": ["--out", "--pairs"],
            "movielens": ["--out", "--root"], "recbole": ["--inter", "--out"], "generic": ["--interactions", "--out"]}


def source_parsers() -> dict[str, argparse.ArgumentParser]:
    parser, _ = build_parser("prep")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", list(SOURCES))
def test_flags_come_from_the_options_dataclass_and_keep_their_names(name):
    parser = source_parsers()[name]
    flags = {s for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}
    switches = {s for s in flags if s.startswith("--no-")}  # the --no- form of each true/false option is new
    assert sorted(flags - switches) == sorted(FLAGS[name])
    assert sorted(a.option_strings[0] for a in parser._actions if a.required) == REQUIRED[name]
    _, options_cls = source(name)
    for f in dataclasses.fields(options_cls):
        assert f.metadata.get("help"), f"{options_cls.__name__}.{f.name} has no help"
        assert "--" + f.name.replace("_", "-") in flags


def _documented_prep_commands() -> list[str]:
    """Every complete `mmrec prep <source> ... --out DIR` written in the configs' comments, README.md and docs/."""
    commands = []
    documents = [*sorted((ROOT / "configs").rglob("*.yaml")), ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for path in documents:
        lines = [line.lstrip("#").strip() for line in path.read_text().splitlines()]
        text = "\n".join(lines).replace("\\\n", " ")
        for match in re.finditer(r"mmrec prep (\w+[^`\n]*)", text):
            command = match.group(1).split(" # ")[0].replace("[", " ").replace("]", " ")
            if "--out" in command and "..." not in command:
                commands.append(command)
    return commands


def test_every_documented_prep_command_still_parses():
    commands = _documented_prep_commands()
    assert len(commands) >= 8 and {c.split()[0] for c in commands} >= {"amazon2023", "microlens", "synthetic"}
    parser, _ = build_parser("prep")
    for command in commands:
        args = parser.parse_args(shlex.split(command))
        _, options_cls = source(args.source)
        from_dict(options_cls, options_from_args(args, options_cls), where=command)


def test_config_options_are_the_command_line_flags(tmp_path, run_cli):
    """The `data` section and the command line with the same options write the same dataset."""
    (tmp_path / "log.csv").write_text("uid,sku,ts,stars\nu1,a,1,5\nu1,b,2,2\nu2,a,3,4\nu2,b,4,5\n")
    options = {"interactions": str(tmp_path / "log.csv"), "user_col": "uid", "item_col": "sku", "time_col": "ts",
               "rating_col": "stars", "min_rating": 3, "text_cols": [], "require_image": False}
    code, out, err = run_cli("prep", "generic", "--interactions", tmp_path / "log.csv", "--user-col", "uid",
                             "--item-col", "sku", "--time-col", "ts", "--rating-col", "stars", "--min-rating", "3",
                             "--out", tmp_path / "cli")
    assert code == 0, err
    assert prep_from_config(PrepConfig(source="generic", options=options), tmp_path / "cfg") == json.loads(out)
    for name in ("items.parquet", "interactions.parquet"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "cfg" / name).read_bytes()
    prep = [json.loads((tmp_path / d / "prep.json").read_text())["options"] for d in ("cli", "cfg")]
    assert {**prep[0], "out": None} == {**prep[1], "out": None} and prep[0]["min_rating"] == 3.0


def test_an_unknown_option_key_names_it_the_valid_keys_and_the_help():
    cfg = PrepConfig(source="generic", options={"interactions": "log.csv", "user_column": "uid"})
    with pytest.raises(ConfigError) as e:
        load_options(cfg, where="exp.yaml")
    message = str(e.value)
    assert message.startswith("exp.yaml: unknown key 'data.options.user_column'")
    assert "did you mean 'user_col'" in message and "`mmrec prep generic --help`" in message
    assert "valid keys: bad_lines, copy_images, delimiter, format, image_col," in message
    with pytest.raises(ConfigError, match="unknown key 'data.options.out'"):  # --out is the experiment's dataset
        load_options(PrepConfig(source="synthetic", options={"out": "elsewhere"}))


@pytest.mark.parametrize("options,message", [
    ({"users": "many"}, "key 'data.options.users' must be an integer"),
    ({"noise": [0.1]}, "key 'data.options.noise' must be a number"),
])
def test_a_wrong_option_type_names_the_key(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_options(PrepConfig(source="synthetic", options=options), where="exp.yaml")


def test_missing_required_option_and_unknown_source():
    with pytest.raises(ConfigError, match="missing required key.*data.options.interactions"):
        load_options(PrepConfig(source="generic", options={}))
    with pytest.raises(ConfigError, match="'data.source' must be one of synthetic, amazon2023"):
        load_options(PrepConfig(source="amazon", options={}))


def test_synthetic_reuse_stamp_keeps_its_value():
    """`prep.json`'s `arguments` decide whether an existing synthetic dataset is kept: a config or command line
    unchanged since the options were declared by hand must give the same value, or every run would re-generate."""
    options = load_options(PrepConfig(source="synthetic", options={"users": 800, "seed": 0,
                                                                    "interactions_per_user": 8}))
    assert json.dumps(synthetic._arguments(options)) == (
        '{"drift": 0.04, "image_size": 32, "interactions_per_user": 8.0, "items": 120, "min_length": 5, '
        '"noise": 0.15, "seed": 0, "tie_rate": 0.03, "users": 800}')


def test_prep_and_split_fingerprints_keep_their_values():
    """The prep stage's fingerprint hashes `data` as written (options included) and the split's hashes
    SplitConfig: moving the options into dataclasses must not make `mmrec run` redo either."""
    from mmrec.experiment import ExperimentConfig

    cfg = ExperimentConfig.from_mapping({"data": {"source": "synthetic", "options": {"users": 800, "seed": 0}},
                                         "split": {"protocol": "paper", "user_fractions": [0.7, 0.1, 0.2]}})
    assert cfg.fingerprint("data") == "6b165a72e40d1a3687e1685dc3d4bac4755b8e82c2d8bfec73c8614f521d9672"
    assert cfg.fingerprint("split") == "eb8e43dc513508ab50244e001ec4559ba45081dbbe4eec57a328478f042cdc46"


def test_validate_checks_data_options_before_any_stage(tmp_path, run_cli):
    """`mmrec validate` (and `mmrec run`, `mmrec plan`, which validate first) refuses a wrong `data.options` key
    with the prep stage's own message, not only when the prep stage starts."""
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(yaml.safe_dump({"experiment": {"dir": str(tmp_path / "run")},
                                   "data": {"source": "synthetic", "options": {"user": 50}}}))
    code, _, err = run_cli("validate", cfg)
    assert code == 2 and "unknown key 'data.options.user'" in err and "did you mean 'users'" in err
    assert "`mmrec prep synthetic --help`" in err and "Traceback" not in err
    cfg.write_text(yaml.safe_dump({"experiment": {"dir": str(tmp_path / "run")},
                                   "data": {"source": "synthetic", "options": {"users": 50}}}))
    assert run_cli("validate", cfg)[0] == 0
    # an already prepared dataset ignores source and options, so they are not checked
    cfg.write_text(yaml.safe_dump({"experiment": {"dir": str(tmp_path / "run")},
                                   "data": {"path": str(tmp_path / "ds"), "options": {"user": 50}}}))
    assert run_cli("validate", cfg)[0] == 0
