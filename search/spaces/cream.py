"""Cream's search space (microsoft/Cream `lib/models/structures/supernet.py:gen_supernet`).

Stem conv3x3/2 (16) + a fixed DS block (k3, SE), five searched stages of widths 24/40/80/96/192 with first strides
2/2/2/1/2, each layer choosing one of six inverted-residual blocks (k3/k5/k7 x e4/e6, in the official
`choices_list` order), a fixed 1x1 conv to 320, global pool, conv_head 1280 (with bias) and the classifier.
Every block is IR with SE 0.25 (hard_sigmoid gate, ReLU inside) and Swish. Results are `mobilenetv3`-style
`efficientnet`-family entries (configs/models/cream_*.yaml), so every block here is built by timm's
`EfficientNetBuilder` with that family's settings (`nas_zoo.families.efficientnet.model_kwargs`).

An architecture is five lists of choice indices (one per searched stage), the official `cand` without its
leading and trailing `[0]`. The supernet's state_dict keys are the official ones
(`blocks.<stage>.<layer>.<choice>.*`, stage 0 the DS block, stage 6 the 1x1 conv), so official weights load as
they are.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d, create_conv2d, get_norm_act_layer
from timm.layers.activations import HardSigmoid
from timm.models._efficientnet_builder import EfficientNetBuilder, decode_arch_def

from nas_zoo.families.efficientnet import model_kwargs

__all__ = ["CHOICES", "TEMPLATE", "WIDTHS", "STRIDES", "FAMILY_ARCH", "CreamSupernet", "search_for_layer",
           "layer_counts", "choice_block_string", "entry_block_args", "sample_path", "path_cost",
           "official_flops_table", "measure_flops_table", "SpaceError", "cost_range"]

# choices_list (tools/train.py): [[3,4],[3,6],[5,4],[5,6],[7,4],[7,6]] as (kernel, expansion)
CHOICES: Tuple[Tuple[int, int], ...] = ((3, 4), (3, 6), (5, 4), (5, 6), (7, 4), (7, 6))
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


class SpaceError(ValueError):
    def __init__(self, field: str, problem: str):
        self.field, self.problem = field, problem
        super().__init__(f"arch field '{field}': {problem}")


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


def cost_range(tables: Dict, layers: Sequence[int] = (4, 4, 5, 4, 4)) -> Tuple[float, float]:
    """(cheapest path with one layer per stage, most expensive path with `layers`) from a measure_flops_table."""
    d, fixed = tables["flops_dict"], tables["fixed"]
    lo = path_cost(d, fixed, [[int(np.argmin(d[s + 1][0]))] for s in range(5)])
    hi = path_cost(d, fixed, [[int(np.argmax(d[s + 1][j])) for j in range(n)] for s, n in enumerate(layers)])
    return lo, hi


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


def _builder(drop_path_rate: float = 0.0) -> EfficientNetBuilder:
    kw = model_kwargs(dict(FAMILY_ARCH, block_args=[[STEM_BLOCK]]))
    return EfficientNetBuilder(output_stride=32, pad_type=kw["pad_type"], round_chs_fn=kw["round_chs_fn"],
                               se_from_exp=kw["se_from_exp"], act_layer=kw["act_layer"],
                               norm_layer=kw["norm_layer"], se_layer=kw["se_layer"],
                               drop_path_rate=drop_path_rate)


def build_block(block_string: str, in_chs: int) -> nn.Module:
    """One block built by timm's EfficientNetBuilder with the Cream entries' family settings."""
    return _builder()(in_chs, decode_arch_def([[block_string]]))[0][0]


def entry_block_args(arch: Sequence[Sequence[int]]) -> List[List[str]]:
    """The family's block_args of a path: DS stem block, one string per chosen layer, the 1x1-320 tail."""
    out = [[STEM_BLOCK]]
    for s, stage in enumerate(arch):
        out.append([choice_block_string(s, j, c) for j, c in enumerate(stage)])
    out.append([TAIL_BLOCK])
    return out


def _twice_differentiable_gates(module: nn.Module) -> None:
    """The meta update differentiates through a gradient; torch's native hardsigmoid has no double backward, so
    the SE gates become timm's HardSigmoid, the same function written as clamp(x + 3, 0, 6) / 6 (the official
    timm 0.1.20 gate is relu6(x + 3) / 6)."""
    for name, child in module.named_children():
        if isinstance(child, nn.Hardsigmoid):
            setattr(module, name, HardSigmoid())
        else:
            _twice_differentiable_gates(child)


