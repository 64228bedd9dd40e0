"""Cream's search space (microsoft/Cream `lib/models/structures/supernet.py:gen_supernet`) on the MBConv chain space.

Stem conv3x3/2 (16) + a fixed DS block (k3, SE), five searched stages of widths 24/40/80/96/192 with first strides
2/2/2/1/2, each layer choosing one of six inverted-residual blocks (k3/k5/k7 x e4/e6, in the official
`choices_list` order), a fixed 1x1 conv to 320, global pool, conv_head 1280 (with bias) and the classifier.
Every block is IR with SE 0.25 (hard_sigmoid gate, ReLU inside) and Swish. Results are `mobilenetv3`-style
`efficientnet`-family entries (configs/models/cream_*.yaml), so every block here is built by timm's
`EfficientNetBuilder` with that family's settings: `cream_space` is a configuration of `MBConvChainSpace`
(stem 16, the DS block as its head block, the 1x1-320 conv as its tail block, MobileNetV3 head with bias).

An architecture is five lists of choice indices (one per searched stage), the official `cand` without its
leading and trailing `[0]`. Official supernet keys `blocks.<s>.<l>.<c>.*` are the space's
`net.blocks.<s>.<l>.ops.<c>.*` (`official_key`).
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from timm.layers.activations import HardSigmoid

from .mbconv import MBConvChainSpace

__all__ = ["CHOICES", "OPS", "TEMPLATE", "WIDTHS", "STRIDES", "FAMILY_ARCH", "cream_space", "search_for_layer",
           "layer_counts", "choice_block_string", "sample_path", "path_cost", "official_flops_table",
           "space_flops_table", "twice_differentiable_gates", "path_parameters", "official_key"]

# choices_list (tools/train.py): [[3,4],[3,6],[5,4],[5,6],[7,4],[7,6]] as (kernel, expansion)
CHOICES: Tuple[Tuple[int, int], ...] = ((3, 4), (3, 6), (5, 4), (5, 6), (7, 4), (7, 6))
OPS = tuple(f"MB{e}_{k}x{k}_se0.25" for k, e in CHOICES)
WIDTHS = (24, 40, 80, 96, 192)
STRIDES = (2, 2, 2, 1, 2)
STEM_SIZE = 16
NUM_FEATURES = 1280

# gen_supernet's arch_def: the template search_for_layer truncates (the 4th c80 string repeats twice: 5 layers)
TEMPLATE: Tuple[Tuple[str, ...], ...] = (
    ("ds_r1_k3_s1_e1_c16_se0.25",),
    ("ir_r1_k3_s2_e4_c24_se0.25", "ir_r1_k3_s1_e4_c24_se0.25", "ir_r1_k3_s1_e4_c24_se0.25",
     "ir_r1_k3_s1_e4_c24_se0.25"),
    ("ir_r1_k5_s2_e4_c40_se0.25", "ir_r1_k5_s1_e4_c40_se0.25", "ir_r1_k5_s2_e4_c40_se0.25",
     "ir_r1_k5_s2_e4_c40_se0.25"),
    ("ir_r1_k3_s2_e6_c80_se0.25", "ir_r1_k3_s1_e4_c80_se0.25", "ir_r1_k3_s1_e4_c80_se0.25",
     "ir_r2_k3_s1_e4_c80_se0.25"),
    ("ir_r1_k3_s1_e6_c96_se0.25", "ir_r1_k3_s1_e6_c96_se0.25", "ir_r1_k3_s1_e6_c96_se0.25",
     "ir_r1_k3_s1_e6_c96_se0.25"),
    ("ir_r1_k5_s2_e6_c192_se0.25", "ir_r1_k5_s1_e6_c192_se0.25", "ir_r1_k5_s2_e6_c192_se0.25",
     "ir_r1_k5_s2_e6_c192_se0.25"),
    ("cn_r1_k1_s1_c320_se0.25",),
)
STEM_BLOCK = TEMPLATE[0][0]
TAIL_BLOCK = TEMPLATE[-1][0]

# the efficientnet-family settings of every Cream entry (configs/models/cream_*.yaml)
FAMILY_ARCH = dict(model="mobilenetv3", stem_size=STEM_SIZE, num_features=NUM_FEATURES, act_layer="swish",
                   bn_eps=1e-5, se_layer={"gate_layer": "hard_sigmoid", "act_layer": "relu", "rd_round": True},
                   se_from_exp=True, head_bias=True)

# search_for_layer's greedy order and caps (issue #17: hand-picked)
ORDER = (2, 3, 4, 1, 0, 2, 3, 4, 1, 0)
LIMITS = (3, 3, 3, 2, 2, 4, 4, 4, 4, 4)


def choice_block_string(stage: int, layer: int, choice: int) -> str:
    """The timm block string of `choice` at layer `layer` of searched stage `stage` (0..4)."""
    k, e = CHOICES[choice]
    stride = STRIDES[stage] if layer == 0 else 1
    return f"ir_r1_k{k}_s{stride}_e{e}_c{WIDTHS[stage]}_se0.25"


def layer_counts(strings_per_stage: Sequence[int]) -> List[int]:
    """Layers built per searched stage for `strings_per_stage` template strings (the c80 4th string is r2)."""
    out = []
    for s, n in enumerate(strings_per_stage):
        out.append(sum(int(b.split("_")[1][1:]) for b in TEMPLATE[s + 1][:n]))
    return out


def search_for_layer(flops_op_dict: Sequence[Sequence[Sequence[float]]], flops_minimum: float,
                     flops_maximum: float, image_size: int = 224
                     ) -> Tuple[Optional[List[int]], Optional[List[List[str]]], Optional[int]]:
    """Template strings per stage and the resolution for a FLOPs interval, as the official
    `search_for_layer`: start from one layer per stage, add layers greedily in ORDER up to LIMITS while the
    running total, each layer priced at its most expensive op, stays <= flops_maximum. Below the smallest
    space the interval is rescaled by 7/size_factor per step (resolution 32*size_factor). `image_size` is the
    resolution the table was measured at (official: 224, size factor 7).

    flops_op_dict[stage][choice] = (cost as first layer, cost as a later layer), searched stages 0..4.
    Returns (sta_num, truncated arch_def, resolution) or (None, None, None) when infeasible.
    """
    sta_num = [1, 1, 1, 1, 1]
    size_factor = base_factor = image_size // 32
    base_min = sum(flops_op_dict[i][0][0] for i in range(5))
    base_max = sum(flops_op_dict[i][5][0] for i in range(5))
    if base_min > flops_maximum:
        while base_min > flops_maximum and size_factor >= 2:
            size_factor -= 1
            flops_minimum = flops_minimum * (float(base_factor) / size_factor)
            flops_maximum = flops_maximum * (float(base_factor) / size_factor)
        if size_factor < 2:
            return None, None, None
    elif base_max < flops_minimum:
        cur = 0
        while base_max < flops_minimum and cur <= 9:
            if sta_num[ORDER[cur]] >= LIMITS[cur]:
                cur += 1
                continue
            base_max += flops_op_dict[ORDER[cur]][5][1]
            sta_num[ORDER[cur]] += 1
        if cur > 7 and base_max < flops_minimum:
            return None, None, None
    cur = 0
    while cur <= 9:
        if sta_num[ORDER[cur]] >= LIMITS[cur]:
            cur += 1
            continue
        base_max += flops_op_dict[ORDER[cur]][5][1]
        if base_max <= flops_maximum:
            sta_num[ORDER[cur]] += 1
        else:
            break
    arch_def = [list(item[:n]) for n, item in zip([1] + sta_num + [1], TEMPLATE)]
    return sta_num, arch_def, size_factor * 32


def official_flops_table(flops_dict: Dict) -> List[List[Tuple[float, float]]]:
    """op_by_layer_dict layout from a FlopsEst-style dict {block: {layer: [cost per choice]}} (keys str or int):
    table[stage][choice] = (first layer cost, later layer cost), searched stages 0..4."""
    def get(d, k):
        return d[str(k)] if str(k) in d else d[k]
    out = []
    for s in range(1, 6):
        blk = get(flops_dict, s)
        out.append([(get(blk, 0)[c], get(blk, 1)[c]) for c in range(len(CHOICES))])
    return out


def path_cost(flops_dict: Dict, fixed: float, arch: Sequence[Sequence[int]]) -> float:
    """FlopsEst.get_flops: fixed part + the DS block + the tail conv + every chosen op of `arch`."""
    def get(d, k):
        return d[str(k)] if str(k) in d else d[k]
    total = 0.0
    for b, stage in enumerate([[0]] + [list(a) for a in arch] + [[0]]):   # FlopsEst.get_flops' summation order
        for j, c in enumerate(stage):
            total += get(get(flops_dict, b), j)[c]
    return total + fixed


def sample_path(rng: np.random.RandomState, depths: Sequence[int], prob: Optional[Sequence[float]] = None,
                prob_as_replace: bool = False) -> List[List[int]]:
    """One path: each layer's choice drawn independently (PrioritizedBoard.get_cand_with_prob).

    prob None: uniform. The official call `np.random.choice(6, n, prob)` passes `prob` as the `replace`
    argument, so its 'pre_prob' sampling is uniform too; `prob_as_replace=True` reproduces that draw for draw.
    """
    n = len(CHOICES)
    if prob is None or prob_as_replace:
        return [rng.choice(n, d).tolist() for d in depths]
    return [rng.choice(n, d, p=list(prob)).tolist() for d in depths]


def cream_space(layers: Sequence[int] = (4, 4, 5, 4, 4), image_size: int = 224, drop_rate: float = 0.2,
                drop_path_rate: float = 0.0, strides: Sequence[int] = STRIDES, se: bool = True) -> MBConvChainSpace:
    """The Cream space with `layers` layers per searched stage, as an MBConv chain space. `strides` (first stride of
    each searched stage) is the official 2/2/2/1/2 and `se` (SE 0.25 in every block) the official True, except for
    small-image demos: at 32 px the official space ends on 1x1 maps and its SE blocks barely learn in a CPU demo's
    few hundred steps (docs/cream.md)."""
    def strip(block: str) -> str:
        return block if se else block.replace("_se0.25", "")

    return MBConvChainSpace(
        stages=[(w, int(st), int(n)) for w, st, n in zip(WIDTHS, strides, layers)], ops=tuple(strip(o) for o in OPS),
        stem_size=STEM_SIZE, head_blocks=(strip(STEM_BLOCK),), tail_blocks=(strip(TAIL_BLOCK),),
        num_features=NUM_FEATURES, act_layer=FAMILY_ARCH["act_layer"], model="mobilenetv3", bn_eps=FAMILY_ARCH["bn_eps"],
        se_layer=dict(FAMILY_ARCH["se_layer"]) if se else None, se_from_exp=True, head_bias=True,
        image_size=image_size, drop_rate=drop_rate, drop_path_rate=drop_path_rate, name="cream")


def space_flops_table(space: MBConvChainSpace, image_size: Optional[int] = None, num_classes: int = 1000) -> Dict:
    """Our MACs tables in FlopsEst's layout (MMACs): {"flops_dict": {block: {layer: [per choice]}}, "fixed": stem +
    pool + conv_head}, block 0 the DS block, block 6 the 1x1-320 conv. The classifier is left out, as FlopsEst."""
    table = space.cost_tables(("macs",), image_size, num_classes)["macs"]
    out: Dict = {0: {0: [None]}, 6: {0: [None]}}
    for s, d in enumerate(space.depths):
        out[s + 1] = {j: [float(v) / 1e6 for v in row] for j, row in enumerate(table.layer_costs(s, d)[0])}
    fixed, parts = _fixed_parts(space, image_size or space.image_size, num_classes)
    out[0][0] = [parts["blocks.0"]]
    out[6][0] = [parts[f"blocks.{len(space.stages) + 1}"]]
    return {"flops_dict": out, "fixed": fixed, "image_size": int(image_size or space.image_size)}


def _fixed_parts(space: MBConvChainSpace, size: int, num_classes: int) -> Tuple[float, Dict[str, float]]:
    from timm.models.mobilenetv3 import MobileNetV3

    from nas_zoo.cost import count_macs
    from nas_zoo.families.efficientnet import model_kwargs
    from ..cost import fixed_parts

    template = space.entry_arch([[0] * d for d in space.depths])
    with torch.device("meta"):
        child = MobileNetV3(num_classes=num_classes, **model_kwargs(dict(template, drop_rate=0.0, drop_path_rate=0.0)))
    names = ["conv_stem", "bn1", "blocks.0", f"blocks.{len(space.stages) + 1}", "global_pool", "conv_head", "act2"]
    parts = {n: count_macs(p.module, p.input_size) / 1e6
             for n, p in zip(names, fixed_parts(child, (3, size, size), names))}
    fixed = sum(v for k, v in parts.items() if not k.startswith("blocks."))
    return fixed, parts


def twice_differentiable_gates(module: nn.Module) -> nn.Module:
    """The meta update differentiates through a gradient; torch's native hardsigmoid has no double backward, so
    the SE gates become timm's HardSigmoid, the same function written as clamp(x + 3, 0, 6) / 6 (the official
    timm 0.1.20 gate is relu6(x + 3) / 6)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Hardsigmoid):
            setattr(module, name, HardSigmoid())
        else:
            twice_differentiable_gates(child)
    return module


