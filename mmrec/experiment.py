"""One experiment = one YAML file = one directory of artifacts.

The YAML has top-level sections (`experiment`, `data`, `split`, `item_summaries`, `user_summaries`,
`models`, `eval`, `report`). Each section is validated by its dataclass, which lives in the library (the stage
packages above it run the sections, the library validates them), looked up in `SECTION_SCHEMAS` so that
validating one section does not import the modules of every other. `models` maps a model name
to a mapping with a `kind` key, validated by the dataclass registered for that kind in `MODEL_KINDS`.
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmrec.config import apply_overrides, closest, from_dict, load_layered_yaml, to_dict
from mmrec.errors import ConfigError
from mmrec.io import hash_json

# section name -> "module:DataclassName"; the stage that owns a section owns its dataclass.
SECTION_SCHEMAS: dict[str, str] = {
    "experiment": "mmrec.experiment:ExperimentSection",
    "data": "mmrec.data.prep_config:PrepConfig",
    "split": "mmrec.data.splits:SplitConfig",
    "item_summaries": "mmrec.summarize.items:ItemSummaryConfig",
    "user_summaries": "mmrec.summarize.users:UserSummaryConfig",
    "eval": "mmrec.eval_config:EvalConfig",
    "report": "mmrec.eval_config:ReportConfig",
}

# model kind -> "module:DataclassName" of its config (each model config has `kind` and its own fields).
MODEL_KINDS: dict[str, str] = {
    "pop": "mmrec.models.pop:PopConfig",
    "gru4rec": "mmrec.models.gru4rec:GRU4RecConfig",
    "sasrec": "mmrec.models.sasrec:SASRecConfig",
    "ctr": "mmrec.models.ctr:CTRConfig",
    "vlm": "mmrec.models.vlm_rec:VLMRecConfig",
}


@dataclass
class ExperimentSection:
    """Where the experiment's artifacts go and the seed every stage derives its own from."""

    name: str = "experiment"
    dir: Path = Path("runs/experiment")
    seed: int = 0
    # Train and score every model once per seed (runs `<model>@seed<k>`); evaluation reports mean and 95% CI.
    seeds: list[int] | None = None


