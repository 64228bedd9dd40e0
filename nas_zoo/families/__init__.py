"""Model families: each turns an entry's `arch` mapping into a timm model.

A family is three functions and nothing else:

* ``validate_arch(field) -> dict``: check ``entry.arch`` (a `nas_zoo.entry.Field`) and return it normalised;
  raise ``field.child(...).error(...)`` naming the bad key.
* ``build(entry, pretrained, **kwargs) -> nn.Module``: build the model through timm's
  ``build_model_with_cfg`` (so ``features_only``, ``pretrained_cfg`` and weight loading behave as in timm).
  ``kwargs`` holds what timm passes (``pretrained_cfg``, ``num_classes``, ``in_chans``, ``features_only`` ...).
* ``adapt_state_dict(state_dict, entry) -> dict``: map a state dict in the official key layout (already
  unwrapped from its checkpoint container, ``module.`` stripped) to ours. Identity where they agree.
  May raise `nas_zoo.checkpoint.CheckpointError` when the checkpoint contradicts the entry.
* ``cfg_defaults``: pretrained-cfg fields every entry of the family shares (``first_conv``, ``classifier``).
* ``checkpoint_layouts`` (optional): official key layouts of other codebases the family hosts, by name -> an
  adapter like ``adapt_state_dict``. An entry picks one with ``checkpoint_layout: NAME`` in its pretrained cfg
  (e.g. DenseNAS' MBV2_Net checkpoints for `efficientnet` entries); `adapt_official_state_dict` applies it.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping

__all__ = ["Family", "register_family", "get_family", "family_names", "adapt_official_state_dict"]


def _identity(state_dict, entry):
    return state_dict


@dataclass(frozen=True)
class Family:
    name: str
    validate_arch: Callable
    build: Callable
    adapt_state_dict: Callable = _identity
    describe: Callable = lambda arch: ""  # one-line summary of an arch for tables
    cfg_defaults: Mapping = field(default_factory=dict)  # pretrained-cfg defaults (first_conv, classifier ...)
    checkpoint_layouts: Mapping[str, Callable] = field(default_factory=dict)  # name -> official-keys adapter
    reduction: Callable = lambda arch: 32  # total stride of forward_features; gives the cfg's pool_size


_FAMILIES: Dict[str, Family] = {}
# modules that define families; imported on first use so `import nas_zoo` stays cheap
_FAMILY_MODULES = (
    "nas_zoo.families.efficientnet",
    "nas_zoo.families.shufflenet_spos",
    "nas_zoo.families.darts_cell",
    "nas_zoo.families.densenas",
)
_loaded = False


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES and _FAMILIES[family.name] is not family:
        raise ValueError(f"model family {family.name!r} is already registered")
    _FAMILIES[family.name] = family
    return family


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _FAMILY_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # a real import error inside an existing family module
                raise


def get_family(name: str) -> Family:
    _load_all()
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {family_names()}") from None


def family_names() -> List[str]:
    _load_all()
    return sorted(_FAMILIES)


def adapt_official_state_dict(state_dict, entry, tag=None):
    """An official state dict -> ours: the layout adapter the entry's pretrained cfg ``tag`` (default: its
    first) names with ``checkpoint_layout``, if any, then the family's own `adapt_state_dict`."""
    family = get_family(entry.family)
    cfg = entry.pretrained.get(tag or entry.default_tag or "", {})
    layout = cfg.get("checkpoint_layout")
    if layout is not None:
        state_dict = family.checkpoint_layouts[layout](state_dict, entry)
    return family.adapt_state_dict(state_dict, entry)
