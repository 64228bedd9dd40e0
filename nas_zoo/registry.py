"""Entries -> timm models: each registered entry becomes a timm entrypoint with its pretrained cfgs."""
from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

import timm
import torch
from timm.models import generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg

from .entry import ArchEntry, EntryError, has_entry_shape, load_entry, read_yaml_file, validate_entry
from .families import get_family

__all__ = ["register_entry", "register_directory", "get_entry", "list_entries", "create_from_entry",
           "ENTRIES_ENV", "EntryWarning", "builtin_entry_dir", "family_architecture", "adopt_entry",
           "ENTRY_ARG"]

ENTRIES_ENV = "NAS_ZOO_ENTRIES"
# cfg fields of ours that timm's PretrainedCfg does not know; kept in the entry, read by nas_zoo.weights
OUR_CFG_KEYS = ("official_weights", "official_download", "official_note", "checkpoint_layout")

# the model argument that carries a whole entry (config.json `model_args` of a converted folder)
ENTRY_ARG = "nas_zoo_entry"

default_cfgs: Dict[str, object] = {}  # read by timm.register_model, as in timm's own model modules
_ENTRIES: Dict[str, ArchEntry] = {}


def builtin_entry_dir() -> Path:
    try:
        from importlib.resources import files
        return Path(str(files("nas_zoo.configs") / "models"))
    except ModuleNotFoundError:
        # a plain checkout on sys.path (torch.hub, PYTHONPATH): `nas_zoo.configs` is only mapped onto the
        # top-level configs/ by an installation, so read the directory beside the package directly
        return Path(__file__).resolve().parent.parent / "configs" / "models"


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
        given = kwargs.pop(ENTRY_ARG, None)
        if given is not None:  # a config.json written under this name may carry the entry its weights fit
            return _create_from_given_entry(given, pretrained, None, name, kwargs)
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
    elif timm.is_model(name):
        raise EntryError(entry.source, "name", f"'{name}' clashes with an existing timm model; choose another name")
    default_cfgs[name] = _timm_cfgs(entry)
    _ENTRIES[name] = entry
    _REFERENCE_KEYS.pop(name, None)
    with warnings.catch_warnings():  # replacing was asked for explicitly; timm's overwrite warning is noise
        warnings.simplefilter("ignore", UserWarning)
        register_model(_make_entrypoint(entry))
    return name


def family_architecture(family: str) -> str:
    """The timm name of a family's generic entrypoint, which builds any entry of the family given as data."""
    return f"nas_zoo_{family}"


