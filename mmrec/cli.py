"""The `mmrec` command. Each subcommand lives in its own module, imported only when it is invoked,
so `mmrec --help` is instant and one stage's heavy imports never slow another's.

A command module provides `configure(parser)` (adds its arguments) and `main(args) -> int`.
Errors caused by input (`MmrecError`) are printed as one line, exit status 2; set MMREC_DEBUG=1 for the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help); order is the order of a typical experiment.
COMMANDS: dict[str, tuple[str, str]] = {
    "prep": ("data_prep.cli", "import a raw dataset (or generate the synthetic one) into the canonical form"),
    "split": ("data_prep.split_cli", "split a canonical dataset and write its persisted candidate sets"),
    "summarize-items": ("mmrec.summarize.items_cli", "VLM: turn every item image (and text) into a text summary"),
    "summarize-users": ("mmrec.summarize.users_cli", "LLM: recurrent natural-language preference per user"),
    "finetune": ("finetune.cli", "train a model of the experiment (LoRA VLM, CTR head, sequential baselines)"),
    "score": ("eval.score_cli", "score a model on the split's persisted candidates -> scores/<model>.parquet"),
    "eval": ("eval.cli", "metrics + protocol manifest for every scored model"),
    "report": ("eval.report_cli", "Markdown and self-contained HTML report of an experiment"),
    "plan": ("mmrec.plan_cli", "prompt tokens and GPU/host memory of every stage, before anything loads weights"),
    "run": ("mmrec.pipeline_cli", "run every stage of an experiment config, skipping finished ones"),
    "demo": ("mmrec.demo", "the whole pipeline on the synthetic benchmark with tiny models (CPU, no downloads)"),
    "validate": ("mmrec.validate_cli", "load and validate an experiment config without running anything"),
    "tiny": ("mmrec.tiny_cli", "build tiny random models (LLaVA, LLaVA-NeXT, text LLM, CLIP) for tests and dry runs"),
    "export": ("eval.export_cli", "export a split to other toolkits' formats (RecBole atomic files)"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: mmrec <command> [options]   (mmrec <command> --help for each)", "", "commands:"]
    lines += [f"  {name:<{width}}  {helptext}" for name, (_, helptext) in COMMANDS.items()]
    return "\n".join(lines)


def build_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    """The argument parser of one subcommand and its module."""
    module_name, helptext = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"mmrec {name}", description=(module.__doc__ or helptext).strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.configure(parser)
    return parser, module


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options and `key=value` overrides in any order (`mmrec finetune C --model m lr=1`); sub-commands as usual."""
    if any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        return parser.parse_args(argv)
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    from mmrec.errors import MmrecError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"mmrec {version('mmrec')}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        print(f"mmrec: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    parser, module = build_parser(name)
    args = parse(parser, argv[1:])
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
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="override config values, e.g. split.seed=3")


def load_experiment(args: argparse.Namespace):
    """The ExperimentConfig named by `add_config_arguments`' arguments."""
    from mmrec.experiment import ExperimentConfig

    return ExperimentConfig.load(args.config, args.overrides)


if __name__ == "__main__":  # python -m mmrec.cli
    sys.exit(main())
