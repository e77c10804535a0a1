"""The `mmrec` command: `mmrec <command> [options]`. The commands and how each is run live in `mmrec.commands`."""
from __future__ import annotations

import sys

from mmrec.commands import HELP, command_help, commands, invoke
from mmrec.registry import NOT_INSTALLED


def _usage() -> str:
    names = commands()
    width = max(len(n) for n in names)
    lines = ["usage: mmrec <command> [options]   (mmrec <command> --help for each)", "", "commands:"]
    lines += [f"  {name:<{width}}  {command_help(name)}" for name in names]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"mmrec {version('mmrec')}")
        return 0
    name = argv[0]
    if name in HELP and name not in commands():
        print(f"mmrec: command '{name}' is not available: {NOT_INSTALLED}", file=sys.stderr)
        return 2
    if name not in commands():
        from mmrec.config import closest

        close = closest(name, commands())
        hint = f" (did you mean '{close}'?)" if close else ""
        print(f"mmrec: unknown command '{name}'{hint}\n\n{_usage()}", file=sys.stderr)
        return 2
    return invoke(name, argv[1:])


if __name__ == "__main__":  # python -m mmrec.cli
    sys.exit(main())
