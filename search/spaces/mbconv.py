"""The MBConv chain space: a stem, fixed blocks, searched stages whose every layer picks one MBConv, a fixed tail
and head. Serves DNA, Cream and SPOS-on-MBConv; results are `efficientnet`-family entries (timm's EfficientNet,
or MobileNetV3 for Cream-style heads).

The supernet IS the family's timm model built for the space's template architecture (op 0 everywhere), with each
searched block replaced by a `ChoiceBlock` whose candidates come from the family's own `block_builder`: stem,
head, classifier and every candidate are exactly the blocks a chosen entry builds, channel rounding included (a
width of 20 trains, prices and exports as timm's 24). A chosen architecture's weights are the supernet's with the
candidate level of the keys dropped.

An architecture is a list per stage of op indices (one per layer), e.g. ``[[0, 3], [1, 1, 5, 2], ...]``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from . import Space, SpaceError, register_space
from .ops import op_block_string, parse_op

__all__ = ["MBConvChainSpace", "ChoiceBlock", "MBConvSupernet"]


class ChoiceBlock(nn.Module):
    """One searched layer: candidate blocks with the same input/output shape; forward runs the chosen one."""

    def __init__(self, candidates: Sequence[nn.Module], block_strings: Sequence[str]):
        super().__init__()
        self.ops = nn.ModuleList(candidates)
        self.block_strings = tuple(block_strings)

    def forward(self, x: torch.Tensor, choice: int) -> torch.Tensor:
        return self.ops[choice](x)


class MBConvSupernet(nn.Module):
    """The family's timm model with ChoiceBlocks in the searched positions; forward(x, arch) -> logits."""

    def __init__(self, net: nn.Module, searched: Sequence[Tuple[int, int, int]], model: str):
        super().__init__()
        self.net = net
        # (block stage index, layer index) of every searched layer, per search stage
        self.searched = [list(s) for s in searched]
        self.model = model

    def forward_features(self, x: torch.Tensor, arch: Sequence[Sequence[int]]) -> torch.Tensor:
        net = self.net
        x = net.bn1(net.conv_stem(x))
        choices = {}
        for s, layers in enumerate(self.searched):
            for l, (bs, bl) in enumerate(layers):
                choices[(bs, bl)] = int(arch[s][l])
        for bs, stage in enumerate(net.blocks):
            for bl, block in enumerate(stage):
                x = block(x, choices[(bs, bl)]) if isinstance(block, ChoiceBlock) else block(x)
        if self.model == "efficientnet":
            x = net.bn2(net.conv_head(x))
        return x

    def forward(self, x: torch.Tensor, arch: Sequence[Sequence[int]]) -> torch.Tensor:
        return self.net.forward_head(self.forward_features(x, arch))