def _make_family_entrypoint(family: str):
    arch_name = family_architecture(family)

    def entrypoint(pretrained: bool = False, **kwargs):
        given = kwargs.pop(ENTRY_ARG, None)
        if given is None:
            raise EntryError(f"timm model '{arch_name}'", f"model_args.{ENTRY_ARG}",
                             f"missing: '{arch_name}' builds an architecture given as data; pass {ENTRY_ARG}="
                             "<entry mapping> (config.json of a folder written by `nas-zoo convert` holds it)")
        return _create_from_given_entry(given, pretrained, family, arch_name, kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = arch_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = (f"Any '{family}'-family architecture, given as an entry mapping in `{ENTRY_ARG}`.\n"
                          "This is what `timm.create_model('hf-hub:ORG/NAME')` calls for a folder written by "
                          "`nas-zoo convert`, so a searched model loads where its entry is not registered.")
    return entrypoint


def _create_from_given_entry(given, pretrained: bool, family: Optional[str], called_as: str, kwargs: dict):
    cfg = kwargs.get("pretrained_cfg")
    hub_id = cfg.get("hf_hub_id") if isinstance(cfg, Mapping) else None
    origin = f"hf-hub:{hub_id} " if hub_id else ""
    source = f"{origin}config.json model_args.{ENTRY_ARG}"
    if isinstance(given, ArchEntry):
        given = given.to_dict()
    entry = adopt_entry(given, source=source)
    if family is not None and entry.family != family:
        raise EntryError(source, "family", f"'{called_as}' builds family '{family}', the entry is "
                                           f"'{entry.family}'; expected architecture "
                                           f"'{family_architecture(entry.family)}'")
    return create_from_entry(entry, pretrained=pretrained, **kwargs)


def adopt_entry(obj: Union[Mapping, ArchEntry], source: Optional[str] = None) -> ArchEntry:
    """The entry that weights travelling with `obj` fit: the registered one when its architecture is the same,
    else `obj` itself, registered on the fly when its name is free (so later lookups by name work)."""
    entry = obj if isinstance(obj, ArchEntry) else load_entry(obj, source=source)
    known = _ENTRIES.get(entry.name)
    if known is not None:
        same = known.family == entry.family and known.arch == entry.arch
        return known if same else entry  # a different entry owns the name here: build this one unregistered
    if timm.is_model(entry.name):
        return entry
    register_entry(entry)
    return entry


def register_family_entrypoints() -> List[str]:
    """One generic timm entrypoint per family (`nas_zoo_<family>`), so config.json can name an architecture
    that the loading machine has never registered."""
    from .families import family_names

    names = []
    for family in family_names():
        arch_name = family_architecture(family)
        if arch_name not in _FAMILY_ENTRYPOINTS:
            _FAMILY_ENTRYPOINTS[arch_name] = register_model(_make_family_entrypoint(family))
        names.append(arch_name)
    return names


_FAMILY_ENTRYPOINTS: Dict[str, object] = {}


def register_directory(directory: Union[str, os.PathLike], strict: bool = True) -> List[str]:
    """Register every ``*.yaml`` entry in a directory (sorted by file name).

    YAML files without an entry's top-level fields (name, family, arch) are not entries and are skipped, so a
    search run directory (entry.yaml beside resolved.yaml) can be registered as it is. A broken entry raises
    its EntryError; with ``strict=False`` it is skipped with one warning naming the file and the field.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EntryError(str(directory), "<directory>", "entry directory does not exist")
    names = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            data = read_yaml_file(path)
            if not has_entry_shape(data):
                continue
            entry = validate_entry(data, str(path))
            entry.path = path.absolute()
            names.append(register_entry(entry))
        except EntryError as e:
            if strict:
                raise
            warnings.warn(f"{ENTRIES_ENV}: skipped {e}", EntryWarning, stacklevel=2)
    return names


class EntryWarning(UserWarning):
    """A broken entry file found through NAS_ZOO_ENTRIES, skipped so that `import nas_zoo` still works."""


def register_env_directories(value: Optional[str] = None) -> List[str]:
    """The directories of NAS_ZOO_ENTRIES; a missing directory or a broken entry there only warns: a stray
    file must not break every `import nas_zoo`."""
    value = os.environ.get(ENTRIES_ENV, "") if value is None else value
    names = []
    for part in value.split(os.pathsep):
        if not part.strip():
            continue
        try:
            names += register_directory(part.strip(), strict=False)
        except EntryError as e:
            warnings.warn(f"{ENTRIES_ENV}: skipped {e}", EntryWarning, stacklevel=2)
    return names


def get_entry(name: str) -> ArchEntry:
    name = name.split(".")[0]
    if name.startswith("hf-hub:") or name not in _ENTRIES:
        raise KeyError(f"no nas_zoo entry named {name!r}; registered: {sorted(_ENTRIES)}")
    return _ENTRIES[name]


def list_entries(family: Optional[str] = None) -> List[ArchEntry]:
    return [e for e in _ENTRIES.values() if family is None or e.family == family]


_REFERENCE_KEYS: Dict[str, Dict[str, tuple]] = {}


def _is_registered(entry: ArchEntry) -> bool:
    return _ENTRIES.get(entry.name) is entry


def reference_state_shapes(entry: Union[str, ArchEntry]) -> Dict[str, tuple]:
    """Key -> shape of the entry's model as released (default head), built on the meta device (no memory)."""
    entry = _ENTRIES[entry] if isinstance(entry, str) else entry
    cached = _is_registered(entry)
    if not cached or entry.name not in _REFERENCE_KEYS:
        with torch.device("meta"):
            model = get_family(entry.family).build(entry, pretrained=False,
                                                   pretrained_cfg=_resolve_cfg(entry, None, None))
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if not cached:
            return shapes
        _REFERENCE_KEYS[entry.name] = shapes
    return _REFERENCE_KEYS[entry.name]


def _resolve_cfg(entry: ArchEntry, pretrained_cfg, pretrained_cfg_overlay) -> dict:
    """timm's pretrained-cfg resolution; an unregistered entry looks its tags up in its own cfgs."""
    if not _is_registered(entry) and not isinstance(pretrained_cfg, Mapping):
        own = _timm_cfgs(entry)
        tag = pretrained_cfg if isinstance(pretrained_cfg, str) and pretrained_cfg else own.tags[0]
        if tag not in own.cfgs:
            raise EntryError(entry.source, "pretrained", f"no pretrained tag {tag!r}; expected one of "
                                                         f"{list(own.cfgs)}")
        pretrained_cfg = {**own.cfgs[tag].to_dict(), "architecture": entry.name, "tag": tag or None}
    return resolve_pretrained_cfg(entry.name, pretrained_cfg=pretrained_cfg,
                                  pretrained_cfg_overlay=pretrained_cfg_overlay).to_dict()


def create_from_entry(entry: Union[str, ArchEntry], pretrained: bool = False, pretrained_cfg=None,
                      pretrained_cfg_overlay=None, cache_dir=None, use_ema: Optional[bool] = None,
                      **kwargs) -> torch.nn.Module:
    """Build an entry (a registered name, or an ArchEntry, registered or not); with ``pretrained`` its weights
    are resolved by `nas_zoo.weights`.

    use_ema: which weights to take from an official checkpoint that has both (None: what the official
    evaluation used, as the entry records it).
    """
    from .weights import load_pretrained_state_dict

    entry = _ENTRIES[entry] if isinstance(entry, str) else entry
    family = get_family(entry.family)
    cfg = _resolve_cfg(entry, pretrained_cfg, pretrained_cfg_overlay)
    if pretrained:
        # what the weights must fit: the released model; or the model as asked for (a searched child's
        # weights file has the head of its own run's classes)
        expected = [reference_state_shapes(entry)]
        asked = {k: kwargs[k] for k in ("num_classes", "in_chans") if k in kwargs}
        if asked:
            with torch.device("meta"):
                as_asked = family.build(entry, pretrained=False, pretrained_cfg=cfg, **asked)
            expected.append({k: tuple(v.shape) for k, v in as_asked.state_dict().items()})
        state_dict = load_pretrained_state_dict(entry, cfg, expected, cache_dir=cache_dir, use_ema=use_ema)
        if "num_classes" in asked and len(expected) > 1 and _fits(state_dict, expected[1]):
            cfg["num_classes"] = asked["num_classes"]  # timm then keeps the head instead of dropping it
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


def _fits(state_dict: Mapping, shapes: Mapping) -> bool:
    return len(state_dict) == len(shapes) and all(k in state_dict and tuple(state_dict[k].shape) == tuple(s)
                                                  for k, s in shapes.items())


def register_builtin_entries() -> List[str]:
    return register_directory(builtin_entry_dir())
