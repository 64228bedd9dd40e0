"""The ShuffleNetV2 one-shot space of SPOS and DSNAS: choice layers of four blocks each, in stages.

Every block is `nas_zoo.families.shufflenet_spos.ShuffleChoiceBlock`, the block of the zoo family the results
become, in the official op order (0 shufflenet_3x3, 1 shufflenet_5x5, 2 shufflenet_7x7, 3 xception_3x3). An
architecture is the list of op indices, one per layer (the family's `choices`). The paper space is stem 16, stages
[4, 4, 8, 4] x [64, 160, 320, 640], head 1024: 20 layers, 4^20 paths (official `DSNAS/network.py`).

Supernet keys: ``stem.*``, ``layers.<layer>.<op>.<branch>.<unit>.*``, ``final_conv.*``, ``fc.*``; a child's keys
are the family's ``stages.<stage>.<index>.*`` (see `child_state_dict`). `official_key` maps the official supernet's
state-dict keys (``features.<layer>.<op>.branch_main.<k>.*`` ...) onto these.

`fixed` ({layer: op}) narrows the space: those layers hold one op in every path (sampling, mutation, cost range,
the checks); the supernet still builds all four blocks there, so its keys are the same.
"""
from __future__ import annotations

import re
from functools import partial
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from timm.layers import ConvNormAct, SelectAdaptivePool2d

from nas_zoo.cost import count_macs, count_params
from nas_zoo.families.shufflenet_spos import OPS, ShuffleChoiceBlock, init_weights, layer_specs, official_unit_key

from . import Space, SpaceError, register_space

__all__ = ["ShuffleNetSupernet", "ShuffleNetSpace", "SpaceError", "official_key"]

NUM_OPS = len(OPS)
PAPER = dict(stage_repeats=(4, 4, 8, 4), stage_out_channels=(64, 160, 320, 640), stem_size=16, num_features=1024)


