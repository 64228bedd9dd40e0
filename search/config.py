"""Search configs: YAML files checked against a strict schema, with dotted ``key.path=value`` overrides.

A schema is a nested mapping ``key -> Opt(type, default)`` or ``key -> {sub-schema}``. Loading fills in the
defaults, rejects unknown keys and wrong types, and reports every problem as one `ConfigError` naming the
file and the dotted key. Override values are parsed with ``yaml.safe_load`` (``lr=0.1``, ``stages=[0,1]``).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

import yaml

from nas_zoo.errors import NasZooError

__all__ = ["ConfigError", "Opt", "load_config", "apply_overrides", "validate", "dump_yaml", "check_bounds"]

REQUIRED = object()


class ConfigError(NasZooError):
    """A bad search config. The message names the source and the dotted key."""

    label = "key"

    @property
    def key(self) -> str:
        return self.field


@dataclass(frozen=True)
class Opt:
    """One leaf of a schema: accepted type(s), default (REQUIRED if none), optional choices, and for numbers
    optional bounds: `low` / `high` inclusive, `above` exclusive (a learning rate: above=0)."""

    type: Any
    default: Any = REQUIRED
    choices: Optional[Sequence[Any]] = None
    help: str = ""
    low: Optional[float] = None
    high: Optional[float] = None
    above: Optional[float] = None


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false", list: "a list",
               dict: "a mapping", type(None): "null"}


def _type_name(typ) -> str:
    if isinstance(typ, tuple):
        return " or ".join(_type_name(t) for t in typ)
    return _TYPE_NAMES.get(typ, getattr(typ, "__name__", str(typ)))


def _check_leaf(opt: Opt, value: Any, source: str, key: str) -> Any:
    types = opt.type if isinstance(opt.type, tuple) else (opt.type,)
    if value is None and type(None) in types:
        return None
    if isinstance(value, bool) and bool not in types:
        raise ConfigError(source, key, f"expected {_type_name(opt.type)}, got {value!r}")
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if int not in types else value
    if not isinstance(value, tuple(t for t in types if t is not type(None))):
        shown = repr(value) if len(repr(value)) < 60 else repr(value)[:57] + "..."
        raise ConfigError(source, key, f"expected {_type_name(opt.type)}, got {type(value).__name__} {shown}")
    if opt.choices is not None and value not in opt.choices:
        raise ConfigError(source, key, f"expected one of {list(opt.choices)}, got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        check_bounds(value, source, key, low=opt.low, high=opt.high, above=opt.above)
    return value


def check_bounds(value, source: str, key: str, low=None, high=None, above=None) -> None:
    """One ConfigError when a number lies outside [low, high] or is not greater than `above`."""
    bad = (low is not None and value < low) or (high is not None and value > high) or \
          (above is not None and not value > above)
    if bad:
        floor = above if above is not None else low
        if floor is not None and high is not None:
            what = f"in {'(' if above is not None else '['}{floor:g}, {high:g}]"
        elif high is not None:
            what = f"<= {high:g}"
        else:
            what = f"{'>' if above is not None else '>='} {floor:g}"
        raise ConfigError(source, key, f"expected a number {what}, got {value!r}")


def validate(data: Any, schema: Mapping[str, Any], source: str, prefix: str = "") -> dict:
    """Validate `data` against `schema`; return a new dict with every default filled in."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(source, prefix or "<root>", f"expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in schema:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(source, where, f"unknown key; expected one of {sorted(schema)}")
    out = {}
    for key, spec in schema.items():
        where = f"{prefix}.{key}" if prefix else key
        if isinstance(spec, Mapping):
            out[key] = validate(data.get(key), spec, source, where)
        elif key in data:
            out[key] = _check_leaf(spec, data[key], source, where)
        elif spec.default is REQUIRED:
            raise ConfigError(source, where, f"missing (required; {_type_name(spec.type)})")
        else:
            out[key] = copy.deepcopy(spec.default)
    return out


def apply_overrides(data: dict, overrides: Sequence[str], source: str = "<overrides>") -> dict:
    """Apply ``a.b.c=value`` overrides (value parsed with yaml.safe_load) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(source, item, "an override must look like key.path=value")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(source, key, f"cannot parse the value {text!r}: {e}") from None
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(source, ".".join(parts[:i + 1]), "is not a mapping; cannot set a sub-key")
            node = nxt
        node[parts[-1]] = value
    return data


def read_yaml(path: Union[str, os.PathLike]) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), "<file>", f"cannot read the config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(str(path), "<file>", f"not valid YAML: {e}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "<root>", f"expected a mapping, got {type(data).__name__}")
    return data


def load_config(path: Union[str, os.PathLike, Mapping], schema: Mapping[str, Any],
                overrides: Sequence[str] = ()) -> Tuple[dict, str]:
    """Read a YAML config (or take a mapping), apply overrides, validate; return (config, source name)."""
    if isinstance(path, Mapping):
        data, source = copy.deepcopy(dict(path)), "<config>"
    else:
        data, source = read_yaml(path), str(path)
    apply_overrides(data, overrides, source)
    return validate(data, schema, source), source


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