class CreamSupernet(nn.Module):
    """The supernet: `layers[s]` choice layers in searched stage s, each a ModuleList of the six choice blocks.

    forward(x, arch): arch is five lists of choice indices; a stage runs its first len(arch[s]) layers (the
    official forward zips layers with choices, so a shorter list leaves the last layers unused).
    """

    def __init__(self, num_classes: int, layers: Sequence[int] = (4, 4, 5, 4, 4), drop_rate: float = 0.0):
        super().__init__()
        kw = model_kwargs(dict(FAMILY_ARCH, block_args=[[STEM_BLOCK]]))
        self.layers = [int(n) for n in layers]
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.conv_stem = create_conv2d(3, STEM_SIZE, 3, stride=2, padding=kw["pad_type"])
        self.bn1 = get_norm_act_layer(kw["norm_layer"], kw["act_layer"])(STEM_SIZE, inplace=True)
        blocks = [nn.ModuleList([nn.ModuleList([build_block(STEM_BLOCK, STEM_SIZE)])])]
        in_chs = STEM_SIZE
        for s, n in enumerate(self.layers):
            stage = nn.ModuleList()
            for j in range(n):
                stage.append(nn.ModuleList(build_block(choice_block_string(s, j, c), in_chs)
                                           for c in range(len(CHOICES))))
                in_chs = WIDTHS[s]
            blocks.append(stage)
        tail_chs = int(TAIL_BLOCK.split("_c")[1].split("_")[0])
        blocks.append(nn.ModuleList([nn.ModuleList([build_block(TAIL_BLOCK, in_chs)])]))
        self.blocks = nn.ModuleList(blocks)
        self.global_pool = SelectAdaptivePool2d(pool_type="avg")
        self.conv_head = create_conv2d(tail_chs, NUM_FEATURES, 1, padding=kw["pad_type"], bias=True)
        self.act2 = kw["act_layer"](inplace=True)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(NUM_FEATURES, num_classes)
        _twice_differentiable_gates(self)

    def _full(self, arch):
        return [[0]] + [list(a) for a in arch] + [[0]]

    def forward_features(self, x: torch.Tensor, arch: Sequence[Sequence[int]]) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        for stage, choices in zip(self.blocks, self._full(arch)):
            for layer, c in zip(stage, choices):
                x = layer[int(c)](x)
        return self.act2(self.conv_head(self.global_pool(x)))

    def forward(self, x: torch.Tensor, arch: Sequence[Sequence[int]]) -> torch.Tensor:
        x = self.flatten(self.forward_features(x, arch))
        if self.drop_rate > 0:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)

    def path_parameters(self, arch: Sequence[Sequence[int]]) -> List[nn.Parameter]:
        """The parameters one path uses, in the official `rand_parameters` order: every non-block parameter
        (conv_stem first), then the chosen blocks stage by stage."""
        out = [p for n, p in self.named_parameters() if not n.startswith("blocks.")]
        for stage, choices in zip(self.blocks, self._full(arch)):
            for layer, c in zip(stage, choices):
                out.extend(layer[int(c)].parameters())
        return out

    def check_arch(self, arch) -> None:
        if not isinstance(arch, (list, tuple)) or len(arch) != len(self.layers):
            raise SpaceError("arch", f"expected {len(self.layers)} lists of choice indices, got {arch!r}")
        for s, stage in enumerate(arch):
            if not isinstance(stage, (list, tuple)) or not 1 <= len(stage) <= self.layers[s]:
                raise SpaceError(f"arch[{s}]", f"expected 1..{self.layers[s]} choice indices, got {stage!r}")
            for j, c in enumerate(stage):
                if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= c < len(CHOICES):
                    raise SpaceError(f"arch[{s}][{j}]", f"expected a choice index 0..{len(CHOICES) - 1}, got {c!r}")

    def child_state_dict(self, supernet_state: Dict[str, torch.Tensor], arch) -> Dict[str, torch.Tensor]:
        """Keys of the timm MobileNetV3 built from `entry_block_args(arch)`: blocks.<stage>.<layer>.*"""
        out = {}
        for k, v in supernet_state.items():
            if not k.startswith("blocks."):
                if not k.startswith("meta_layer."):
                    out[k] = v
                continue
            _, s, j, c, rest = k.split(".", 4)
            s, j, c = int(s), int(j), int(c)
            full = self._full(arch)
            if j < len(full[s]) and full[s][j] == c:
                out[f"blocks.{s}.{j}.{rest}"] = v
        return out


def measure_flops_table(num_classes: int = 1000, image_size: int = 224,
                        layers: Sequence[int] = (4, 4, 5, 4, 4)) -> Dict:
    """Our own cost tables (torch.utils.flop_counter MACs), in FlopsEst's layout:
    {"flops_dict": {block: {layer: [MACs per choice]}}, "fixed": stem + pool + conv_head MACs} in MMACs."""
    from nas_zoo.cost import count_macs

    net = CreamSupernet(num_classes, layers)
    net.eval()
    size = image_size
    out: Dict = {}
    stem = nn.Sequential(net.conv_stem, net.bn1)
    fixed = count_macs(stem, (3, image_size, image_size)) / 1e6
    size = (image_size + 1) // 2
    chs = STEM_SIZE
    for b, stage in enumerate(net.blocks):
        out[b] = {}
        for j, layer in enumerate(stage):
            shape = (1, chs, size, size)
            out[b][j] = [count_macs(blk, shape[1:]) / 1e6 for blk in layer]
            with torch.no_grad():
                y = layer[0](torch.zeros(shape))
            chs, size = y.shape[1], y.shape[-1]
    head = nn.Sequential(net.global_pool, net.conv_head)
    fixed += count_macs(head, (chs, size, size)) / 1e6
    return {"flops_dict": out, "fixed": fixed, "image_size": image_size}
