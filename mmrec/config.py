"""Typed configuration: YAML files validated against dataclasses, plus `key.path=value` overrides.

A config section is a plain dataclass. `from_dict` checks every key and type and names the file and the
dotted key on any error, suggesting the closest known key for typos. Overrides are parsed as YAML scalars
(`lr=3e-4`, `lora.r=8`, `targets=[q_proj,v_proj]`, `name=null`).
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
from pathlib import Path
from typing import Any, Collection, Iterable, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from mmrec.errors import ConfigError

T = TypeVar("T")
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; syntax errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{line} invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_layered_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping that may build on another: a top-level `base: FILE` (relative to this file) is loaded
    first, `remove: [dotted.key, ...]` drops keys of it, and this file's own keys are merged over it (mappings key
    by key, any other value replaced). An ablation thus states only what it changes."""
    path = Path(path)
    data = load_yaml(path)
    if "base" not in data:
        if "remove" in data:
            raise ConfigError(f"{path}: 'remove' drops keys of a 'base' config, and this file names none")
        return data
    base_name, remove = data.pop("base"), data.pop("remove", [])
    if not isinstance(base_name, str) or not base_name:
        raise ConfigError(f"{path}: 'base' must be the path of another config file, got {base_name!r}")
    if not isinstance(remove, list) or not all(isinstance(k, str) and k for k in remove):
        raise ConfigError(f"{path}: 'remove' must be a list of dotted keys such as models.tallrec, got {remove!r}")
    base_path = (path.parent / base_name).resolve()
    if base_path in _chain or base_path == path.resolve():
        raise ConfigError(f"{path}: 'base: {base_name}' leads back to a file already being loaded")
    merged = load_layered_yaml(base_path, (*_chain, path.resolve()))
    for key in remove:
        *parents, last = key.split(".")
        node = merged
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or last not in node:
            raise ConfigError(f"{path}: 'remove' names {key!r}, which {base_name} does not have")
        del node[last]
    return _merge(merged, data)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str], where: str = "command line") -> dict[str, Any]:
    """Return a copy of `data` with each `a.b.c=value` applied (value parsed as YAML)."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where}: override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"{where}: override {item!r} has an empty key part")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{where}: override {item!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against annotation `tp`, converting only where lossless (int->float, str->Path)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        real = [a for a in args if a is not type(None)]
        if len(real) == 1 and dataclasses.is_dataclass(real[0]):  # an optional section: its own error names the key
            return _coerce(value, real[0], key, where)
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: key '{key}' must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: key '{key}' must be one of "
                              f"{', '.join(repr(a) for a in get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}' must be a mapping (section {tp.__name__}), got {value!r}")
        return from_dict(tp, value, where=where, prefix=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: key '{key}' must be a list, got {value!r}")
        args = get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{key}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: key '{key}' must be a mapping, got {value!r}")
        kt, vt = (get_args(tp) or (Any, Any))
        return {_coerce(k, kt, key, where): _coerce(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)  # PyYAML reads `3e-4` (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}' must be a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: key '{key}' must be a path string, got {value!r}")
        return Path(value).expanduser()  # YAML does not pass through a shell: `~/runs` is the home folder's
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: key '{key}' must be {_type_name(tp)}, got {value!r}")


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice a mistyped `word` most likely meant (a key, section or command name), or None."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return close[0] if close else None


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config", prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, validating keys and types; errors name `where` and the dotted key."""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: section '{prefix or cls.__name__}' must be a mapping, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = closest(key, fields)
            hint = f"; did you mean '{close}'?" if close else ""
            raise ConfigError(f"{where}: unknown key '{dotted}'{hint} valid keys: {', '.join(sorted(fields))}")
        kwargs[key] = _coerce(value, hints[key], dotted, where)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        dotted = ", ".join(f"{prefix}.{m}" if prefix else m for m in missing)
        raise ConfigError(f"{where}: missing required key(s) {dotted}")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ checks raise these
        raise ConfigError(f"{where}: section '{prefix or cls.__name__}': {e}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass (tree) as plain YAML/JSON-ready values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_section(cls: type[T], path: str | Path, overrides: list[str] | None = None) -> T:
    """Load one dataclass from a whole YAML file (plus overrides)."""
    data = apply_overrides(load_yaml(path), overrides or [])
    return from_dict(cls, data, where=str(path))


def option(default: Any, helptext: str) -> Any:
    """A dataclass field with its command-line help (`add_options` makes a flag of it); `default` may be
    `dataclasses.MISSING` (a required option) or a list (copied for each instance)."""
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"help": helptext})
    return dataclasses.field(default=default, metadata={"help": helptext})


def _option_kwargs(tp: Any, name: str, default: Any) -> dict[str, Any]:
    """argparse settings for a field annotated `tp` (Optional unwrapped) whose default is `default`."""
    args = [a for a in get_args(tp) if a is not type(None)]
    if get_origin(tp) in (Union, types.UnionType) and len(args) == 1:
        tp = args[0]
    origin = get_origin(tp)
    if origin is Literal:
        values = list(get_args(tp))
        return {"type": type(values[0]), "choices": values}
    if origin is list and get_args(tp)[0] in (int, float, str, Path):
        return {"type": get_args(tp)[0], "nargs": "*" if default == [] else "+"}
    if tp is bool:
        import argparse

        return {"action": argparse.BooleanOptionalAction}
    if tp in (int, float, str, Path):
        return {"type": tp}
    raise TypeError(f"field '{name}' of type {tp} has no command-line form")


def add_options(parser: Any, cls: type, skip: Collection[str] = ()) -> None:
    """One `--field-name` option per field of dataclass `cls` (but those named in `skip`), typed from its
    annotation (Literal gives choices, a list several values, a bool a `--flag`/`--no-flag` pair) with its
    `metadata["help"]` and default: the dataclass is the one source of a flag's type, default and help, so a
    command line and the YAML key it sets never disagree. A field without a default is a required option; a list
    whose default is empty may be given with no values. Options left out are None (`options_from_args` drops
    them, so the dataclass default applies)."""
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if required else f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        helptext = f.metadata.get("help", "")
        if default is not None and default != []:
            helptext = f"{helptext} (default {' '.join(map(str, default)) if isinstance(default, list) else default})"
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, required=required,
                            help=helptext, **_option_kwargs(hints[f.name], f.name, default))


def options_from_args(args: Any, cls: type) -> dict[str, Any]:
    """The fields of `cls` given on the command line (see `add_options`), ready for `from_dict`."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


__all__ = ["add_options", "apply_overrides", "from_dict", "load_layered_yaml", "load_section", "load_yaml", "option",
           "options_from_args", "to_dict"]
