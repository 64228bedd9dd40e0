"""The Space contract: a search space is data plus one builder.

A space builds its supernet from the block builder of the zoo family its results become (never a second builder),
so a chosen architecture's blocks are the entry's blocks, weights included. Architectures (`arch`) are opaque,
JSON-able values (lists / dicts of ints and strings): a layer chain, a pair of DARTS cells or a DenseNAS path
alike. Methods only use the operations below.

    space.supernet(num_classes)              -> nn.Module; forward(x, arch) -> logits
    space.sample(rng) / mutate(arch, rng, p) / crossover(a, b, rng)   -> arch
    space.check_arch(arch)                   raises SpaceError naming the position
    space.entry_arch(arch)                   -> the family's `arch` mapping (a zoo entry's `arch`)
    space.child_state_dict(state, arch)      -> the supernet's weights of `arch`, keyed for the entry's model
    space.cost(arch, metric, image_size)     -> exact cost (MACs, params, latency) from the space's cost tables
    space.cost_range(metric, image_size)     -> (cheapest, most expensive) architecture's cost

Spaces register under a name (`register_space`); `build_space(name, **config)` makes one from config data.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Dict, Tuple

import numpy as np
import torch.nn as nn

from nas_zoo.errors import NasZooError

__all__ = ["Space", "SpaceError", "register_space", "build_space", "space_names"]


class SpaceError(NasZooError):
    """An architecture or space configuration that does not fit the space; names the position/key."""


class Space:
    """Base class of the contract; see the module docstring."""

    name: str = ""
    family: str = ""

    def supernet(self, num_classes: int) -> nn.Module:
        raise NotImplementedError

    def sample(self, rng: np.random.RandomState) -> Any:
        raise NotImplementedError

    def mutate(self, arch: Any, rng: np.random.RandomState, prob: float) -> Any:
        raise NotImplementedError

    def crossover(self, a: Any, b: Any, rng: np.random.RandomState) -> Any:
        raise NotImplementedError

    def check_arch(self, arch: Any) -> None:
        raise NotImplementedError

    def entry_arch(self, arch: Any) -> dict:
        raise NotImplementedError

    def child_state_dict(self, supernet_state: Dict[str, Any], arch: Any) -> Dict[str, Any]:
        raise NotImplementedError

    def cost(self, arch: Any, metric: str = "macs", image_size: int | None = None) -> float:
        raise NotImplementedError

    def cost_range(self, metric: str = "macs", image_size: int | None = None) -> Tuple[float, float]:
        raise NotImplementedError


_SPACES: Dict[str, Callable[..., Space]] = {}


def register_space(name: str, factory: Callable[..., Space]) -> Callable[..., Space]:
    _SPACES[name] = factory
    return factory


def _load() -> None:
    """Import every module of this package: each registers its spaces (a new space is a new file)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")


def space_names():
    _load()
    return sorted(_SPACES)


def build_space(name: str, source: str = "<config>", key: str = "space", **config) -> Space:
    _load()
    if name not in _SPACES:
        raise SpaceError(source, key, f"unknown space {name!r}; expected one of {sorted(_SPACES)}")
    return _SPACES[name](**config)
