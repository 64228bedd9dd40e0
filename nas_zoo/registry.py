"""Entries -> timm models: each registered entry becomes a timm entrypoint with its pretrained cfgs."""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Union

import timm
import torch
from timm.models import generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg

from .entry import ArchEntry, EntryError, load_entry
from .families import get_family

__all__ = ["register_entry", "register_directory", "get_entry", "list_entries", "create_from_entry",
           "ENTRIES_ENV", "builtin_entry_dir"]

ENTRIES_ENV = "NAS_ZOO_ENTRIES"
# cfg fields of ours that timm's PretrainedCfg does not know; kept in the entry, read by nas_zoo.weights
OUR_CFG_KEYS = ("official_weights", "official_download", "official_note", "checkpoint_layout")

default_cfgs: Dict[str, object] = {}  # read by timm.register_model, as in timm's own model modules
_ENTRIES: Dict[str, ArchEntry] = {}


def builtin_entry_dir() -> Path:
    from importlib.resources import files
    return Path(str(files("nas_zoo.configs") / "models"))


def _timm_cfgs(entry: ArchEntry) -> dict:
    family = get_family(entry.family)
    reduction = family.reduction(entry.arch)

    def complete(cfg: dict) -> dict:
        cfg = {**family.cfg_defaults,
               **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k not in OUR_CFG_KEYS}}
        if cfg.get("file") and entry.path is not None:  # a relative file is relative to the entry's YAML
            cfg["file"] = str(entry.path.parent / Path(cfg["file"]).expanduser())
        _, h, w = cfg.setdefault("input_size", (3, 224, 224))
        cfg.setdefault("pool_size", (math.ceil(h / reduction), math.ceil(w / reduction)))
        return cfg

    cfgs = {f"{entry.name}.{tag}": complete(cfg) for tag, cfg in entry.pretrained.items()}
    if not cfgs:  # architecture-only entry: defaults, no weights
        cfgs[entry.name] = complete({})
    return generate_default_cfgs(cfgs)[entry.name]


def _make_entrypoint(entry: ArchEntry):
    name = entry.name

    def entrypoint(pretrained: bool = False, **kwargs):
        return create_from_entry(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = _docstring(entry)
    return entrypoint


def _docstring(entry: ArchEntry) -> str:
    paper = entry.paper
    lines = [entry.description or f"{entry.name} ({entry.family} family)."]
    if paper.get("title"):
        lines.append(f"Paper: {paper['title']}" + (f" (arXiv:{paper['arxiv']})" if paper.get("arxiv") else ""))
    facts = [f"{label} {paper[key]}{unit}" for key, label, unit in
             (("top1", "top-1", "%"), ("params_m", "params", "M"), ("flops_m", "FLOPs", "M"))
             if paper.get(key) is not None]
    if facts:
        lines.append("Paper numbers: " + ", ".join(facts) + ".")
    if entry.pretrained:
        lines.append("Weights: " + ", ".join(f"{entry.name}.{t}" for t in entry.pretrained) + ".")
    return "\n".join(lines)


def register_entry(obj: Union[str, os.PathLike, Mapping, ArchEntry], replace: bool = False) -> str:
    """Register an entry (a YAML path, a mapping or an ArchEntry) with timm; return the timm model name.

    Registering the same entry again is a no-op. A different entry under a registered name is refused
    unless ``replace=True``; a name that belongs to a timm model is always refused.
    """
    entry = obj if isinstance(obj, ArchEntry) else load_entry(obj)
    name = entry.name
    if name in _ENTRIES:
        if _ENTRIES[name].to_dict() == entry.to_dict():
            return name
        if not replace:
            raise EntryError(entry.source, "name", f"'{name}' is already registered from {_ENTRIES[name].source}; "
                                                   "choose another name or pass replace=True")
    elif name in timm.list_models() or timm.is_model(name):
        raise EntryError(entry.source, "name", f"'{name}' clashes with an existing timm model; choose another name")
    default_cfgs[name] = _timm_cfgs(entry)
    _ENTRIES[name] = entry
    _REFERENCE_KEYS.pop(name, None)
    with warnings.catch_warnings():  # replacing was asked for explicitly; timm's overwrite warning is noise
        warnings.simplefilter("ignore", UserWarning)
        register_model(_make_entrypoint(entry))
    return name


def register_directory(directory: Union[str, os.PathLike]) -> List[str]:
    """Register every ``*.yaml`` entry in a directory (sorted by file name)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise EntryError(str(directory), "<directory>", "entry directory does not exist")
    return [register_entry(p) for p in sorted(directory.glob("*.yaml"))]


def register_env_directories(value: Optional[str] = None) -> List[str]:
    value = os.environ.get(ENTRIES_ENV, "") if value is None else value
    names = []
    for part in value.split(os.pathsep):
        if part.strip():
            names += register_directory(part.strip())
    return names


def get_entry(name: str) -> ArchEntry:
    name = name.split(".")[0]
    if name.startswith("hf-hub:") or name not in _ENTRIES:
        raise KeyError(f"no nas_zoo entry named {name!r}; registered: {sorted(_ENTRIES)}")
    return _ENTRIES[name]


def list_entries(family: Optional[str] = None) -> List[ArchEntry]:
    return [e for e in _ENTRIES.values() if family is None or e.family == family]


_REFERENCE_KEYS: Dict[str, Dict[str, tuple]] = {}


def reference_state_shapes(name: str) -> Dict[str, tuple]:
    """Key -> shape of the entry's model as released (default head), built on the meta device (no memory)."""
    if name not in _REFERENCE_KEYS:
        entry = _ENTRIES[name]
        with torch.device("meta"):
            model = get_family(entry.family).build(entry, pretrained=False,
                                                   pretrained_cfg=resolve_pretrained_cfg(name).to_dict())
        _REFERENCE_KEYS[name] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _REFERENCE_KEYS[name]


def create_from_entry(name: str, pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                      cache_dir=None, use_ema: Optional[bool] = None, **kwargs) -> torch.nn.Module:
    """Build a registered entry; with ``pretrained`` its weights are resolved by `nas_zoo.weights`.

    use_ema: which weights to take from an official checkpoint that has both (None: what the official
    evaluation used, as the entry records it).
    """
    from .weights import load_pretrained_state_dict

    entry = _ENTRIES[name]
    family = get_family(entry.family)
    cfg = resolve_pretrained_cfg(name, pretrained_cfg=pretrained_cfg,
                                 pretrained_cfg_overlay=pretrained_cfg_overlay).to_dict()
    if pretrained:
        state_dict = load_pretrained_state_dict(entry, cfg, cache_dir=cache_dir, use_ema=use_ema)
        # timm loads cfg['state_dict'] first; a tiny placeholder there keeps timm from copying the weights
        # into model.pretrained_cfg, and the filter hands timm the real ones (it then adapts in_chans/classes).
        cfg["state_dict"] = {"placeholder": torch.empty(0)}
        cfg["source"] = None
        kwargs["pretrained_filter_fn"] = lambda _sd, _model=None: state_dict
    model = family.build(entry, pretrained=pretrained, pretrained_cfg=cfg, **kwargs)
    for module in (model, *model.children()):
        module_cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(module_cfg, dict):
            module_cfg.pop("state_dict", None)
    return model


def register_builtin_entries() -> List[str]:
    return register_directory(builtin_entry_dir())