def path_parameters(supernet: nn.Module, arch: Sequence[Sequence[int]]) -> List[nn.Parameter]:
    """The parameters one path uses, in the official `rand_parameters` order: every parameter outside the blocks
    (conv_stem first), then the blocks of the path in order (fixed blocks included)."""
    from .mbconv import ChoiceBlock

    net = supernet.net
    out = [p for n, p in net.named_parameters() if not n.startswith("blocks.")]
    choices = {}
    for s, layers in enumerate(supernet.searched):
        for l, (bs, bl) in enumerate(layers):
            if l < len(arch[s]):
                choices[(bs, bl)] = int(arch[s][l])
    for bs, stage in enumerate(net.blocks):
        for bl, block in enumerate(stage):
            if isinstance(block, ChoiceBlock):
                if (bs, bl) in choices:
                    out.extend(block.ops[choices[(bs, bl)]].parameters())
            else:
                out.extend(block.parameters())
    return out


def official_key(key: str) -> Optional[str]:
    """An official supernet key as the space's supernet names it (None for the meta layer)."""
    if key.startswith("meta_layer."):
        return None
    parts = key.split(".")
    if parts[0] != "blocks":
        return "net." + key
    s, l, c, rest = parts[1], parts[2], parts[3], ".".join(parts[4:])
    if s in ("0", "6"):
        return f"net.blocks.{s}.{l}.{rest}"
    return f"net.blocks.{s}.{l}.ops.{c}.{rest}"
