"""`mmrec run`: every stage of an experiment in order, like make.

Each stage has a fingerprint: the hash of the config sections it reads plus the fingerprints of the stages it
depends on. A stage is up to date when its stamp (`<dir>/.mmrec/stages/<stage>.json`, written only after the stage
finished) holds the current fingerprint; otherwise it runs, and so does everything downstream whose fingerprint
changes with it. A stage that was interrupted is simply run again: every stage resumes its own finished work
(generation caches, training checkpoints). Training resumes only an interrupted run of the *same* fingerprint.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mmrec.commands import invoke
from mmrec.data.canonical import INTERACTIONS_FILE, ITEMS_FILE
from mmrec.data.splits import CANDIDATES_FILE, make_split
from mmrec.errors import MmrecError
from mmrec.experiment import ExperimentConfig, ExperimentPaths
from mmrec.io import hash_json, read_json, write_json
from mmrec.progress import get_logger
from mmrec.registry import hook

log = get_logger("run")

# model kind -> the summary stages its inputs come from (besides the split)
KIND_INPUTS: dict[str, tuple[str, ...]] = {
    "pop": (),
    "gru4rec": (),
    "sasrec": (),
    "ctr": ("summarize-items",),
    "vlm": ("summarize-items", "summarize-users"),
}


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system): what a stage costs whatever the load."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class Stage:
    """One node of the pipeline: what it reads (config sections, upstream stages) and how it runs."""

    name: str
    sections: tuple[str, ...]
    deps: tuple[str, ...]
    run: Callable[[bool], None]  # run(fresh): fresh=True means discard an interrupted run of an older config
    outputs: Callable[[], list[Path]] = field(default=lambda: [])
    fingerprint: str = ""


class Pipeline:
    """The stages of one experiment config, with their fingerprints and stamps."""

    def __init__(self, cfg: ExperimentConfig, config_path: str, overrides: list[str]):
        self.cfg = cfg
        self.config_path = config_path
        self.overrides = overrides
        self.paths = cfg.paths
        self.stamps = cfg.dir / ".mmrec" / "stages"
        self.stages = self._build()
        self._fingerprint_all()

    # -- graph -------------------------------------------------------------------------------------
    def _cli(self, *args: str) -> None:
        code = invoke(args[0], [self.config_path, *self.overrides, *args[1:]])
        if code != 0:
            raise MmrecError(f"stage '{args[0]}' failed (exit {code}); "
                             "fix the error above and re-run `mmrec run` to resume")

    def dataset_dir(self) -> Path:
        data = self.cfg.section("data")
        return Path(data.path) if data.path else self.paths.dataset

    def split_dir(self) -> Path:
        return self.cfg.split_dir

    def _build(self) -> list[Stage]:
        cfg = self.cfg
        seeds = cfg.experiment.seeds
        seed_args = ["--seeds", *map(str, seeds)] if seeds else []
        stages = [
            Stage("prep", ("data",), (), self._run_prep, lambda: [self.dataset_dir() / INTERACTIONS_FILE]),
            Stage("split", ("split", "experiment"), ("prep",), self._run_split,
                  lambda: [self.split_dir() / CANDIDATES_FILE]),
        ]
        if cfg.has("item_summaries"):
            stages.append(Stage("summarize-items", ("item_summaries",), ("prep",),
                                lambda fresh: self._cli("summarize-items"), lambda: [self.paths.item_summaries]))
        if cfg.has("user_summaries"):
            deps = ("split", "summarize-items") if cfg.has("item_summaries") else ("split",)
            stages.append(Stage("summarize-users", ("user_summaries",), deps,
                                lambda fresh: self._cli("summarize-users"), lambda: [self.paths.user_summaries]))
        present = {s.name for s in stages}
        runs = [ExperimentPaths.run_id(m, s) for m in cfg.model_names() for s in (seeds or [None])]
        for model in cfg.model_names():
            kind = cfg.model(model).kind
            deps = ("split", *[d for d in KIND_INPUTS.get(kind, ()) if d in present])
            model_runs = [ExperimentPaths.run_id(model, s) for s in (seeds or [None])]
            if getattr(cfg.model(model), "distill", None) is not None:  # teacher -> signals -> student
                from mmrec.distill.signals import signals_stage

                signals = signals_stage(cfg, model, seed_args, self._cli)
                stages.append(Stage(signals["name"], signals["sections"], signals["deps"], signals["run"],
                                    signals["outputs"]))
                deps = (*deps, signals["name"])
            stages.append(Stage(
                f"finetune:{model}", (f"models.{model}", "experiment"), deps,
                lambda fresh, m=model: self._cli("finetune", "--model", m, *seed_args,
                                                 *(["--no-resume"] if fresh else [])),
                lambda rs=model_runs: [self.paths.checkpoint(r) for r in rs]))
            stages.append(Stage(
                f"score:{model}", ("eval",), (f"finetune:{model}",),  # protocol/stages change what is scored
                lambda fresh, m=model: self._cli("score", "--model", m, *seed_args),
                lambda rs=model_runs: [self.paths.scores(r) for r in rs]))
        if cfg.model_names():
            stages.append(Stage("eval", ("eval",), tuple(f"score:{m}" for m in cfg.model_names()),
                                lambda fresh: self._cli("eval"), lambda: [self.paths.metrics(r) for r in runs]))
            report_deps = ("eval", *[d for d in ("summarize-items", "summarize-users") if d in present])
            stages.append(Stage("report", ("report",), report_deps,
                                lambda fresh: self._cli("report"), self._report_outputs))
        return stages

    def _report_outputs(self) -> list[Path]:
        formats = self.cfg.section("report").formats
        return [p for f, p in (("md", self.paths.report_md), ("html", self.paths.report_html)) if f in formats]

    def _run_prep(self, fresh: bool) -> None:
        data = self.cfg.section("data")
        if data.path:
            if not (Path(data.path) / INTERACTIONS_FILE).is_file():
                raise MmrecError(f"{self.cfg.source}: data.path {data.path} is not a canonical dataset; "
                                 "run `mmrec prep` first")
            return
        hook("prepare_dataset")(data, self.paths.dataset, where=self.cfg.source)

    def _run_split(self, fresh: bool) -> None:
        # The config is the source of truth under `mmrec run`: a changed split section replaces the old split
        # (and, through fingerprints, everything scored on it).
        make_split(self.dataset_dir(), self.cfg.section("split"), self.split_dir(), overwrite=True)

    def _fingerprint_all(self) -> None:
        by_name = {s.name: s for s in self.stages}
        for stage in self.stages:  # stages are in dependency order
            content = {s: self.cfg.fingerprint(s) for s in stage.sections}
            if stage.name == "prep":
                content["inputs"] = self._prep_inputs()
            content["deps"] = {d: by_name[d].fingerprint for d in stage.deps if d in by_name}
            stage.fingerprint = hash_json(content)

    def _prep_inputs(self) -> str:
        """Hash of the size and mtime of every input file, so a changed raw file (or dataset) re-runs prep.

        A prepared dataset (`data.path`) is its two canonical tables; raw inputs are every file under each path
        the options name (all of them: a changed image deep in a folder must count too)."""
        data = self.cfg.section("data")
        if data.path:
            roots = [Path(data.path) / ITEMS_FILE, Path(data.path) / INTERACTIONS_FILE]
        else:
            values = [p for v in data.options.values() for p in (v if isinstance(v, list) else [v])]
            roots = [Path(p) for p in values if isinstance(p, str) and Path(p).exists()]
        digest = hashlib.sha256()
        for root in roots:
            for f in (sorted(root.rglob("*")) if root.is_dir() else [root]):
                if f.is_file():
                    st = f.stat()
                    digest.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return digest.hexdigest()

    # -- state -------------------------------------------------------------------------------------
    def _stamp(self, stage: Stage, suffix: str = "") -> Path:
        return self.stamps / f"{stage.name.replace(':', '__')}{suffix}.json"

    def status(self, stage: Stage) -> tuple[bool, str]:
        """(needs to run, why)."""
        stamp = self._stamp(stage)
        if not stamp.is_file():
            started = self._stamp(stage, ".started")
            if started.is_file() and read_json(started).get("fingerprint") == stage.fingerprint:
                return True, "interrupted earlier: resumes"
            return True, "never ran"
        if read_json(stamp).get("fingerprint") != stage.fingerprint:
            return True, "config or inputs changed"
        missing = [p for p in stage.outputs() if not p.exists()]
        if missing:
            return True, f"output missing: {missing[0]}"
        return False, "up to date"

    def select(self, only: list[str] | None, start: str | None) -> list[tuple[Stage, bool, str]]:
        """Every stage with (run?, why) after applying --only / --from."""
        names = [s.name for s in self.stages]

        def matches(name: str, pattern: str) -> bool:
            return name == pattern or name.split(":")[0] == pattern

        for pattern in (only or []) + ([start] if start else []):
            if not any(matches(n, pattern) for n in names):
                raise MmrecError(f"no stage '{pattern}' in this experiment; stages: {', '.join(names)}")
        plan = []
        forced_from = None
        if start:
            forced_from = next(i for i, n in enumerate(names) if matches(n, start))
        for i, stage in enumerate(self.stages):
            needed, why = self.status(stage)
            if only is not None:
                if any(matches(stage.name, p) for p in only):
                    plan.append((stage, True, "requested with --only"))
                else:
                    plan.append((stage, False, "not requested"))
                continue
            if forced_from is not None and i >= forced_from:
                plan.append((stage, True, f"requested with --from {start}"))
            else:
                plan.append((stage, needed, why))
        return plan

    def check_plan(self, stages: set[str], refuse: bool = True) -> None:
        """`mmrec plan` first: print every stage's budget and refuse a max_length that cannot fit one of `stages`
        (those about to run), before any stage runs; `refuse=False` (a dry run) only says it would refuse. A model
        the plan cannot find offline is noted, not refused (the run may download it)."""
        from mmrec.plan import make_plan

        budget = make_plan(self.cfg, strict=False)
        print(budget.text(), flush=True)
        if refuse:
            budget.check(stages)
        for reason in budget.refusals(stages):
            print(f"[would refuse] {reason}", flush=True)

    def run(self, only: list[str] | None = None, start: str | None = None, dry_run: bool = False,
            check_plan: bool = False) -> list[str]:
        """Run what needs running (after `check_plan()` when asked); returns the stages that ran (or would run)."""
        plan = self.select(only, start)
        if check_plan:
            self.check_plan({stage.name for stage, needed, _ in plan if needed}, refuse=not dry_run)
        ran = []
        for stage, needed, why in plan:
            verb = ("would run" if dry_run else "run") if needed else "skip"
            print(f"[{verb:>9}] {stage.name:<26} {why}", flush=True)
            if not needed or dry_run:
                ran += [stage.name] if needed else []
                continue
            started = self._stamp(stage, ".started")
            # Start over (no training resume) when forced or when leftover state belongs to another config.
            stale = started.is_file() and read_json(started).get("fingerprint") != stage.fingerprint
            fresh = stale or why.startswith("requested")
            write_json({"fingerprint": stage.fingerprint, "started_at": time.time()}, started)
            t0, cpu0 = time.time(), cpu_seconds()
            stage.run(fresh)
            seconds, cpu = round(time.time() - t0, 2), round(cpu_seconds() - cpu0, 2)
            write_json({"fingerprint": stage.fingerprint, "seconds": seconds, "cpu_seconds": cpu,
                        "outputs": [str(p) for p in stage.outputs()]}, self._stamp(stage))
            print(f"[     done] {stage.name:<26} {seconds:.1f} s wall, {cpu:.1f} s CPU", flush=True)
            ran.append(stage.name)
        return ran