class ShuffleNetSupernet(nn.Module):
    """All four choice blocks in every layer; `forward(x, arch, gates=None)` runs the path `arch` only.

    `gates` (layers x ops tensor, one-hot rows) multiplies each chosen block's output by its gate value, the
    DSNAS 'dummy 1' through which autograd returns dL/dZ (the gate is 1, so values do not change).
    """

    def __init__(self, num_classes: int = 1000, stage_repeats: Sequence[int] = PAPER["stage_repeats"],
                 stage_out_channels: Sequence[int] = PAPER["stage_out_channels"], stem_size: int = 16,
                 num_features: int = 1024, bn_eps: float = 1e-2, bn_affine: bool = True, drop_rate: float = 0.0,
                 in_chans: int = 3):
        super().__init__()
        norm_layer = partial(nn.BatchNorm2d, eps=bn_eps, affine=bn_affine)
        cna = partial(ConvNormAct, norm_layer=norm_layer, act_layer=nn.ReLU)
        self.specs = layer_specs(stage_repeats, stage_out_channels, stem_size)
        self.stem = cna(in_chans, stem_size, 3, stride=2)
        self.layers = nn.ModuleList(
            nn.ModuleList(ShuffleChoiceBlock(in_chs, out_chs, stride, op, norm_layer=norm_layer) for op in OPS)
            for _, _, in_chs, out_chs, stride in self.specs)
        self.final_conv = cna(stage_out_channels[-1], num_features, 1)
        self.global_pool = SelectAdaptivePool2d(pool_type="avg", flatten=True)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes, bias=False)
        init_weights(self)

    def forward(self, x: torch.Tensor, arch: Sequence[int], gates: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.stem(x)
        for i, (layer, choice) in enumerate(zip(self.layers, arch)):
            x = layer[int(choice)](x)
            if gates is not None:
                x = x * gates[i, int(choice)]
        x = self.global_pool(self.final_conv(x))
        return self.fc(self.head_drop(x))


_OFFICIAL_CHOICE = re.compile(r"^features\.(\d+)\.(\d+)\.(branch_main|branch_proj)\.(\d+)\.(.+)$")
_OFFICIAL_FIXED = {"first_conv.0.": "stem.conv.", "first_conv.1.": "stem.bn.", "conv_last.0.": "final_conv.conv.",
                   "conv_last.1.": "final_conv.bn.", "classifier.0.": "fc."}


def official_key(key: str) -> Optional[str]:
    """The supernet key of an official `ShuffleNetV2_OneShot` state-dict key; None for `log_alpha`."""
    if key == "log_alpha":
        return None
    m = _OFFICIAL_CHOICE.match(key)
    if m:
        layer, op, branch, index, rest = int(m[1]), int(m[2]), m[3], int(m[4]), m[5]
        unit = official_unit_key(op, branch, index)
        if unit is None:
            raise KeyError(f"official key {key!r}: index {index} of {branch} holds no parameters")
        return f"layers.{layer}.{op}.{branch}.{unit}.{rest}"
    for old, new in _OFFICIAL_FIXED.items():
        if key.startswith(old):
            return new + key[len(old):]
    raise KeyError(f"not a key of the official ShuffleNetV2_OneShot supernet: {key!r}")


class ShuffleNetSpace(Space):
    """The space as data: macro structure, BN settings, and its exact cost tables (built from the blocks)."""

    name = "shufflenet"
    family = "shufflenet_spos"

    def __init__(self, stage_repeats: Sequence[int] = PAPER["stage_repeats"],
                 stage_out_channels: Sequence[int] = PAPER["stage_out_channels"], stem_size: int = 16,
                 num_features: int = 1024, bn_eps: float = 1e-2, bn_affine: bool = True, drop_rate: float = 0.0,
                 image_size: int = 224, num_classes: int = 1000,
                 fixed: Optional[Mapping[int, Union[int, str]]] = None):
        self.num_classes = int(num_classes)  # the classifier's part of `cost`
        self.stage_repeats = tuple(int(r) for r in stage_repeats)
        self.stage_out_channels = tuple(int(c) for c in stage_out_channels)
        self.stem_size = int(stem_size)
        self.num_features = int(num_features)
        self.bn_eps = float(bn_eps)
        self.bn_affine = bool(bn_affine)
        self.drop_rate = float(drop_rate)
        self.image_size = int(image_size)
        self.specs = layer_specs(self.stage_repeats, self.stage_out_channels, self.stem_size)
        self.num_layers = len(self.specs)
        self.fixed = self.parse_fixed(fixed or {}, self.num_layers)
        self._tables: Dict[Tuple[str, int], Tuple[np.ndarray, float]] = {}

    @staticmethod
    def parse_fixed(fixed: Mapping, num_layers: int, source: str = "space", key: str = "fixed") -> Dict[int, int]:
        """{layer: op index}; an op may be given by its name (`OPS`)."""
        if not isinstance(fixed, Mapping):
            raise SpaceError(source, key, f"expected a mapping layer -> op, got {type(fixed).__name__}")
        out = {}
        for layer, op in fixed.items():
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers:
                raise SpaceError(source, f"{key}.{layer}", f"expected a layer index in 0..{num_layers - 1}")
            if isinstance(op, str) and op in OPS:
                op = OPS.index(op)
            if isinstance(op, bool) or not isinstance(op, int) or not 0 <= op < NUM_OPS:
                raise SpaceError(source, f"{key}.{layer}", f"expected an op index in 0..{NUM_OPS - 1} or one of "
                                                           f"{', '.join(OPS)}, got {op!r}")
            out[layer] = op
        return dict(sorted(out.items()))

    @property
    def reduction_layers(self) -> List[int]:
        """The stride-2 layers (the first of each stage)."""
        return [i for i, spec in enumerate(self.specs) if spec[4] == 2]

    def _hold_fixed(self, arch: List[int]) -> List[int]:
        for layer, op in self.fixed.items():
            arch[layer] = op
        return arch

    # ---------------------------------------------------------------------------------- modules
    def supernet(self, num_classes: int) -> ShuffleNetSupernet:
        return ShuffleNetSupernet(num_classes, self.stage_repeats, self.stage_out_channels, self.stem_size,
                                  self.num_features, self.bn_eps, self.bn_affine, self.drop_rate)

    def entry_arch(self, arch: Sequence[int]) -> dict:
        self.check_arch(arch)
        out = dict(choices=[int(c) for c in arch], stage_repeats=list(self.stage_repeats),
                   stage_out_channels=list(self.stage_out_channels), stem_size=self.stem_size,
                   num_features=self.num_features, bn_eps=self.bn_eps)
        if self.drop_rate:
            out["drop_rate"] = self.drop_rate
        return out

    def child_state_dict(self, supernet_state: Dict[str, torch.Tensor], arch: Sequence[int]) -> Dict[str, torch.Tensor]:
        """The family's keys for path `arch`. A non-affine supernet BN gives the child BN weight 1, bias 0."""
        self.check_arch(arch)
        out = {}
        for key, value in supernet_state.items():
            if key.startswith("layers."):
                _, layer, op, rest = key.split(".", 3)
                layer, op = int(layer), int(op)
                if op != arch[layer]:
                    continue
                s, j = self.specs[layer][:2]
                key = f"stages.{s}.{j}.{rest}"
            out[key] = value
        if not self.bn_affine:
            for key in [k for k in out if k.endswith(".running_mean")]:
                base = key[: -len("running_mean")]
                out.setdefault(base + "weight", torch.ones_like(out[key]))
                out.setdefault(base + "bias", torch.zeros_like(out[key]))
        return out

    # ---------------------------------------------------------------------------------- paths
    def check_arch(self, arch, source: str = "arch") -> None:
        if not isinstance(arch, (list, tuple)):
            raise SpaceError(source, "", f"expected a list of {self.num_layers} op indices, got {type(arch).__name__}")
        if len(arch) != self.num_layers:
            raise SpaceError(source, "", f"expected {self.num_layers} op indices (one per layer), got {len(arch)}")
        for i, c in enumerate(arch):
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) < NUM_OPS:
                raise SpaceError(source, f"[{i}]", f"expected an op index in 0..{NUM_OPS - 1} "
                                                   f"({', '.join(f'{k}={n}' for k, n in enumerate(OPS))}), got {c!r}")
        for layer, op in self.fixed.items():
            if int(arch[layer]) != op:
                raise SpaceError(source, f"[{layer}]", f"layer {layer} is fixed at op {op} ({OPS[op]}) in this space, "
                                                       f"got {arch[layer]}")

    def sample(self, rng: np.random.RandomState) -> List[int]:
        return self._hold_fixed([int(c) for c in rng.randint(NUM_OPS, size=self.num_layers)])

    def mutate(self, arch: Sequence[int], rng: np.random.RandomState, prob: float) -> List[int]:
        """Each gene is redrawn uniformly over all ops with probability `prob` (official SPOS search.py)."""
        return self._hold_fixed([int(rng.randint(NUM_OPS)) if rng.random_sample() < prob else int(c) for c in arch])

    def crossover(self, a: Sequence[int], b: Sequence[int], rng: np.random.RandomState) -> List[int]:
        return [int(x if rng.randint(2) == 0 else y) for x, y in zip(a, b)]

    # ---------------------------------------------------------------------------------- cost
    def _resolution(self, image_size: int) -> List[int]:
        h, out = (image_size + 1) // 2, []  # stem: 3x3 stride 2 pad 1
        for *_, stride in self.specs:
            out.append(h)
            if stride == 2:
                h = (h + 1) // 2
        return out

    def cost_table(self, metric: str = "macs", image_size: Optional[int] = None) -> Tuple[np.ndarray, float]:
        """(layers x ops table, cost of the fixed part: stem + 1x1 conv + classifier), exact, from the blocks."""
        if metric not in ("macs", "params"):
            raise ValueError(f"metric: expected 'macs' or 'params', got {metric!r}")
        size = int(image_size or self.image_size)
        key = (metric, size)
        if key not in self._tables:
            norm_layer = partial(nn.BatchNorm2d, eps=self.bn_eps)
            table = np.zeros((self.num_layers, NUM_OPS), dtype=np.int64)
            with torch.device("meta"):
                for i, ((_, _, in_chs, out_chs, stride), h) in enumerate(zip(self.specs, self._resolution(size))):
                    for c, op in enumerate(OPS):
                        block = ShuffleChoiceBlock(in_chs, out_chs, stride, op, norm_layer=norm_layer)
                        table[i, c] = (count_macs(block, (in_chs, h, h)) if metric == "macs"
                                       else count_params(block))
                net = ShuffleNetSupernet(1000, self.stage_repeats, self.stage_out_channels, self.stem_size,
                                         self.num_features, self.bn_eps, True)
            final_h = (self._resolution(size)[-1] + 1) // 2 if self.specs[-1][4] == 2 else self._resolution(size)[-1]
            if metric == "macs":
                fixed = (count_macs(net.stem, (3, size, size))
                         + count_macs(net.final_conv, (self.stage_out_channels[-1], final_h, final_h)))
            else:
                fixed = count_params(net.stem) + count_params(net.final_conv)
            self._tables[key] = (table, float(fixed))
        return self._tables[key]

    def cost(self, arch: Sequence[int], metric: str = "macs", image_size: Optional[int] = None,
             num_classes: Optional[int] = None) -> float:
        """Exact MACs (conv + linear) or params of the child, its classifier (space.num_classes) included."""
        self.check_arch(arch)
        table, fixed = self.cost_table(metric, image_size)
        classes = self.num_classes if num_classes is None else num_classes
        return float(fixed + table[np.arange(self.num_layers), list(arch)].sum() + self.num_features * classes)

    def block_cost(self, arch: Sequence[int], metric: str = "macs", image_size: Optional[int] = None) -> float:
        """The choice blocks' part of `cost` (what the official FLOPs loss and its 290M gate look at)."""
        table, _ = self.cost_table(metric, image_size)
        return float(table[np.arange(self.num_layers), list(arch)].sum())

    def block_cost_range(self, metric: str = "macs", image_size: Optional[int] = None) -> Tuple[float, float]:
        """The range of `block_cost` over the paths of the space (held layers at their op)."""
        table, _ = self.cost_table(metric, image_size)
        lo, hi = table.min(1), table.max(1)
        for layer, op in self.fixed.items():
            lo[layer] = hi[layer] = table[layer, op]
        return float(lo.sum()), float(hi.sum())

    def cost_range(self, metric: str = "macs", image_size: Optional[int] = None,
                   num_classes: Optional[int] = None) -> Tuple[float, float]:
        _, fixed = self.cost_table(metric, image_size)
        base = fixed + self.num_features * (self.num_classes if num_classes is None else num_classes)
        lo, hi = self.block_cost_range(metric, image_size)
        return float(base + lo), float(base + hi)


register_space("shufflenet", ShuffleNetSpace)
