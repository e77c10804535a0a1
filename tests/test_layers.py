"""The library (`mmrec/`) sits below the stage packages (`data_prep/`, `finetune/`, `eval/`): it never imports them,
by name or by a module string, and they reach it only through the registry (docs/architecture.md)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from mmrec.commands import HELP, commands
from mmrec.registry import hook

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("data_prep", "finetune", "eval")
MODULE_STRING = re.compile(rf"^({'|'.join(STAGES)})(\.\w+)+(:\w+)?$")  # eval.cli, data_prep.config:PrepConfig


def _is_module(dotted: str) -> bool:
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def upward_references(path: Path, stages: tuple[str, ...] = STAGES) -> list[str]:
    """Every import of a stage package in `path`, and every string constant that names one of their modules."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            if _is_module(node.value.partition(":")[0]):
                names = [node.value]
        found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0].split(":")[0]
                  in stages]
    return found


def test_the_library_never_reaches_up_into_the_stages():
    files = sorted((ROOT / "mmrec").rglob("*.py"))
    assert len(files) > 30
    assert [ref for f in files for ref in upward_references(f)] == []


def test_stage_packages_never_import_each_other():
    crossings = []
    for stage in STAGES:
        others = tuple(s for s in STAGES if s != stage)
        crossings += [ref for f in sorted((ROOT / stage).rglob("*.py")) for ref in upward_references(f, others)]
    assert crossings == []


def test_the_check_sees_imports_and_module_strings(tmp_path):
    probe = ROOT / "mmrec" / "_layer_probe.py"  # inside mmrec/ so paths resolve; removed at once
    probe.write_text("import eval.cli\nfrom data_prep.config import x\n"
                     "def f():\n    from finetune import cli\n    return 'eval.score_cli', 'data_prep.config:y'\n"
                     "MSG = 'eval.ks must be positive'\nSTAGE = 'finetune:sasrec'\n")
    try:
        refs = [r.split(": ", 1)[1] for r in upward_references(probe)]
    finally:
        probe.unlink()
    assert sorted(refs) == ["data_prep.config", "data_prep.config:y", "eval.cli", "eval.score_cli", "finetune"]


def test_every_stage_command_and_hook_is_registered():
    """The stage packages register through pyproject.toml's entry points; every command `mmrec --help` lists
    resolves to a module with `configure` and `main`."""
    import importlib

    registered = commands()
    assert set(HELP) <= set(registered)
    for name, module in registered.items():
        mod = importlib.import_module(module)
        assert callable(mod.configure) and callable(mod.main), name
    assert hook("prepare_dataset").__module__ == hook("check_data_options").__module__ == "data_prep.config"


def _runtime_imports(module: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `module` imports when it runs (any depth; `if TYPE_CHECKING:` blocks are type-only)."""
    tree = ast.parse(path.read_text(), str(path))
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
        node.test) for n in ast.walk(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {n for n in names if n in known and n != module}


def test_no_import_cycles():
    """No module of the project imports, directly or through others, one that imports it back (function-level
    imports included: a cycle hidden in a function is still a cycle a reader has to untangle)."""
    files = {}
    for package in ("mmrec", *STAGES):
        for f in (ROOT / package).rglob("*.py"):
            files[".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = f
    graph = {m: _runtime_imports(m, f, set(files)) for m, f in files.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        return False

    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a)})
    assert cycles == []


def test_a_mistyped_command_or_section_names_the_closest_one(run_cli, tmp_path):
    code, _, err = run_cli("evl")
    assert code == 2 and "unknown command 'evl' (did you mean 'eval'?)" in err
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("experiment: {dir: run}\nmodle: {}\n")
    code, _, err = run_cli("validate", cfg)
    assert code == 2 and "unknown section 'modle'; did you mean 'models'?" in err
