"""Architecture entries: one declarative record per model, the same for released and searched models.

An entry is a YAML mapping::

    name: dna_a                 # the timm model name
    family: efficientnet        # which builder turns `arch` into modules (see nas_zoo.families)
    arch: {...}                 # the architecture as data; its schema belongs to the family
    pretrained:                 # timm tag -> pretrained cfg (may be empty for architecture-only entries)
      in1k: {hf_hub_id: nas-zoo/dna_a.in1k, input_size: [3, 224, 224], ...}
    paper: {title: ..., arxiv: ..., top1: 77.1, ...}     # optional
    provenance: {...}                                     # optional: where the architecture came from

Every problem is reported as one `EntryError` naming the file and the field.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import yaml

from .errors import NasZooError
from .io import atomic_write_text

__all__ = ["ArchEntry", "EntryError", "load_entry", "Field", "has_entry_shape", "read_yaml_file"]

# libyaml's safe loader when available: same rules as yaml.safe_load, several times faster
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
TAG_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
TOP_LEVEL_KEYS = ("name", "family", "description", "arch", "pretrained", "paper", "provenance")
REQUIRED_KEYS = ("name", "family", "arch")

# pretrained-cfg fields an entry may set (timm's PretrainedCfg fields plus ours, used by the weight resolver)
PRETRAINED_KEYS = {
    "hf_hub_id": str, "hf_hub_filename": str, "url": str, "file": str,
    "input_size": list, "test_input_size": list, "min_input_size": list, "fixed_input_size": bool,
    "interpolation": str, "crop_pct": float, "test_crop_pct": float, "crop_mode": str,
    "mean": list, "std": list, "num_classes": int, "label_names": list,
    "license": str, "description": str, "origin_url": str, "paper_name": str, "paper_ids": str, "notes": list,
    # ours: how the official checkpoint is read (see nas_zoo.checkpoint)
    "official_weights": str,     # 'state_dict' or 'state_dict_ema': what the official evaluation used
    "official_download": str,    # the authors' download link (shown when no weights can be found)
    "official_note": str,
    "checkpoint_layout": str,    # official key layout other than the family's own (see nas_zoo.families)
}
PAPER_KEYS = {
    "title": str, "arxiv": str, "venue": str, "top1": float, "top5": float, "params_m": float,
    "flops_m": float, "flops_note": str, "latency_ms": float, "source": str,
}


class EntryError(NasZooError):
    """A malformed architecture entry. The message names the source and the field."""


@dataclass
class Field:
    """A cursor into an entry being validated: knows its source and dotted path, for error messages."""

    source: str
    path: str
    value: Any

    def error(self, problem: str) -> EntryError:
        return EntryError(self.source, self.path, problem)

    def child(self, key: Union[str, int]) -> "Field":
        if isinstance(key, int):
            path = f"{self.path}[{key}]"
            value = self.value[key]
        else:
            path = f"{self.path}.{key}" if self.path else key
            value = self.value.get(key) if isinstance(self.value, Mapping) else None
        return Field(self.source, path, value)

    def expect(self, typ, what: Optional[str] = None):
        """Check the type; ints are accepted where floats are expected, bools are never numbers."""
        v = self.value
        ok = isinstance(v, typ) and not (isinstance(v, bool) and typ in (int, float, (int, float)))
        if typ is float and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if not ok:
            raise self.error(f"expected {what or _type_name(typ)}, got {_describe(v)}")
        return v

    def mapping(self, required: Sequence[str] = (), allowed: Optional[Sequence[str]] = None) -> dict:
        self.expect(Mapping, "a mapping")
        for key in required:
            if key not in self.value:
                raise self.child(key).error("missing (required)")
        if allowed is not None:
            for key in self.value:
                if key not in allowed:
                    raise Field(self.source, f"{self.path}.{key}" if self.path else str(key), None).error(
                        f"unknown field; expected one of {sorted(allowed)}")
        return dict(self.value)

    def choice(self, options: Sequence[Any]):
        if self.value not in options:
            raise self.error(f"expected one of {list(options)}, got {_describe(self.value)}")
        return self.value

    def number(self, low=None, high=None) -> float:
        v = self.expect(float, "a number")
        if (low is not None and v < low) or (high is not None and v > high):
            raise self.error(f"expected a number in [{low}, {high}], got {v}")
        return v

    def integer(self, low=None) -> int:
        v = self.expect(int, "an integer")
        if low is not None and v < low:
            raise self.error(f"expected an integer >= {low}, got {v}")
        return v

    def int_list(self, length: Optional[int] = None) -> list:
        v = self.expect(list, "a list of integers")
        if length is not None and len(v) != length:
            raise self.error(f"expected a list of {length} integers, got {len(v)} items")
        return [self.child(i).integer() for i in range(len(v))]


def _type_name(typ) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true/false", list: "a list",
             Mapping: "a mapping", dict: "a mapping"}
    return names.get(typ, getattr(typ, "__name__", str(typ)))


def _describe(v) -> str:
    if v is None:
        return "nothing (null)"
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) < 60 else text[:57] + '...'}"


class _EntryDumper(yaml.SafeDumper):
    """yaml.safe_dump, with multi-line strings (e.g. a DenseNAS net_config) written as readable literal blocks."""


_EntryDumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
    "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))


@dataclass
class ArchEntry:
    name: str
    family: str
    arch: Dict[str, Any]
    pretrained: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    paper: Dict[str, Any] = field(default_factory=dict)
    provenance: Dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = "<mapping>"
    path: Optional[Path] = None  # the YAML file it was read from; a relative pretrained `file` is relative to it

    @property
    def default_tag(self) -> Optional[str]:
        return next(iter(self.pretrained), None)

    def to_dict(self) -> dict:
        out = {"name": self.name, "family": self.family}
        if self.description:
            out["description"] = self.description
        out["arch"] = copy.deepcopy(self.arch)
        out["pretrained"] = copy.deepcopy(self.pretrained)
        for key in ("paper", "provenance"):
            if getattr(self, key):
                out[key] = copy.deepcopy(getattr(self, key))
        return out

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=_EntryDumper, sort_keys=False, default_flow_style=None, width=120)

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write the entry atomically (a crash never leaves a half-written entry)."""
        return atomic_write_text(path, self.to_yaml())


