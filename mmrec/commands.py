"""The command registry: every `mmrec <command>`, and the hooks the stage packages register with the library.

The library (`mmrec/`) sits below the stage packages (`data_prep/`, `finetune/`, `eval/`) and never imports them,
by name or by string. They register through their package metadata instead (`pyproject.toml`):

- `[project.entry-points."mmrec.commands"]`: command name -> module with `configure(parser)` and
  `main(args) -> int`;
- `[project.entry-points."mmrec.hooks"]`: named functions the library calls (`mmrec.registry.hook`), such as
  `prepare_dataset`, which `mmrec run` uses for its `prep` stage.

Commands of the library itself are listed in `LIBRARY_COMMANDS`. A command module is imported only when it is
invoked, so `mmrec --help` is instant and one stage's heavy imports never slow another's.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from types import ModuleType

from mmrec.errors import MmrecError
from mmrec.registry import registered

# The library's own commands: name -> module.
LIBRARY_COMMANDS: dict[str, str] = {
    "summarize-items": "mmrec.summarize.items_cli",
    "summarize-users": "mmrec.summarize.users_cli",
    "distill-signals": "mmrec.distill.cli",
    "run": "mmrec.pipeline_cli",
    "demo": "mmrec.demo",
    "validate": "mmrec.validate_cli",
    "plan": "mmrec.plan_cli",
    "tiny": "mmrec.tiny_cli",
}
# One line of help per command, in the order `mmrec --help` lists them (a typical experiment's); kept here so that
# the listing imports no command module. A registered command missing here is listed last with its docstring's line.
HELP: dict[str, str] = {
    "prep": "import a raw dataset (or generate the synthetic one) into the canonical form",
    "split": "split a canonical dataset and write its persisted candidate sets",
    "summarize-items": "VLM: turn every item image (and text) into a text summary",
    "summarize-users": "LLM: recurrent natural-language preference per user",
    "finetune": "train a model of the experiment (LoRA VLM, CTR head, sequential baselines)",
    "distill-signals": "VLM teacher: score training examples' candidates for a distilled student",
    "score": "score a model on the split's persisted candidates -> scores/<model>.parquet",
    "eval": "metrics + protocol manifest for every scored model",
    "report": "Markdown and self-contained HTML report of an experiment",
    "run": "run every stage of an experiment config, skipping finished ones",
    "demo": "the whole pipeline on the synthetic benchmark with tiny models (CPU, no downloads)",
    "validate": "load and validate an experiment config without running anything",
    "plan": "prompt tokens and GPU/host memory per stage of a config, before anything loads (offline)",
    "tiny": "build tiny random models (LLaVA, LLaVA-NeXT, text LLM, CLIP) for tests and dry runs",
    "export": "export a split to other toolkits' formats (RecBole atomic files)",
}
def commands() -> dict[str, str]:
    """Every command name -> its module, in help order."""
    found = {**registered("mmrec.commands"), **LIBRARY_COMMANDS}
    rank = {n: i for i, n in enumerate(HELP)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


def command_help(name: str) -> str:
    """A command's one-line help (`HELP`, else the first line of its module's docstring)."""
    if name in HELP:
        return HELP[name]
    doc = (importlib.import_module(commands()[name]).__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def build_parser(name: str) -> tuple[argparse.ArgumentParser, ModuleType]:
    """The argument parser of one command and its module."""
    module = importlib.import_module(commands()[name])
    parser = argparse.ArgumentParser(prog=f"mmrec {name}", description=(module.__doc__ or command_help(name)).strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.configure(parser)
    return parser, module


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options and `key=value` overrides in any order (`mmrec finetune C --model m lr=1`); sub-commands as usual."""
    if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        return parser.parse_args(argv)
    return parser.parse_intermixed_args(argv)


def invoke(name: str, argv: list[str]) -> int:
    """Run `mmrec NAME ARGV...`: input errors (`MmrecError`) print as one line and give exit status 2
    (MMREC_DEBUG=1 raises them instead)."""
    parser, module = build_parser(name)
    args = parse(parser, argv)
    try:
        return int(module.main(args) or 0)
    except MmrecError as e:
        if os.environ.get("MMREC_DEBUG"):
            raise
        print(f"mmrec {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mmrec {name}: interrupted; finished work is kept and a re-run resumes from it", file=sys.stderr)
        return 130


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared shape of stage commands: `mmrec <stage> CONFIG.yaml [key.path=value ...]`."""
    parser.add_argument("config", help="experiment YAML (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="override config values, e.g. split.seed=3")


def load_experiment(args: argparse.Namespace):
    """The ExperimentConfig named by `add_config_arguments`' arguments."""
    from mmrec.experiment import ExperimentConfig

    return ExperimentConfig.load(args.config, args.overrides)