def _walk(obj: Any, key: str):
    """(dotted key, value) of every field of a validated section, nested dataclasses included."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _walk(getattr(obj, f.name), f"{key}.{f.name}")
    else:
        yield key, obj


def _resolve(spec: str) -> type:
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:  # a broken install, not a user error
        raise ConfigError(f"cannot load config schema {spec}: {e}") from e


@dataclass
class ExperimentConfig:
    """A loaded experiment YAML: raw sections, validated on first access."""

    raw: dict[str, Any]
    source: str = "config"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path, overrides: list[str] | None = None) -> "ExperimentConfig":
        raw = apply_overrides(load_layered_yaml(path), overrides or [], where=f"{path} (overrides)")
        cfg = cls(raw=raw, source=str(path))
        cfg.check_sections()
        return cfg

    @classmethod
    def from_mapping(cls, raw: dict[str, Any], source: str = "config") -> "ExperimentConfig":
        cfg = cls(raw=raw, source=source)
        cfg.check_sections()
        return cfg

    def check_sections(self) -> None:
        known = set(SECTION_SCHEMAS) | {"models"}
        for key in self.raw:
            if key not in known:
                close = closest(key, sorted(known))
                hint = f"; did you mean '{close}'?" if close else f"; sections are {', '.join(sorted(known))}"
                raise ConfigError(f"{self.source}: unknown section '{key}'{hint}")

    def has(self, name: str) -> bool:
        return name in self.raw

    def section(self, name: str) -> Any:
        """The validated dataclass for section `name` (defaults when the YAML omits it)."""
        if name not in self._cache:
            if name not in SECTION_SCHEMAS:
                raise ConfigError(f"{self.source}: no such section '{name}'")
            cls = _resolve(SECTION_SCHEMAS[name])
            self._cache[name] = from_dict(cls, self.raw.get(name) or {}, where=self.source, prefix=name)
        return self._cache[name]

    @property
    def experiment(self) -> ExperimentSection:
        return self.section("experiment")

    @property
    def dir(self) -> Path:
        return Path(self.experiment.dir)

    @property
    def seed(self) -> int:
        return self.experiment.seed

    @property
    def paths(self) -> "ExperimentPaths":
        """Where every artifact of this experiment goes."""
        return ExperimentPaths(self.dir)

    @property
    def split_dir(self) -> Path:
        """The directory of the split that the `split` section names, inside the experiment directory."""
        return self.paths.split(self.section("split").dir_name)

    def model_names(self) -> list[str]:
        models = self.raw.get("models") or {}
        if not isinstance(models, dict):
            raise ConfigError(f"{self.source}: 'models' must map model names to their settings")
        return list(models)

    def model(self, name: str) -> Any:
        """The validated config of model `name`; its dataclass is chosen by the `kind` key."""
        key = f"models.{name}"
        if key not in self._cache:
            models = self.raw.get("models") or {}
            if name not in models:
                raise ConfigError(f"{self.source}: no model '{name}' under 'models' "
                                  f"(have: {', '.join(models) or 'none'})")
            spec = models[name]
            if not isinstance(spec, dict) or "kind" not in spec:
                raise ConfigError(f"{self.source}: key '{key}' needs a 'kind' (one of {', '.join(MODEL_KINDS)})")
            kind = spec["kind"]
            if kind not in MODEL_KINDS:
                raise ConfigError(f"{self.source}: key '{key}.kind' must be one of {', '.join(MODEL_KINDS)}, "
                                  f"got {kind!r}")
            cls = _resolve(MODEL_KINDS[kind])
            self._cache[key] = from_dict(cls, spec, where=self.source, prefix=key)
        return self._cache[key]

    def validate_all(self) -> None:
        """Validate every section present and every model: what `mmrec validate` and the config test run."""
        for name in SECTION_SCHEMAS:
            self.section(name)
        for name in self.model_names():
            self.model(name)
        self.check_model_paths()
        self.check_data_options()

    def check_data_options(self) -> None:
        """`data.options` against the options of `data.source`, by the prep stage's own loader (registered as the
        `check_data_options` hook, since the library does not import the importers); a prepared `data.path` has
        none to check."""
        from mmrec.registry import hook

        data = self.section("data")
        if "data" in self.raw and data.path is None:
            hook("check_data_options")(data, self.source)

    def check_model_paths(self) -> None:
        """Every `name_or_path` that is certainly a local folder must exist: found now, not hours into a run."""
        from mmrec.vlm.loading import local_model_problem

        roots = [(n, self.section(n)) for n in SECTION_SCHEMAS if n in self.raw]
        roots += [(f"models.{m}", self.model(m)) for m in self.model_names()]
        for key, value in (kv for name, root in roots for kv in _walk(root, name)):
            problem = local_model_problem(value) if key.endswith(".name_or_path") and isinstance(value, str) else None
            if problem:
                raise ConfigError(f"{self.source}: key '{key}': {problem}; fix the path (relative paths start at the "
                                  "current folder) or give a hub id")

    def with_overrides(self, overrides: list[str]) -> "ExperimentConfig":
        """A copy with `key.path=value` overrides applied (e.g. `experiment.seed=3` for one seed of a run)."""
        return ExperimentConfig.from_mapping(apply_overrides(self.raw, overrides, where=f"{self.source} (overrides)"),
                                             source=self.source)

    def fingerprint(self, *sections: str) -> str:
        """Hash of the validated content of some sections: a stage re-runs when its fingerprint changes."""
        content = {}
        for s in sections:
            if s.startswith("models."):
                content[s] = to_dict(self.model(s.split(".", 1)[1]))
            else:
                content[s] = to_dict(self.section(s))
        return hash_json(content)


@dataclass(frozen=True)
class ExperimentPaths:
    """Every artifact's place inside an experiment directory: one artifact per stage (docs/artifacts.md)."""

    root: Path

    @staticmethod
    def run_id(model: str, seed: int | None = None) -> str:
        """Name of one training run: the model name, or `<model>@seed<k>` when a model runs under several seeds."""
        return model if seed is None else f"{model}@seed{seed}"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    def split(self, name: str) -> Path:
        return self.root / "splits" / name

    @property
    def item_summaries(self) -> Path:
        return self.root / "summaries" / "items.parquet"

    @property
    def user_summaries(self) -> Path:
        return self.root / "summaries" / "users.parquet"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def checkpoint(self, run: str) -> Path:
        return self.root / "checkpoints" / run

    def scores(self, run: str) -> Path:
        return self.root / "scores" / f"{run}.parquet"

    def metrics(self, run: str) -> Path:
        return self.root / "metrics" / f"{run}.json"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"


def runs_of(cfg: ExperimentConfig, names: list[str],
            seeds: list[int] | None) -> list[tuple[str, str, ExperimentConfig]]:
    """(model name, run id, config of that run) for every model x seed; one run per model without seeds."""
    if not seeds:
        return [(n, ExperimentPaths.run_id(n), cfg) for n in names]
    return [(n, ExperimentPaths.run_id(n, s), cfg.with_overrides([f"experiment.seed={s}"]))
            for n in names for s in seeds]
