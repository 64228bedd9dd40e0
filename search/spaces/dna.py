"""DNA's search space: a stem plus searched stages whose every layer chooses one MBConv among PRIMITIVES.

Each candidate op is built by the efficientnet family's builder (timm's `EfficientNetBuilder` with the family
settings) from a timm block string, so a chosen path is the list of block strings that the family builds (one
`ir_r1_...` string per layer), and its weights load into the retrained model layer by layer. What DNA exports and
prices is the `MBConvChainSpace` of `dna_space(cfg)`: the same blocks at the stages' widths.

The official supernet (changlin31/DNA `searching/dna/student_supernet.py`): stem Conv3x3-BN-swish(32, s2) +
DS(32->16, se0.25); six stages [hidden, stride, layers] = [24,2,2] [40,2,4] [80,2,4] [112,1,4] [192,2,4]
[320,1,1]; a stage's first layer takes the stride, its last layer widens to the teacher's width (B7: 2 x hidden),
so the MSE against the teacher block is taken directly.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import create_conv2d

from .ops import PRIMITIVES, op_block_string, parse_op

__all__ = ["PRIMITIVES", "op_block_string", "parse_op", "ChoiceLayer", "SupernetStage", "DNASupernet",
           "build_block", "dna_space"]

# DNA's blocks: the efficientnet family with the official DNA settings (swish, BN eps 1e-5, SE width from the
# block input, symmetric padding); every block comes from the family's own builder
FAMILY_SETTINGS = {"model": "efficientnet", "stem_size": 32, "num_features": 1280, "act_layer": "swish",
                   "bn_eps": 1e-5, "block_args": [["ds_r1_k3_s1_c16"]]}


def build_block(block_string: str, in_chs: int) -> nn.Module:
    """One timm block (InvertedResidual / DepthwiseSeparableConv) from its block string, by the family builder.
    Widths follow the family's channel rounding, as in the entries DNA writes."""
    from nas_zoo.families.efficientnet import build_block as family_block
    return family_block(FAMILY_SETTINGS, block_string, in_chs)


class ChoiceLayer(nn.Module):
    """One searched layer: a list of candidate blocks with the same input/output shape (official MixOps)."""

    def __init__(self, ops: Sequence[str], in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.op_names = tuple(ops)
        self.block_strings = tuple(op_block_string(op, stride, out_chs) for op in ops)
        self.ops = nn.ModuleList(build_block(b, in_chs) for b in self.block_strings)

    def forward(self, x: torch.Tensor, choice: int) -> torch.Tensor:
        return self.ops[choice](x)


class SupernetStage(nn.Module):
    """A searched stage: layers in_chs -> hidden (stride) -> ... -> hidden -> out_chs. Forward takes the path."""

    def __init__(self, ops: Sequence[str], in_chs: int, hidden: int, out_chs: int, stride: int, layers: int,
                 stem: Optional[nn.Module] = None):
        super().__init__()
        self.stem = stem
        chans = [in_chs] + [hidden] * (layers - 1) + [out_chs]
        self.layers = nn.ModuleList(
            ChoiceLayer(ops, chans[i], chans[i + 1], stride if i == 0 else 1) for i in range(layers))
        self.num_ops = len(ops)

    def forward(self, x: torch.Tensor, path: Sequence[int]) -> torch.Tensor:
        if self.stem is not None:
            x = self.stem(x)
        for layer, choice in zip(self.layers, path):
            x = layer(x, int(choice))
        return x


class Stem(nn.Module):
    """Conv3x3-BN-swish (stride 2) + the fixed DS block, as timm EfficientNet's conv_stem/bn1/blocks[0]."""

    def __init__(self, stem_size: int, ds_block: str):
        super().__init__()
        self.conv_stem = create_conv2d(3, stem_size, 3, stride=2, padding="")
        self.bn1 = nn.BatchNorm2d(stem_size)
        self.act = nn.SiLU(inplace=True)
        self.block = build_block(ds_block, stem_size)
        self.out_chs = self.block.conv_pw.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.act(self.bn1(self.conv_stem(x))))


class DNASupernet(nn.Module):
    """The student supernet: stage 0 owns the stem; stage s maps teacher feature s-1 to teacher feature s.

    stages: [(hidden, stride, layers)], in_chs/out_chs per stage: from the teacher's matched blocks.
    """

    def __init__(self, stages: Sequence[Tuple[int, int, int]], in_chs: Sequence[int], out_chs: Sequence[int],
                 ops: Sequence[str] = PRIMITIVES, stem_size: int = 32, stem_block: str = "ds_r1_k3_s1_c16_se0.25"):
        super().__init__()
        self.ops = tuple(ops)
        self.stage_cfgs = [tuple(s) for s in stages]
        stem = Stem(stem_size, stem_block)
        blocks = []
        for s, (hidden, stride, layers) in enumerate(stages):
            cin = stem.out_chs if s == 0 else in_chs[s]
            blocks.append(SupernetStage(ops, cin, hidden, out_chs[s], stride, layers, stem=stem if s == 0 else None))
        self.stages = nn.ModuleList(blocks)

    @property
    def depths(self) -> List[int]:
        return [len(st.layers) for st in self.stages]

    def forward_stage(self, s: int, x: torch.Tensor, path: Sequence[int]) -> torch.Tensor:
        return self.stages[s](x, path)

    def block_strings(self, paths: Sequence[Sequence[int]], widths: Optional[Sequence[int]] = None) -> List[List[str]]:
        """Block strings of a chosen path for the retrained net; every layer of stage s is `widths[s]` wide
        (the hidden width: the retrained nets do not widen the last layer to the teacher's width)."""
        out = []
        for s, path in enumerate(paths):
            hidden, stride, _ = self.stage_cfgs[s]
            width = hidden if widths is None else widths[s]
            out.append([op_block_string(self.ops[c], stride if i == 0 else 1, width) for i, c in enumerate(path)])
        return out


def dna_space(cfg: dict):
    """The MBConv chain space of a DNA config: what DNA prices, selects from and writes as entries."""
    from .mbconv import MBConvChainSpace
    e, s = cfg["export"], cfg["supernet"]
    return MBConvChainSpace(stages=[tuple(st) for st in s["stages"]], ops=s["ops"], stem_size=e["stem_size"],
                            head_blocks=(s["stem_block"],), num_features=e["num_features"], act_layer="swish",
                            bn_eps=1e-5, drop_rate=e["drop_rate"], drop_path_rate=e["drop_path_rate"], name="dna")