def load_entry(obj: Union[str, os.PathLike, Mapping], source: Optional[str] = None) -> ArchEntry:
    """Read and validate an entry from a YAML file or a mapping."""
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        source = source or str(path)
        entry = validate_entry(read_yaml_file(path, source), source)
        entry.path = path.absolute()
        return entry
    data = copy.deepcopy(dict(obj)) if isinstance(obj, Mapping) else obj
    return validate_entry(data, source or "<mapping>")


def read_yaml_file(path: Path, source: Optional[str] = None) -> Any:
    """The YAML document of a file (safe loader); an unreadable file or bad YAML is one EntryError."""
    source = source or str(path)
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise EntryError(source, "<file>", f"cannot read the entry file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise EntryError(source, "<file>", "not a text file (expected UTF-8 YAML)") from None
    try:
        return yaml.load(text, Loader=SAFE_LOADER)
    except yaml.YAMLError as e:
        raise EntryError(source, "<file>", f"not valid YAML: {e}") from None


def has_entry_shape(data: Any) -> bool:
    """Whether a YAML document is meant as an entry: a mapping with the required top-level fields. Other YAML
    beside entries (a search run's resolved.yaml, say) is not an entry."""
    return isinstance(data, Mapping) and all(key in data for key in REQUIRED_KEYS)


def validate_entry(data: Any, source: str) -> ArchEntry:
    from .families import get_family, family_names

    root = Field(source, "", data)
    if not isinstance(data, Mapping):
        raise EntryError(source, "<root>", f"expected a mapping with fields {list(TOP_LEVEL_KEYS)}, "
                                           f"got {_describe(data)}")
    root.mapping(required=REQUIRED_KEYS, allowed=TOP_LEVEL_KEYS)

    name = root.child("name").expect(str)
    if not NAME_RE.match(name):
        raise root.child("name").error(
            f"expected a lowercase identifier (letters, digits, '_'; starting with a letter), got {name!r}")
    fam_field = root.child("family")
    fam_name = fam_field.expect(str)
    if fam_name not in family_names():
        raise fam_field.error(f"unknown family {fam_name!r}; expected one of {family_names()}")
    family = get_family(fam_name)
    arch = family.validate_arch(root.child("arch"))

    pretrained = {}
    pre_field = root.child("pretrained")
    if pre_field.value is not None:
        pre_field.expect(Mapping, "a mapping of tag -> pretrained cfg")
        for tag in pre_field.value:
            tag_field = pre_field.child(tag)
            if not isinstance(tag, str) or not TAG_RE.match(tag):
                raise tag_field.error("a tag must be a lowercase identifier such as 'in1k'")
            pretrained[tag] = _validate_mapping(tag_field, PRETRAINED_KEYS)
            _check_pretrained_cfg(tag_field, pretrained[tag])
            if "checkpoint_layout" in pretrained[tag] and \
                    pretrained[tag]["checkpoint_layout"] not in family.checkpoint_layouts:
                raise tag_field.child("checkpoint_layout").error(
                    f"family {fam_name!r} knows the layouts {sorted(family.checkpoint_layouts)}, "
                    f"got {pretrained[tag]['checkpoint_layout']!r}")

    paper = _validate_mapping(root.child("paper"), PAPER_KEYS) if data.get("paper") is not None else {}
    provenance = root.child("provenance")
    if provenance.value is not None:
        provenance.expect(Mapping, "a mapping")
    description = root.child("description")
    if description.value is not None:
        description.expect(str)
    return ArchEntry(name=name, family=fam_name, arch=arch, pretrained=pretrained, paper=paper,
                     provenance=dict(provenance.value or {}), description=description.value or "",
                     source=source)


def _validate_mapping(f: Field, schema: Mapping[str, type]) -> dict:
    f.mapping(allowed=list(schema))
    out = {}
    for key, typ in schema.items():
        if key in f.value and f.value[key] is not None:
            out[key] = f.child(key).expect(typ)
    return out


def _check_pretrained_cfg(f: Field, cfg: dict) -> None:
    for key in ("input_size", "test_input_size", "min_input_size"):
        if key in cfg:
            v = f.child(key).int_list(3)
            if v[0] < 1 or v[1] < 1 or v[2] < 1:
                raise f.child(key).error(f"expected [channels, height, width] of positive integers, got {v}")
            cfg[key] = v
    for key in ("mean", "std"):
        if key in cfg:
            vals = cfg[key]
            if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in vals):
                raise f.child(key).error(f"expected a list of numbers, got {vals!r}")
            cfg[key] = [float(x) for x in vals]
    if "interpolation" in cfg:
        f.child("interpolation").choice(["bilinear", "bicubic", "nearest", "random"])
    if "official_weights" in cfg:
        f.child("official_weights").choice(["state_dict", "state_dict_ema"])
    if "crop_pct" in cfg and not 0 < cfg["crop_pct"] <= 1.5:
        raise f.child("crop_pct").error(f"expected a number in (0, 1.5], got {cfg['crop_pct']}")