@dataclass
class MBConvChainSpace(Space):
    """stages: [(width, stride, layers)]; ops: op names such as 'MB6_3x3_se0.25' (see spaces.ops)."""

    stages: Sequence[Sequence[int]]
    ops: Sequence[str]
    stem_size: int = 32
    head_blocks: Sequence[str] = ("ds_r1_k3_s1_c16_se0.25",)   # fixed blocks between the stem and stage 0
    tail_blocks: Sequence[str] = ()                             # fixed blocks after the last searched stage
    num_features: int = 1280
    act_layer: str = "swish"
    model: str = "efficientnet"
    bn_eps: float = 1e-5
    se_layer: Optional[Dict[str, Any]] = None
    se_from_exp: Optional[bool] = None
    head_bias: Optional[bool] = None
    image_size: int = 224
    drop_rate: float = 0.2
    drop_path_rate: float = 0.2
    name: str = "mbconv"
    family: str = "efficientnet"
    _tables: Dict[Tuple[str, int, int], Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.stages = [tuple(int(v) for v in s) for s in self.stages]
        self.ops = tuple(self.ops)
        for i, st in enumerate(self.stages):
            if len(st) != 3 or min(st) < 1 or st[1] not in (1, 2):
                raise SpaceError("space", f"stages[{i}]", f"expected [width, stride (1 or 2), layers], got {list(st)}")
        for i, op in enumerate(self.ops):
            try:
                parse_op(op)
            except ValueError as e:
                raise SpaceError("space", f"ops[{i}]", str(e)) from None
        if self.model not in ("efficientnet", "mobilenetv3"):
            raise SpaceError("space", "model", f"expected 'efficientnet' or 'mobilenetv3', got {self.model!r}")

    # ---- architectures
    @property
    def depths(self) -> List[int]:
        return [layers for _, _, layers in self.stages]

    def sample(self, rng: np.random.RandomState) -> List[List[int]]:
        return [[int(rng.randint(len(self.ops))) for _ in range(d)] for d in self.depths]

    def mutate(self, arch, rng: np.random.RandomState, prob: float) -> List[List[int]]:
        return [[int(rng.randint(len(self.ops))) if rng.random_sample() < prob else int(c) for c in stage]
                for stage in arch]

    def crossover(self, a, b, rng: np.random.RandomState) -> List[List[int]]:
        return [[int(x if rng.random_sample() < 0.5 else y) for x, y in zip(sa, sb)] for sa, sb in zip(a, b)]

    def check_arch(self, arch, source: str = "arch") -> None:
        if not isinstance(arch, (list, tuple)) or len(arch) != len(self.stages):
            raise SpaceError(source, "", f"expected {len(self.stages)} stages of op indices, got {arch!r}")
        for s, (stage, depth) in enumerate(zip(arch, self.depths)):
            if not isinstance(stage, (list, tuple)) or len(stage) != depth:
                raise SpaceError(source, f"[{s}]", f"expected {depth} op indices, got {stage!r}")
            for l, c in enumerate(stage):
                if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < len(self.ops):
                    raise SpaceError(source, f"[{s}][{l}]", f"expected an op index in [0, {len(self.ops) - 1}], "
                                                            f"got {c!r}")

    # ---- entries
    def family_settings(self) -> dict:
        """The family keys every block of this space is built with (the entry's `arch` minus its blocks)."""
        out = {"model": self.model, "stem_size": self.stem_size, "num_features": self.num_features,
               "act_layer": self.act_layer, "bn_eps": self.bn_eps}
        if self.se_layer is not None:
            out["se_layer"] = dict(self.se_layer)
        if self.model == "mobilenetv3":
            out["se_from_exp"] = True if self.se_from_exp is None else bool(self.se_from_exp)
            out["head_bias"] = True if self.head_bias is None else bool(self.head_bias)
        return out

    def block_kwargs(self) -> dict:
        """The family settings as nas_zoo.search.cost.timm_block takes them (the same builder)."""
        out = {"act_layer": self.act_layer, "bn_eps": self.bn_eps, "se_from_exp": self.model == "mobilenetv3" and
               (True if self.se_from_exp is None else bool(self.se_from_exp))}
        if self.se_layer is not None:
            out["se_layer"] = dict(self.se_layer)
        return out

    def stage_block_strings(self, s: int, path: Sequence[int]) -> List[str]:
        width, stride, _ = self.stages[s]
        return [op_block_string(self.ops[int(c)], stride if i == 0 else 1, width) for i, c in enumerate(path)]

    def entry_arch(self, arch) -> dict:
        self.check_arch(arch)
        blocks = ([list(self.head_blocks)] if self.head_blocks else []) + \
            [self.stage_block_strings(s, path) for s, path in enumerate(arch)] + \
            ([list(self.tail_blocks)] if self.tail_blocks else [])
        return {**self.family_settings(), "block_args": blocks, "drop_rate": self.drop_rate,
                "drop_path_rate": self.drop_path_rate}

    @property
    def _first_searched_stage(self) -> int:
        return 1 if self.head_blocks else 0

    # ---- the supernet
    def supernet(self, num_classes: int, device=None) -> MBConvSupernet:
        from timm.models.efficientnet import EfficientNet
        from timm.models.mobilenetv3 import MobileNetV3
        from nas_zoo.families.efficientnet import build_block, model_kwargs

        template = self.entry_arch([[0] * d for d in self.depths])
        kw = model_kwargs(dict(template, drop_rate=0.0, drop_path_rate=0.0))
        cls = MobileNetV3 if self.model == "mobilenetv3" else EfficientNet
        with torch.device(device) if device is not None else contextlib.nullcontext():
            net = cls(num_classes=num_classes, **kw)
        builder_arch = dict(template)
        first = self._first_searched_stage
        searched = []
        for s, (width, stride, layers) in enumerate(self.stages):
            stage = net.blocks[first + s]
            positions = []
            for l in range(layers):
                in_chs = _in_chs(stage[l])
                strings = [op_block_string(op, stride if l == 0 else 1, width) for op in self.ops]
                cands = [build_block(builder_arch, b, in_chs, device=device) for b in strings]
                stage[l] = ChoiceBlock(cands, strings)
                positions.append((first + s, l))
            searched.append(positions)
        return MBConvSupernet(net, searched, self.model)

    def child_state_dict(self, supernet_state: Dict[str, torch.Tensor], arch) -> Dict[str, torch.Tensor]:
        """The weights of `arch` keyed as the entry's timm model (`blocks.s.l.conv_pw.weight`, ...)."""
        self.check_arch(arch)
        chosen = {}
        first = self._first_searched_stage
        for s, path in enumerate(arch):
            for l, c in enumerate(path):
                chosen[f"net.blocks.{first + s}.{l}."] = f"ops.{int(c)}."
        out = {}
        for key, value in supernet_state.items():
            if not key.startswith("net."):
                continue
            parts = key.split(".")
            prefix = ".".join(parts[:4]) + "." if len(parts) > 4 and parts[1] == "blocks" else None
            if prefix is not None and prefix in chosen:
                op = chosen[prefix]
                rest = ".".join(parts[4:]) + "."
                if not rest.startswith(op):
                    continue  # another candidate
                out[prefix[4:] + rest[len(op):-1]] = value
            else:
                out[key[4:]] = value
        return out

    # ---- costs
    def cost_tables(self, metrics: Sequence[str] = ("macs", "params"), image_size: Optional[int] = None,
                    num_classes: int = 1000, device: str = "cpu"):
        """Exact cost tables (nas_zoo.search.cost) of the entries this space writes: every op of every searched
        layer at its input size, plus the fixed stem / head blocks / tail / head, by the family's own builder."""
        from timm.models.efficientnet import EfficientNet
        from timm.models.mobilenetv3 import MobileNetV3
        from nas_zoo.families.efficientnet import model_kwargs
        from ..cost import ChoiceLayer, fixed_parts, measure_cost_tables

        size = int(image_size or self.image_size)
        key = (tuple(metrics), size, num_classes)
        if key in self._tables:
            return self._tables[key]
        template = self.entry_arch([[0] * d for d in self.depths])
        cls = MobileNetV3 if self.model == "mobilenetv3" else EfficientNet
        with torch.device("meta"):
            child = cls(num_classes=num_classes, **model_kwargs(dict(template, drop_rate=0.0, drop_path_rate=0.0)))
        first = self._first_searched_stage
        names = ["conv_stem", "bn1"] + [f"blocks.{i}" for i in range(first)] + \
            [f"blocks.{first + len(self.stages) + i}" for i in range(1 if self.tail_blocks else 0)] + \
            (["conv_head", "bn2", "global_pool", "classifier"] if self.model == "efficientnet" else
             ["global_pool", "conv_head", "act2", "classifier"])
        fixed = fixed_parts(child, (3, size, size), names)
        sizes = {}
        block_names = [f"blocks.{first + s}.{l}" for s, d in enumerate(self.depths) for l in range(d)]
        for part, name in zip(fixed_parts(child, (3, size, size), block_names), block_names):
            sizes[name] = part.input_size
        stages = [[ChoiceLayer([op_block_string(op, stride if l == 0 else 1, width) for op in self.ops],
                               sizes[f"blocks.{first + s}.{l}"]) for l in range(layers)]
                  for s, (width, stride, layers) in enumerate(self.stages)]
        tables = measure_cost_tables(stages, tuple(metrics), fixed=fixed, device=device, batch_size=1,
                                     block_kwargs=self.block_kwargs())
        for t in tables.values():
            t.meta["space"] = {"ops": list(self.ops), "stages": [list(s) for s in self.stages], "image_size": size}
        self._tables[key] = tables
        return tables

    def cost(self, arch, metric: str = "macs", image_size: Optional[int] = None, num_classes: int = 1000) -> float:
        self.check_arch(arch)
        return float(self.cost_tables((metric,), image_size, num_classes)[metric].price(arch))

    def cost_range(self, metric: str = "macs", image_size: Optional[int] = None,
                   num_classes: int = 1000) -> Tuple[float, float]:
        table = self.cost_tables((metric,), image_size, num_classes)[metric]
        lo = hi = table.fixed
        for s, d in enumerate(self.depths):
            costs, _ = table.layer_costs(s, d)
            lo += float(np.nansum(np.nanmin(costs, axis=1)))
            hi += float(np.nansum(np.nanmax(costs, axis=1)))
        return lo, hi


def _in_chs(block: nn.Module) -> int:
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise SpaceError("space", "", f"cannot find the input width of {type(block).__name__}")


register_space("mbconv", MBConvChainSpace)
