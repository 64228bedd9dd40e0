"""DenseNAS's densely connected search spaces: the MobileNetV2-based and the ResNet-based super networks.

A space is a list of nodes (width, feature size, stage, stack layers), the last one ``last_dim``. Node i connects to
the following nodes, at most ``adjoin_connect_nums[stage[i]]`` of them, up to the first one that is more than one
stage away or whose feature size is not the same or half (official ``search_space_base.py:_create_output_list``).
Every node but the first is a routing block: one head MixedOp per incoming path (it changes width and stride),
then ``num_layers`` stacked MixedOps at stride 1 whose ``skip_connect`` candidate searches depth. The final node
is one conv1x1 branch per incoming path.

Architecture parameters (official names, so the fixtures' arrays load by key): ``beta_weights[i]`` over node i's
outgoing edges, ``alpha_head_weights[b]`` (incoming paths x head ops) and ``alpha_stack_weights[b]`` (stack layers x
stack ops) of routing block b.

Each candidate op is built by the builder of the zoo family its results become: timm's EfficientNetBuilder (the
`efficientnet` family's settings: ReLU6, BN eps 1e-3) for MBConv, timm's ResNet ``BasicBlock`` /
``downsample_conv`` (the `densenas_resnet` family's) for ResNet blocks. The supernet's BNs are ``affine=False``
where the official supernet has it (everything but the fixed MBConv t1 block and the ResNet stem).

Costs: a table in the official four-element layout ``[stem, [[head[branch][op], stack[layer][op]] per block],
[conv1x1 branch costs into last_dim], classifier]`` and the chained estimate of `chained_cost`.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, create_conv2d
from timm.models.resnet import BasicBlock, downsample_conv

from nas_zoo.families.densenas import (MBV2_BN_EPS, MBV2_OPS, RES_BN_EPS, SKIP_OP, NetConfig, NetConfigBlock,
                                       _MBV2_WITH_EXPANSION, _MBV2_WITHOUT_EXPANSION)

from ..cost import CostTableError, timm_block
from . import Space, SpaceError, register_space

__all__ = ["DenseSpaceConfig", "MBV2_SPACE", "RESNET_SPACE", "SPACES", "DenseGraph", "DenseSupernet",
           "DenseArchParams", "Sample", "CostTableFormatError", "read_cost_table", "format_cost_table",
           "chained_cost", "check_cost_table", "path_weights", "PathWeights", "derive_path", "derive_net_config", "official_supernet_to_ours", "path_cost", "DenseNASSpace",
           "DenseSpaceError", "constrained_arch", "build_cost_table"]

MBV2_HEAD_OPS = ("mbconv_k3_t3", "mbconv_k3_t6", "mbconv_k5_t3", "mbconv_k5_t6", "mbconv_k7_t3", "mbconv_k7_t6")
RES_HEAD_OPS = ("basic_block",)


@dataclass(frozen=True)
class DenseSpaceConfig:
    """One dense search space (the official ``net_scale`` / ``search_params`` of a search yaml). Tuples, never
    mutated: ``last_dim`` is a node of the graph, not appended to the widths."""

    net_type: str  # "mbv2" | "res"
    chs: Tuple[int, ...]
    fm_sizes: Tuple[int, ...]  # feature size of every node at `input_size`
    stages: Tuple[int, ...]  # one per node, last_dim included
    num_layers: Tuple[int, ...]  # stack layers per node (the first node has none)
    adjoin_connect_nums: Tuple[int, ...]  # per stage
    last_dim: int
    head_ops: Tuple[str, ...]
    stack_ops: Tuple[str, ...]
    input_size: int = 224
    num_classes: int = 1000

    def __post_init__(self):
        n = len(self.chs)
        for name in ("fm_sizes", "num_layers"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name}: expected {n} entries (one per width), got {len(getattr(self, name))}")
        if len(self.stages) != n + 1:
            raise ValueError(f"stages: expected {n + 1} entries (one per width, then last_dim), got "
                             f"{len(self.stages)}")
        if max(self.stages) >= len(self.adjoin_connect_nums):
            raise ValueError(f"adjoin_connect_nums: expected one entry per stage ({max(self.stages) + 1})")
        if self.stack_ops[-1] != SKIP_OP:
            raise ValueError(f"stack_ops: the last stack op must be {SKIP_OP!r} (the depth choice)")

    @property
    def widths(self) -> Tuple[int, ...]:
        return tuple(self.chs) + (self.last_dim,)

    @property
    def feature_sizes(self) -> Tuple[int, ...]:
        return tuple(self.fm_sizes) + (self.fm_sizes[-1],)

    def narrowed(self, nodes: Sequence[int], **changes) -> "DenseSpaceConfig":
        """A smaller space keeping the listed nodes (indices into chs), e.g. for a CPU demo."""
        keep = list(nodes)
        fields = dict(chs=tuple(self.chs[i] for i in keep), fm_sizes=tuple(self.fm_sizes[i] for i in keep),
                      stages=tuple(self.stages[i] for i in keep) + (self.stages[-1],),
                      num_layers=tuple(self.num_layers[i] for i in keep))
        fields.update({k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})
        return replace(self, **fields)


# configs/imagenet_search_cfg_mbv2.yaml (+ last_dim 1984, the stem's 16 and its fixed MBConv t1)
MBV2_SPACE = DenseSpaceConfig(
    net_type="mbv2",
    chs=(16, 24, 32, 40, 48, 56, 64, 72, 96, 112, 128, 160, 176, 192, 320, 352, 384),
    fm_sizes=(112, 56, 28, 28, 28, 14, 14, 14, 14, 14, 14, 7, 7, 7, 7, 7, 7),
    stages=(0, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6, 7),
    num_layers=(0,) + (3,) * 13 + (0, 0, 0),
    adjoin_connect_nums=(4,) * 8,
    last_dim=1984, head_ops=MBV2_HEAD_OPS, stack_ops=MBV2_HEAD_OPS + (SKIP_OP,))

# configs/imagenet_search_cfg_resnet.yaml (+ last_dim 512)
RESNET_SPACE = DenseSpaceConfig(
    net_type="res",
    chs=(32, 48, 56, 64, 72, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240, 256, 272, 288, 480, 496, 512),
    fm_sizes=(112, 56, 56, 56, 28, 28, 28, 14, 14, 14, 14, 14, 14, 14, 7, 7, 7, 7, 7, 7, 7),
    stages=(0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 7),
    num_layers=(0, 0, 0, 0, 5, 5, 5, 15, 15, 15, 15, 5, 5, 5, 5, 5, 5, 5, 1, 1, 1),
    adjoin_connect_nums=(10,) * 8,
    last_dim=512, head_ops=RES_HEAD_OPS, stack_ops=RES_HEAD_OPS + (SKIP_OP,))

SPACES = {"mbv2": MBV2_SPACE, "resnet": RESNET_SPACE}


# ----------------------------------------------------------------------------------------------------------------
# the graph

class DenseGraph:
    """Edges of a dense space. ``outputs[i]``: the official output_configs entry of node i; ``inputs[j - 1]``: the
    input_configs entry of node j >= 1 (predecessors nearest first, ``beta_idx`` into the source's outputs)."""

    def __init__(self, cfg: DenseSpaceConfig):
        self.cfg = cfg
        widths, fms, stages = cfg.widths, cfg.feature_sizes, cfg.stages
        num_layers = tuple(cfg.num_layers) + (0,)
        n = len(widths)
        self.num_nodes = n
        self.outputs: List[Dict[str, Any]] = []
        for i in range(n - 1):
            out_id = []
            for j in range(i + 1, n):
                if len(out_id) >= cfg.adjoin_connect_nums[stages[i]]:
                    break
                if stages[j] - stages[i] > 1 or fms[i] / fms[j] not in (1, 2):
                    break
                out_id.append(j)
            self.outputs.append({"ch": widths[i], "fm_size": fms[i], "out_chs": [widths[j] for j in out_id],
                                 "out_fms": [fms[j] for j in out_id],
                                 "strides": [int(fms[i] // fms[j]) for j in out_id], "out_id": out_id,
                                 "num_stack_layers": num_layers[i]})
        self.inputs: List[Dict[str, Any]] = []
        for j in range(1, n):
            preds = [(i, o["out_id"].index(j)) for i, o in enumerate(self.outputs) if j in o["out_id"]]
            preds.sort(key=lambda p: -p[0])
            if not preds:
                raise ValueError(f"node {j} (width {widths[j]}) has no incoming edge: check fm_sizes / stages / "
                                 "adjoin_connect_nums")
            self.inputs.append({"ch": widths[j], "fm_size": fms[j], "in_chs": [widths[i] for i, _ in preds],
                                "in_fms": [fms[i] for i, _ in preds],
                                "strides": [int(fms[i] // fms[j]) for i, _ in preds],
                                "in_block_idx": [i for i, _ in preds], "beta_idx": [b for _, b in preds],
                                "num_stack_layers": num_layers[j]})
        for i, o in enumerate(self.outputs):
            if not o["out_id"]:
                raise ValueError(f"node {i} (width {widths[i]}) has no outgoing edge")

    @property
    def num_blocks(self) -> int:
        """Routing blocks (nodes 1 .. n-2); the final node is the conv1x1 block."""
        return self.num_nodes - 2

    def to_json(self) -> Dict[str, Any]:
        return {"output_configs": self.outputs, "input_configs": self.inputs, "block_chs": list(self.cfg.widths)}

    def paths(self) -> List[List[int]]:
        """Every node sequence from node 0 to the final node (brute force; small spaces only)."""
        out: List[List[int]] = []

        def walk(path):
            if path[-1] == self.num_nodes - 1:
                out.append(list(path))
                return
            for j in self.outputs[path[-1]]["out_id"]:
                walk(path + [j])

        walk([0])
        return out


# ----------------------------------------------------------------------------------------------------------------
# ops, built by the zoo families' builders

def _affine_off(module: nn.Module) -> nn.Module:
    """The official supernet's BNs have no scale and shift."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.affine = False
            m.weight = None
            m.bias = None
    return module


def mbconv_block_string(op: str, stride: int, out_chs: int) -> str:
    kernel, expansion = MBV2_OPS[op]
    if expansion == 1:
        return f"ds_r1_k{kernel}_s{stride}_c{out_chs}"
    return f"ir_r1_k{kernel}_s{stride}_e{expansion}_c{out_chs}"


def mbconv(op: str, in_chs: int, out_chs: int, stride: int, affine: bool = False) -> nn.Module:
    """One MBConv op, built as the `efficientnet` family builds DenseNAS entries (ReLU6, BN eps 1e-3)."""
    block = timm_block(mbconv_block_string(op, stride, out_chs), in_chs, act_layer="relu6", bn_eps=MBV2_BN_EPS)
    return block if affine else _affine_off(block)


def basic_block(in_chs: int, out_chs: int, stride: int, affine: bool = False, bn_eps: float = RES_BN_EPS) -> nn.Module:
    """One ResNet basic block as the `densenas_resnet` family builds it (1x1 conv + BN shortcut when needed)."""
    norm_layer = partial(nn.BatchNorm2d, eps=bn_eps, affine=affine)
    downsample = None
    if stride != 1 or in_chs != out_chs:
        downsample = downsample_conv(in_chs, out_chs, 1, stride=stride, norm_layer=norm_layer)
    return BasicBlock(in_chs, out_chs, stride=stride, downsample=downsample, norm_layer=norm_layer,
                      act_layer=nn.ReLU)


def make_op(net_type: str, op: str, in_chs: int, out_chs: int, stride: int) -> nn.Module:
    if op == SKIP_OP:
        if stride != 1 or in_chs != out_chs:
            raise ValueError(f"{SKIP_OP} keeps the shape; got {in_chs}->{out_chs} at stride {stride}")
        return nn.Identity()
    if net_type == "mbv2":
        return mbconv(op, in_chs, out_chs, stride)
    if op != "basic_block":
        raise ValueError(f"unknown ResNet-space op {op!r}; expected basic_block or {SKIP_OP}")
    return basic_block(in_chs, out_chs, stride)


class MixedOp(nn.Module):
    """Candidate ops of one layer; only the sampled ones run, weighted by softmax over the sampled logits."""

    def __init__(self, net_type: str, ops: Sequence[str], in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.op_names = tuple(ops)
        self._ops = nn.ModuleList(make_op(net_type, op, in_chs, out_chs, stride) for op in ops)

    def forward(self, x: torch.Tensor, idx: Sequence[int], weights: torch.Tensor) -> torch.Tensor:
        out = None
        for k, i in enumerate(idx):
            y = weights[k] * self._ops[i](x)
            out = y if out is None else out + y
        return out


class HeadLayer(nn.Module):
    def __init__(self, net_type, ops, in_chs: Sequence[int], out_chs: int, strides: Sequence[int]):
        super().__init__()
        self.head_branches = nn.ModuleList(MixedOp(net_type, ops, c, out_chs, s) for c, s in zip(in_chs, strides))


class StackLayers(nn.Module):
    def __init__(self, net_type, ops, chs: int, num_layers: int):
        super().__init__()
        self.stack_layers = nn.ModuleList(MixedOp(net_type, ops, chs, chs, 1) for _ in range(num_layers))


class RoutingBlock(nn.Module):
    def __init__(self, cfg: DenseSpaceConfig, node_inputs: Mapping[str, Any]):
        super().__init__()
        self.head_layer = HeadLayer(cfg.net_type, cfg.head_ops, node_inputs["in_chs"], node_inputs["ch"],
                                    node_inputs["strides"])
        self.stack_layers = StackLayers(cfg.net_type, cfg.stack_ops, node_inputs["ch"],
                                        node_inputs["num_stack_layers"])


class Conv1x1Branch(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, act: type, bn_eps: float):
        super().__init__()
        self.conv1_1 = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, bias=False),
                                     _affine_off(BatchNormAct2d(out_chs, eps=bn_eps, act_layer=act)))


class Conv1x1Block(nn.Module):
    def __init__(self, in_chs: Sequence[int], out_chs: int, act: type, bn_eps: float):
        super().__init__()
        self.conv1_1_branches = nn.ModuleList(Conv1x1Branch(c, out_chs, act, bn_eps) for c in in_chs)


# ----------------------------------------------------------------------------------------------------------------
# architecture parameters and samples

class DenseArchParams(nn.Module):
    """beta / alpha_head / alpha_stack, initialised as the official ``1e-3 * randn``."""

    def __init__(self, graph: DenseGraph, generator: Optional[torch.Generator] = None):
        super().__init__()
        cfg = graph.cfg

        def param(*shape):
            return nn.Parameter(1e-3 * torch.randn(*shape, generator=generator))

        self.beta_weights = nn.ParameterList(param(len(o["out_id"])) for o in graph.outputs)
        blocks = graph.inputs[:-1]
        self.alpha_head_weights = nn.ParameterList(param(len(b["in_block_idx"]), len(cfg.head_ops)) for b in blocks)
        self.alpha_stack_weights = nn.ParameterList(param(b["num_stack_layers"], len(cfg.stack_ops)) for b in blocks)

    def alphas(self) -> List[nn.Parameter]:
        return list(self.alpha_head_weights) + list(self.alpha_stack_weights)

    def betas(self) -> List[nn.Parameter]:
        return list(self.beta_weights)


@dataclass
class Sample:
    """Op indices per MixedOp: ``head[b][branch]`` and ``stack[b][layer]`` (sorted lists of op indices)."""

    head: List[List[List[int]]]
    stack: List[List[List[int]]]

    @classmethod
    def all_ops(cls, graph: DenseGraph) -> "Sample":
        cfg = graph.cfg
        blocks = graph.inputs[:-1]
        return cls(head=[[list(range(len(cfg.head_ops)))] * len(b["in_block_idx"]) for b in blocks],
                   stack=[[list(range(len(cfg.stack_ops)))] * b["num_stack_layers"] for b in blocks])

    @classmethod
    def draw(cls, arch: DenseArchParams, k: int, policy: str, generator: Optional[torch.Generator] = None,
             temperature: float = 1.0) -> "Sample":
        """k ops per MixedOp without replacement: by softmax probability (``prob``) or uniformly (``uniform``),
        then sorted, as the official ``sample_branch``."""

        def rows(params):
            out = []
            for p in params:
                if p.shape[0] == 0:
                    out.append([])
                    continue
                with torch.no_grad():
                    probs = (F.softmax(p.detach().double() / temperature, dim=-1) if policy == "prob"
                             else torch.ones(p.shape, dtype=torch.float64))
                    # a layer with fewer candidates than k (the ResNet head: basic_block only) takes them all
                    picks = torch.multinomial(probs, min(k, p.shape[1]), replacement=False, generator=generator)
                out.append([sorted(int(i) for i in row) for row in picks])
            return out

        if policy not in ("prob", "uniform"):
            raise ValueError(f"sample policy: expected 'prob' or 'uniform', got {policy!r}")
        return cls(head=rows(arch.alpha_head_weights), stack=rows(arch.alpha_stack_weights))

    def to_json(self) -> Dict[str, Any]:
        return {"head": self.head, "stack": self.stack}


@dataclass
class PathWeights:
    """Softmaxed β per node and softmaxed sampled α per MixedOp (what both the forward and the cost use)."""

    beta: List[torch.Tensor]
    head: List[List[torch.Tensor]]
    stack: List[List[torch.Tensor]]
    head_cost: List[List[torch.Tensor]]  # op weights of the cost estimate: the official cost takes softmax(alpha)
    stack_cost: List[List[torch.Tensor]]  # without the temperature (beta keeps it)


def path_weights(arch: DenseArchParams, sample: Sample, temperature: float = 1.0) -> PathWeights:
    def ops(params, rows_per_block, t):
        return [[F.softmax(a[r, idx] / t, dim=-1) for r, idx in enumerate(rows)]
                for a, rows in zip(params, rows_per_block)]

    beta = [F.softmax(b / temperature, dim=-1) for b in arch.beta_weights]
    head = ops(arch.alpha_head_weights, sample.head, temperature)
    stack = ops(arch.alpha_stack_weights, sample.stack, temperature)
    if temperature == 1.0:
        return PathWeights(beta, head, stack, head, stack)
    return PathWeights(beta, head, stack, ops(arch.alpha_head_weights, sample.head, 1.0),
                       ops(arch.alpha_stack_weights, sample.stack, 1.0))


# ----------------------------------------------------------------------------------------------------------------
# the super network

class DenseSupernet(nn.Module):
    """The dense super network. Module names follow the official ``Network`` (``input_block``, ``head_block``,
    ``blocks.i.head_layer.head_branches.j._ops.k``, ``blocks.i.stack_layers.stack_layers.l._ops.k``,
    ``conv1_1_block.conv1_1_branches.j``, ``classifier``); inside an op they are timm's.

    ``final_double_softmax``: the official ``Conv1_1_Block`` softmaxes its incoming path weights a second time
    (over the incoming paths) while the cost uses them once; off by default (paper: one softmax)."""

    def __init__(self, cfg: DenseSpaceConfig, num_classes: Optional[int] = None, final_double_softmax: bool = False):
        super().__init__()
        self.cfg = cfg
        self.graph = graph = DenseGraph(cfg)
        self.final_double_softmax = final_double_softmax
        stem = cfg.chs[0]
        if cfg.net_type == "mbv2":
            self.input_block = nn.Sequential(create_conv2d(3, stem, 3, stride=2),
                                             _affine_off(BatchNormAct2d(stem, eps=MBV2_BN_EPS, act_layer=nn.ReLU6)))
            # the fixed first MBConv t1; its project BN keeps its affine parameters, as in the official supernet
            self.head_block = _affine_off_except_last(mbconv("mbconv_k3_t1", stem, stem, 1, affine=True))
            act, eps = nn.ReLU6, MBV2_BN_EPS
        else:
            self.input_block = nn.Sequential(nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False),
                                             BatchNormAct2d(stem, eps=RES_BN_EPS, act_layer=nn.ReLU))
            self.head_block = None
            act, eps = nn.ReLU, RES_BN_EPS
        self.blocks = nn.ModuleList(RoutingBlock(cfg, b) for b in graph.inputs[:-1])
        final = graph.inputs[-1]
        self.conv1_1_block = Conv1x1Block(final["in_chs"], cfg.last_dim, act, eps)
        self.classifier = nn.Linear(cfg.last_dim, num_classes or cfg.num_classes)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_block(x)
        return x if self.head_block is None else self.head_block(x)

    def forward(self, x: torch.Tensor, weights: PathWeights, sample: Sample) -> torch.Tensor:
        return self.forward_head(self.node_outputs(x, weights, sample), weights)

    def node_outputs(self, x: torch.Tensor, weights: PathWeights, sample: Sample) -> List[torch.Tensor]:
        """Output of every node but the final one."""
        outs = [self.stem(x)]
        for b, block in enumerate(self.blocks):
            spec = self.graph.inputs[b]
            y = None
            for r, (src, bidx) in enumerate(zip(spec["in_block_idx"], spec["beta_idx"])):
                h = weights.beta[src][bidx] * block.head_layer.head_branches[r](outs[src], sample.head[b][r],
                                                                                weights.head[b][r])
                y = h if y is None else y + h
            for l, layer in enumerate(block.stack_layers.stack_layers):
                y = layer(y, sample.stack[b][l], weights.stack[b][l])
            outs.append(y)
        return outs

    def forward_head(self, outs: Sequence[torch.Tensor], weights: PathWeights) -> torch.Tensor:
        spec = self.graph.inputs[-1]
        w = torch.stack([weights.beta[src][bidx] for src, bidx in zip(spec["in_block_idx"], spec["beta_idx"])])
        if self.final_double_softmax:
            w = F.softmax(w, dim=-1)
        y = None
        for r, src in enumerate(spec["in_block_idx"]):
            h = w[r] * self.conv1_1_block.conv1_1_branches[r].conv1_1(outs[src])
            y = h if y is None else y + h
        y = F.adaptive_avg_pool2d(y, 1).flatten(1)
        return self.classifier(y)

    def forward_arch(self, x: torch.Tensor, arch: Mapping[str, Any], head: bool = True) -> torch.Tensor:
        """Only the architecture's path and ops, each with weight 1: the derived network with inherited weights
        (`DenseNASSpace` architecture format). ``head=False`` stops after the last block (a ResNet child, which has
        no final conv1x1, continues from there with its own classifier)."""
        cfg, path = self.cfg, arch["path"]
        x = self.stem(x)
        for k, (prev, node) in enumerate(zip(path[:-2], path[1:-1])):
            block = self.blocks[node - 1]
            branch = self.graph.inputs[node - 1]["in_block_idx"].index(prev)
            x = block.head_layer.head_branches[branch]._ops[cfg.head_ops.index(arch["head"][k])](x)
            for l, op in enumerate(arch["stack"][k]):
                x = block.stack_layers.stack_layers[l]._ops[cfg.stack_ops.index(op)](x)
        if not head:
            return x
        branch = self.graph.inputs[-1]["in_block_idx"].index(path[-2])
        x = self.conv1_1_block.conv1_1_branches[branch].conv1_1(x)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _affine_off_except_last(block: nn.Module) -> nn.Module:
    """MBConv t1 of the official supernet: depthwise BN without affine, project BN with it."""
    bns = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns[:-1]:
        _affine_off(m)
    return block


# ----------------------------------------------------------------------------------------------------------------
# official key layout -> ours

def official_supernet_to_ours(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """Official supernet keys -> `DenseSupernet` keys (only the names inside an MBConv op differ)."""
    out = {}
    for key, value in state_dict.items():
        prefix, rest = None, None
        if "._ops." in key:
            head, tail = key.split("._ops.", 1)
            op_index, rest = tail.split(".", 1)
            prefix = f"{head}._ops.{op_index}."
        elif key.startswith("head_block."):
            prefix, rest = "head_block.", key[len("head_block."):]
        if prefix is not None and rest.startswith("_"):
            expanded = any(k.startswith(prefix + "_expand_conv.") for k in state_dict)
            table = _MBV2_WITH_EXPANSION if expanded else _MBV2_WITHOUT_EXPANSION
            for old, new in table.items():
                if rest.startswith(old + "."):
                    rest = new + rest[len(old):]
                    break
            key = prefix + rest
        out[key] = value
    return out


# ----------------------------------------------------------------------------------------------------------------
# cost tables (official four-element layout) and the chained estimate

class CostTableFormatError(CostTableError):
    """An official-format cost table that cannot be read or does not fit the space's graph."""


def read_cost_table(path: Union[str, Path]) -> list:
    """Read an official latency / MAC table file (one Python-literal list) with `ast.literal_eval`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise CostTableFormatError(str(path), "<file>", f"cannot read ({e.strerror})") from None
    try:
        table = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise CostTableFormatError(str(path), "<file>", "not a Python-literal list [stem, blocks, final branches, "
                                                        "classifier] (code is never run)") from None
    _check_table_shape(table, str(path))
    return table


def _check_table_shape(table: Any, source: str) -> None:
    if not isinstance(table, list) or len(table) != 4:
        raise CostTableFormatError(source, "<top>", "expected a list of 4 elements [stem, blocks, final branches, "
                                                    "classifier]")
    if not isinstance(table[0], (int, float)) or not isinstance(table[3], (int, float)):
        raise CostTableFormatError(source, "stem/classifier", "expected numbers")
    if not isinstance(table[1], list) or not all(isinstance(b, list) and len(b) == 2 for b in table[1]):
        raise CostTableFormatError(source, "blocks", "expected a list of [head, stack] per routing block")
    if not isinstance(table[2], list):
        raise CostTableFormatError(source, "final branches", "expected a list of numbers")


def check_cost_table(table: list, graph: DenseGraph, source: str = "<cost table>") -> None:
    """The table matches the graph: one entry per block, per incoming path and per op; stack rows at least as many
    as the stack layers (the shipped MBV2 table has rows for 0-layer blocks, which are ignored)."""
    _check_table_shape(table, source)
    cfg = graph.cfg
    if len(table[1]) != graph.num_blocks:
        raise CostTableFormatError(source, "blocks", f"expected {graph.num_blocks} routing blocks, got {len(table[1])}")
    for b, (head, stack) in enumerate(table[1]):
        spec = graph.inputs[b]
        if len(head) != len(spec["in_block_idx"]) or any(len(r) != len(cfg.head_ops) for r in head):
            raise CostTableFormatError(source, f"block {b + 1} head", f"expected {len(spec['in_block_idx'])} rows of "
                                                                      f"{len(cfg.head_ops)} ops")
        if len(stack) < spec["num_stack_layers"] or any(len(r) != len(cfg.stack_ops)
                                                        for r in stack[:spec["num_stack_layers"]]):
            raise CostTableFormatError(source, f"block {b + 1} stack", f"expected {spec['num_stack_layers']} rows of "
                                                                       f"{len(cfg.stack_ops)} ops")
    if len(table[2]) != len(graph.inputs[-1]["in_block_idx"]):
        raise CostTableFormatError(source, "final branches", f"expected {len(graph.inputs[-1]['in_block_idx'])}")


def format_cost_table(table: list) -> str:
    """The official file text: ``str(list)``, one line, no trailing newline."""
    return str(table)


def chained_cost(table: list, graph: DenseGraph, weights: PathWeights, sample: Sample) -> torch.Tensor:
    """The official chained estimate (``Dropped_Network.forward``, tail): from the last node to the first,
    C(b) = stack(b) + sum_j softmax(beta_b / T)_j (head(b->j) + C(j)); cost = stem + C(0) + classifier, where a
    layer's expected cost is sum softmax(alpha_sampled) * cost (no temperature, as the official code)."""
    n = graph.num_nodes
    head_cost: Dict[Tuple[int, int], torch.Tensor] = {}
    stack_cost: Dict[int, torch.Tensor] = {}
    ref = weights.beta[0]
    for b in range(graph.num_blocks):
        spec = graph.inputs[b]
        head_rows, stack_rows = table[1][b]
        for r, src in enumerate(spec["in_block_idx"]):
            idx = sample.head[b][r]
            costs = ref.new_tensor([head_rows[r][i] for i in idx])
            head_cost[(src, b + 1)] = (weights.head_cost[b][r] * costs).sum()
        total = ref.new_zeros(())
        for l in range(spec["num_stack_layers"]):
            idx = sample.stack[b][l]
            total = total + (weights.stack_cost[b][l] * ref.new_tensor([stack_rows[l][i] for i in idx])).sum()
        stack_cost[b + 1] = total
    final = graph.inputs[-1]
    for r, src in enumerate(final["in_block_idx"]):
        head_cost[(src, n - 1)] = ref.new_tensor(float(table[2][r]))
    chained: Dict[int, torch.Tensor] = {n - 1: ref.new_zeros(())}
    for i in range(n - 2, -1, -1):
        c = stack_cost.get(i, ref.new_zeros(()))
        for k, j in enumerate(graph.outputs[i]["out_id"]):
            c = c + weights.beta[i][k] * (head_cost[(i, j)] + chained[j])
        chained[i] = c
    return float(table[0]) + chained[0] + float(table[3])


# ----------------------------------------------------------------------------------------------------------------
# derivation

def derive_path(graph: DenseGraph, betas: Sequence[np.ndarray], allowed: Optional[Sequence[bool]] = None
                ) -> List[int]:
    """Viterbi over the DAG: the path from node 0 to the final node maximising the product of softmax(beta)
    (official ``derive_chs``; ties go to the nearest predecessor, the first in ``in_block_idx``)."""
    probs = [np.exp(b - np.max(b)) / np.exp(b - np.max(b)).sum() for b in (np.asarray(b, np.float64) for b in betas)]
    n = graph.num_nodes
    score = np.zeros(n)
    score[0] = 1.0
    back = [-1] * n
    for j in range(1, n):
        best, arg = -1.0, -1
        spec = graph.inputs[j - 1]
        for src, bidx in zip(spec["in_block_idx"], spec["beta_idx"]):
            s = score[src] * probs[src][bidx]
            if s > best:
                best, arg = s, src
        score[j], back[j] = best, arg
    path = [n - 1]
    while path[-1] != 0:
        path.append(back[path[-1]])
    return path[::-1]


def derive_net_config(graph: DenseGraph, arch: DenseArchParams, path: Optional[Sequence[int]] = None) -> NetConfig:
    """Path by Viterbi (or the given one), head op = argmax of the chosen branch's alpha, stack ops = argmax per
    layer with skip_connect dropped (official ``derive_arch_{mbv2,res}``)."""
    cfg = graph.cfg
    if path is None:
        path = derive_path(graph, [b.detach().cpu().numpy() for b in arch.beta_weights])
    blocks: List[NetConfigBlock] = []
    if cfg.net_type == "mbv2":
        blocks.append(NetConfigBlock(cfg.chs[0], cfg.chs[0], "mbconv_k3_t1", (), 1, 0))
    for prev, node in zip(path[:-2], path[1:-1]):
        b = node - 1
        spec = graph.inputs[b]
        branch = spec["in_block_idx"].index(prev)
        head = cfg.head_ops[int(arch.alpha_head_weights[b][branch].detach().argmax())]
        stack = []
        for l in range(spec["num_stack_layers"]):
            op = cfg.stack_ops[int(arch.alpha_stack_weights[b][l].detach().argmax())]
            if op != SKIP_OP:
                stack.append(op)
        blocks.append(NetConfigBlock(cfg.widths[prev], cfg.widths[node], head, tuple(stack), spec["strides"][branch],
                                     len(stack)))
    last_dim = cfg.last_dim if cfg.net_type == "mbv2" else None
    return NetConfig(net_type=cfg.net_type, blocks=tuple(blocks), last_dim=last_dim)


def path_cost(table: list, graph: DenseGraph, path: Sequence[int], head_ops: Sequence[int],
              stack_ops: Sequence[Sequence[int]], skip: Optional[int] = None) -> float:
    """Exact table cost of one architecture: `path` (nodes), the head op index of each routing block on it and
    its stack op indices. Stack op `skip` (if given) costs nothing: the child drops those layers."""
    total = float(table[0]) + float(table[3])
    for k, (prev, node) in enumerate(zip(path[:-1], path[1:])):
        if node == graph.num_nodes - 1:
            total += float(table[2][graph.inputs[-1]["in_block_idx"].index(prev)])
            continue
        b = node - 1
        branch = graph.inputs[b]["in_block_idx"].index(prev)
        total += float(table[1][b][0][branch][head_ops[k]])
        for l, op in enumerate(stack_ops[k]):
            if op != skip:
                total += float(table[1][b][1][l][op])
    return total


# ----------------------------------------------------------------------------------------------------------------
# building cost tables: every candidate op alone, at its real input shape, built by the family's builder

def _op_factories(cfg: DenseSpaceConfig, graph: DenseGraph, num_classes: int, image_size: Optional[int] = None):
    """(kind, position, factory, input size) of every entry of the four-element table, in table order."""
    size = image_size or cfg.input_size
    scale = size / cfg.input_size  # fm_sizes are the feature sizes at cfg.input_size
    fm = [max(1, int(round(f * scale))) for f in cfg.feature_sizes]
    stem = cfg.chs[0]

    def stem_factory():
        if cfg.net_type == "mbv2":
            return nn.Sequential(create_conv2d(3, stem, 3, stride=2),
                                 BatchNormAct2d(stem, eps=MBV2_BN_EPS, act_layer=nn.ReLU6),
                                 mbconv("mbconv_k3_t1", stem, stem, 1, affine=True))
        return nn.Sequential(nn.Conv2d(3, stem, 3, stride=2, padding=1, bias=False),
                             BatchNormAct2d(stem, eps=RES_BN_EPS, act_layer=nn.ReLU))

    yield "stem", None, stem_factory, (3, size, size)
    for b in range(graph.num_blocks):
        spec = graph.inputs[b]
        for r, (src, stride) in enumerate(zip(spec["in_block_idx"], spec["strides"])):
            for o, op in enumerate(cfg.head_ops):
                yield "head", (b, r, o), partial(make_op, cfg.net_type, op, cfg.widths[src], spec["ch"], stride), \
                    (cfg.widths[src], fm[src], fm[src])
        for l in range(spec["num_stack_layers"]):
            for o, op in enumerate(cfg.stack_ops):
                yield "stack", (b, l, o), partial(make_op, cfg.net_type, op, spec["ch"], spec["ch"], 1), \
                    (spec["ch"], fm[b + 1], fm[b + 1])
    final = graph.inputs[-1]
    act = nn.ReLU6 if cfg.net_type == "mbv2" else nn.ReLU
    eps = MBV2_BN_EPS if cfg.net_type == "mbv2" else RES_BN_EPS
    for r, src in enumerate(final["in_block_idx"]):
        yield "final", r, partial(lambda c: Conv1x1Branch(c, cfg.last_dim, act, eps).conv1_1, cfg.widths[src]), \
            (cfg.widths[src], fm[src], fm[src])
    yield "classifier", None, partial(lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
                                                            nn.Linear(cfg.last_dim, num_classes))), \
        (cfg.last_dim, fm[-1], fm[-1])


def build_cost_table(cfg: DenseSpaceConfig, metric: str = "macs", *, num_classes: Optional[int] = None,
                     image_size: Optional[int] = None, device: Any = "cpu", batch_size: int = 32,
                     skip_reg: bool = True, progress=None, min_run_time: float = 0.2) -> list:
    """The four-element cost table of a space. ``macs``: millions of conv + linear MACs per image (official
    ``get_cost_list(cost_type='flops')``, batch 1); ``latency``: ms per batch of `batch_size` on `device`, each op
    alone on a tensor of its real input shape (warm-up, synchronisation only on CUDA). ``skip_reg``: a skip layer
    costs 1/10 of the first op of its layer (official ``skip_reg: True``)."""
    from ..cost import measure_latency
    from nas_zoo.cost import count_macs

    graph = DenseGraph(cfg)
    num_classes = num_classes or cfg.num_classes
    entries = list(_op_factories(cfg, graph, num_classes, image_size))
    if progress is not None:
        entries = progress(entries)
    table = [0.0, [[[[0.0] * len(cfg.head_ops) for _ in b["in_block_idx"]],
                    [[0.0] * len(cfg.stack_ops) for _ in range(b["num_stack_layers"])]] for b in graph.inputs[:-1]],
             [0.0] * len(graph.inputs[-1]["in_block_idx"]), 0.0]
    for kind, where, factory, input_size in entries:
        if metric == "macs":
            with torch.device("meta"):
                module = factory()
            value = count_macs(module, input_size) / 1e6
        elif metric == "latency":
            with torch.device(device):
                module = factory()
            value = measure_latency(module, input_size, device, batch_size, min_run_time)
        else:
            raise ValueError(f"metric: expected 'macs' or 'latency', got {metric!r}")
        if kind == "stem":
            table[0] = value
        elif kind == "head":
            b, r, o = where
            table[1][b][0][r][o] = value
        elif kind == "stack":
            b, l, o = where
            table[1][b][1][l][o] = value
        elif kind == "final":
            table[2][where] = value
        else:
            table[3] = value
    if skip_reg:
        skip = cfg.stack_ops.index(SKIP_OP)
        for _, stack in table[1]:
            for row in stack:
                row[skip] = row[0] / 10
    return table


# ----------------------------------------------------------------------------------------------------------------
# the space as data: architectures, their exact cost, the child network and its weights

class DenseSpaceError(SpaceError):
    """An architecture that is not in the space; names the field (``arch.path[1]``, ``arch.head[0]`` ...)."""

    def __init__(self, field: str, problem: str):
        super().__init__("arch", f"arch.{field}", problem)


def _softmax_np(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    e = np.exp(v - v.max())
    return e / e.sum()


class DenseNASSpace(Space):
    """A dense space with its cost table. An architecture is JSON data::

        {"path": [0, n1, ..., final], "head": [op per routing block on the path],
         "stack": [[op per stack layer, skip_connect allowed] per routing block on the path]}

    `cost` prices it exactly from the table (skip layers are removed from the child, so they cost 0 there)."""

    def __init__(self, cfg: DenseSpaceConfig, table: Optional[list] = None, metric: str = "macs"):
        self.cfg = cfg
        self.graph = DenseGraph(cfg)
        self.name = "densenas_mbv2" if cfg.net_type == "mbv2" else "densenas_resnet"
        self.family = "efficientnet" if cfg.net_type == "mbv2" else "densenas_resnet"
        self.metric = metric
        self.table = table if table is not None else build_cost_table(cfg, "macs")
        check_cost_table(self.table, self.graph)

    # --- building
    def supernet(self, num_classes: int, **kwargs) -> DenseSupernet:
        return DenseSupernet(self.cfg, num_classes=num_classes, **kwargs)

    # --- architectures
    def _ops_for(self, node: int, rng: np.random.RandomState) -> Tuple[str, List[str]]:
        spec = self.graph.inputs[node - 1]
        head = self.cfg.head_ops[rng.randint(len(self.cfg.head_ops))]
        stack = [self.cfg.stack_ops[rng.randint(len(self.cfg.stack_ops))] for _ in range(spec["num_stack_layers"])]
        return head, stack

    def _walk(self, start: List[int], rng: np.random.RandomState) -> List[int]:
        path = list(start)
        while path[-1] != self.graph.num_nodes - 1:
            outs = self.graph.outputs[path[-1]]["out_id"]
            path.append(outs[rng.randint(len(outs))])
        return path

    def sample(self, rng: np.random.RandomState) -> Dict[str, Any]:
        path = self._walk([0], rng)
        ops = [self._ops_for(n, rng) for n in path[1:-1]]
        return {"path": path, "head": [h for h, _ in ops], "stack": [s for _, s in ops]}

    def mutate(self, arch, rng: np.random.RandomState, prob: float) -> Dict[str, Any]:
        self.check_arch(arch)
        path, head, stack = list(arch["path"]), list(arch["head"]), [list(s) for s in arch["stack"]]
        if rng.rand() < prob:  # re-route from a random node of the path
            cut = rng.randint(len(path) - 1)
            new = self._walk(path[:cut + 1], rng)
            old_ops = {n: (h, s) for n, h, s in zip(path[1:-1], head, stack)}
            ops = [old_ops.get(n) or self._ops_for(n, rng) for n in new[1:-1]]
            path, head, stack = new, [h for h, _ in ops], [list(s) for _, s in ops]
        for k in range(len(head)):
            if rng.rand() < prob:
                head[k] = self.cfg.head_ops[rng.randint(len(self.cfg.head_ops))]
            for l in range(len(stack[k])):
                if rng.rand() < prob:
                    stack[k][l] = self.cfg.stack_ops[rng.randint(len(self.cfg.stack_ops))]
        return {"path": path, "head": head, "stack": stack}

    def crossover(self, a, b, rng: np.random.RandomState) -> Dict[str, Any]:
        """The path of one parent; ops of nodes both parents visit drawn from either."""
        self.check_arch(a)
        self.check_arch(b)
        first, second = (a, b) if rng.rand() < 0.5 else (b, a)
        other = {n: (h, s) for n, h, s in zip(second["path"][1:-1], second["head"], second["stack"])}
        head, stack = [], []
        for n, h, s in zip(first["path"][1:-1], first["head"], first["stack"]):
            if n in other and rng.rand() < 0.5:
                h = other[n][0]
            if n in other:
                s = [x if rng.rand() < 0.5 else y for x, y in zip(s, other[n][1])]
            head.append(h)
            stack.append(list(s))
        return {"path": list(first["path"]), "head": head, "stack": stack}

    def check_arch(self, arch) -> None:
        if not isinstance(arch, Mapping) or set(arch) != {"path", "head", "stack"}:
            raise DenseSpaceError("<arch>", "expected a mapping with keys path, head, stack")
        path = arch["path"]
        n = self.graph.num_nodes
        if not isinstance(path, list) or len(path) < 2 or path[0] != 0 or path[-1] != n - 1:
            raise DenseSpaceError("path", f"expected a node list from 0 to {n - 1}, got {path!r}")
        for k, (i, j) in enumerate(zip(path[:-1], path[1:])):
            if not isinstance(i, int) or not 0 <= i < n - 1 or j not in self.graph.outputs[i]["out_id"]:
                raise DenseSpaceError(f"path[{k + 1}]", f"no edge {i} -> {j} in the dense graph")
        blocks = len(path) - 2
        if not isinstance(arch["head"], list) or len(arch["head"]) != blocks:
            raise DenseSpaceError("head", f"expected {blocks} head ops (one per routing block on the path)")
        if not isinstance(arch["stack"], list) or len(arch["stack"]) != blocks:
            raise DenseSpaceError("stack", f"expected {blocks} stack op lists")
        for k, node in enumerate(path[1:-1]):
            if arch["head"][k] not in self.cfg.head_ops:
                raise DenseSpaceError(f"head[{k}]", f"expected one of {list(self.cfg.head_ops)}, got "
                                                    f"{arch['head'][k]!r}")
            layers = self.graph.inputs[node - 1]["num_stack_layers"]
            stack = arch["stack"][k]
            if not isinstance(stack, list) or len(stack) != layers or any(op not in self.cfg.stack_ops
                                                                         for op in stack):
                raise DenseSpaceError(f"stack[{k}]", f"expected {layers} ops from {list(self.cfg.stack_ops)}, "
                                                     f"got {stack!r}")

    def arch_from_params(self, arch: DenseArchParams, path: Optional[Sequence[int]] = None) -> Dict[str, Any]:
        """The derived architecture (Viterbi path unless given, argmax ops; skip layers kept as ops here)."""
        if path is None:
            path = derive_path(self.graph, [b.detach().cpu().numpy() for b in arch.beta_weights])
        head, stack = [], []
        for prev, node in zip(path[:-2], path[1:-1]):
            spec = self.graph.inputs[node - 1]
            branch = spec["in_block_idx"].index(prev)
            head.append(self.cfg.head_ops[int(arch.alpha_head_weights[node - 1][branch].detach().argmax())])
            stack.append([self.cfg.stack_ops[int(arch.alpha_stack_weights[node - 1][l].detach().argmax())]
                          for l in range(spec["num_stack_layers"])])
        return {"path": list(path), "head": head, "stack": stack}

    def net_config(self, arch) -> NetConfig:
        self.check_arch(arch)
        cfg, path = self.cfg, arch["path"]
        blocks: List[NetConfigBlock] = []
        if cfg.net_type == "mbv2":
            blocks.append(NetConfigBlock(cfg.chs[0], cfg.chs[0], "mbconv_k3_t1", (), 1, 0))
        for k, (prev, node) in enumerate(zip(path[:-2], path[1:-1])):
            spec = self.graph.inputs[node - 1]
            stride = spec["strides"][spec["in_block_idx"].index(prev)]
            stack = tuple(op for op in arch["stack"][k] if op != SKIP_OP)
            blocks.append(NetConfigBlock(cfg.widths[prev], cfg.widths[node], arch["head"][k], stack, stride,
                                         len(stack)))
        return NetConfig(net_type=cfg.net_type, blocks=tuple(blocks),
                         last_dim=cfg.last_dim if cfg.net_type == "mbv2" else None)

    def entry_arch(self, arch) -> Dict[str, Any]:
        return self.net_config(arch).to_family_arch()[1]

    def child_state_dict(self, supernet_state: Mapping[str, torch.Tensor], arch) -> Dict[str, torch.Tensor]:
        """The chosen ops' weights under the child's keys (timm EfficientNet / DenseNASResNet). BNs the supernet
        runs without affine get weight 1 and bias 0, which is the same function. ResNet children have no final
        conv1x1 (official RES_Net), so their classifier is not inherited."""
        self.check_arch(arch)
        path = arch["path"]
        out: Dict[str, torch.Tensor] = {}

        def take(src_prefix: str, dst_prefix: str):
            found = False
            for k, v in supernet_state.items():
                if k.startswith(src_prefix):
                    out[dst_prefix + k[len(src_prefix):]] = v
                    found = True
            if not found:
                raise KeyError(f"supernet state has no {src_prefix}*")
            for k in [k for k in list(out) if k.startswith(dst_prefix) and k.endswith("running_mean")]:
                base = k[:-len("running_mean")]
                if base + "weight" not in out:
                    out[base + "weight"] = torch.ones_like(out[k])
                    out[base + "bias"] = torch.zeros_like(out[k])

        mbv2 = self.cfg.net_type == "mbv2"
        stem, stages = ("conv_stem", "blocks") if mbv2 else ("stem.conv", "stages")
        take("input_block.0.", stem + ".")
        take("input_block.1.", ("bn1" if mbv2 else "stem.bn") + ".")
        offset = 0
        if mbv2:
            take("head_block.", "blocks.0.0.")
            offset = 1
        for k, (prev, node) in enumerate(zip(path[:-2], path[1:-1])):
            b = node - 1
            spec = self.graph.inputs[b]
            branch = spec["in_block_idx"].index(prev)
            stage = f"{stages}.{k + offset}."
            take(f"blocks.{b}.head_layer.head_branches.{branch}._ops.{self.cfg.head_ops.index(arch['head'][k])}.",
                 stage + "0.")
            layer = 1
            for l, op in enumerate(arch["stack"][k]):
                if op == SKIP_OP:
                    continue
                take(f"blocks.{b}.stack_layers.stack_layers.{l}._ops.{self.cfg.stack_ops.index(op)}.",
                     stage + f"{layer}.")
                layer += 1
        if mbv2:
            branch = self.graph.inputs[-1]["in_block_idx"].index(path[-2])
            take(f"conv1_1_block.conv1_1_branches.{branch}.conv1_1.0.", "conv_head.")
            take(f"conv1_1_block.conv1_1_branches.{branch}.conv1_1.1.", "bn2.")
            take("classifier.", "classifier.")
        return out

    # --- cost
    def _indices(self, arch):
        heads = [self.cfg.head_ops.index(h) for h in arch["head"]]
        stacks = [[self.cfg.stack_ops.index(op) for op in s] for s in arch["stack"]]
        return heads, stacks

    def cost(self, arch, metric: Optional[str] = None, image_size=None, skip_free: bool = True) -> float:
        """Exact table cost of the child (skip layers removed: 0), or with ``skip_free=False`` the table's skip
        price (what the chained estimate of a one-hot architecture gives)."""
        if metric not in (None, self.metric):
            raise ValueError(f"this space's table is priced in {self.metric}, not {metric}")
        self.check_arch(arch)
        heads, stacks = self._indices(arch)
        return path_cost(self.table, self.graph, arch["path"], heads, stacks,
                         skip=self.cfg.stack_ops.index(SKIP_OP) if skip_free else None)

    def cost_range(self, metric: Optional[str] = None, image_size=None) -> Tuple[float, float]:
        """Cheapest / most expensive child (DP over the DAG, cheapest / dearest op per layer)."""
        lo = self._extreme(min)
        hi = self._extreme(max)
        return lo, hi

    def _extreme(self, pick) -> float:
        skip = self.cfg.stack_ops.index(SKIP_OP)
        n = self.graph.num_nodes
        best = {n - 1: 0.0}
        for i in range(n - 2, -1, -1):
            options = []
            for j in self.graph.outputs[i]["out_id"]:
                if j == n - 1:
                    edge = float(self.table[2][self.graph.inputs[-1]["in_block_idx"].index(i)])
                else:
                    spec = self.graph.inputs[j - 1]
                    edge = pick(self.table[1][j - 1][0][spec["in_block_idx"].index(i)])
                    for l in range(spec["num_stack_layers"]):
                        edge += pick(0.0 if o == skip else v for o, v in enumerate(self.table[1][j - 1][1][l]))
                options.append(edge + best[j])
            best[i] = pick(options)
        return float(self.table[0]) + best[0] + float(self.table[3])


def _pareto(labels):
    """Keep the labels (score, cost, ...) no other label beats on both: higher score first, strictly cheaper."""
    labels = sorted(labels, key=lambda t: (-t[0], t[1]))
    front, cheapest = [], math.inf
    for lab in labels:
        if lab[1] < cheapest:
            front.append(lab)
            cheapest = lab[1]
    return front


def constrained_arch(space: "DenseNASSpace", arch_params: DenseArchParams, ceiling: float) -> Dict[str, Any]:
    """The most probable architecture whose child costs at most `ceiling`: path and ops jointly, score = product of
    softmax(beta) along the path and softmax(alpha) of the chosen head and stack ops (skip layers cost nothing in
    the child). Exact, by Pareto labels (log-probability, cost) over the DAG and over each node's layers."""
    graph, cfg = space.graph, space.cfg
    logb = [np.log(np.maximum(_softmax_np(b.detach().cpu().numpy()), 1e-300)) for b in arch_params.beta_weights]
    skip = cfg.stack_ops.index(SKIP_OP)
    n = graph.num_nodes

    def op_front(j, branch):
        """Pareto front of (log prob, cost, head op, stack ops) of routing block j entered by `branch`."""
        la = np.log(np.maximum(_softmax_np(arch_params.alpha_head_weights[j - 1][branch].detach().cpu().numpy()),
                               1e-300))
        labs = [(float(la[o]), float(space.table[1][j - 1][0][branch][o]), o, ()) for o in range(len(cfg.head_ops))]
        labs = _pareto(labs)
        for l in range(graph.inputs[j - 1]["num_stack_layers"]):
            ls = np.log(np.maximum(_softmax_np(arch_params.alpha_stack_weights[j - 1][l].detach().cpu().numpy()),
                                   1e-300))
            costs = [0.0 if o == skip else float(space.table[1][j - 1][1][l][o]) for o in range(len(cfg.stack_ops))]
            labs = _pareto([(sc + float(ls[o]), c + costs[o], h, st + (o,))
                            for sc, c, h, st in labs for o in range(len(cfg.stack_ops))])
        return labs

    fixed = float(space.table[0]) + float(space.table[3])
    labels: Dict[int, list] = {0: [(0.0, fixed, (0,), ())]}
    for j in range(1, n):
        spec = graph.inputs[j - 1]
        cands = []
        for branch, (src, bidx) in enumerate(zip(spec["in_block_idx"], spec["beta_idx"])):
            if j == n - 1:
                edges = [(0.0, float(space.table[2][branch]), None, ())]
            else:
                edges = op_front(j, branch)
            for sc, c, path, ops in labels.get(src, []):
                for esc, ec, h, st in edges:
                    if c + ec <= ceiling:
                        cands.append((sc + logb[src][bidx] + esc, c + ec, path + (j,),
                                      ops if h is None else ops + ((h, st),)))
        labels[j] = _pareto(cands)
    if not labels[n - 1]:
        raise DenseSpaceError("path", f"no architecture fits the ceiling {ceiling:g} {space.metric} (the cheapest "
                                      f"child of the space costs {space._extreme(min):g})")
    _, _, path, ops = labels[n - 1][0]
    return {"path": list(path), "head": [cfg.head_ops[h] for h, _ in ops],
            "stack": [[cfg.stack_ops[o] for o in st] for _, st in ops]}

def _space_factory(base: str):
    def make(num_classes: int = 1000, table: Optional[list] = None, metric: str = "macs", **changes):
        cfg = replace(SPACES[base], num_classes=num_classes,
                      **{k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()})
        return DenseNASSpace(cfg, table=table, metric=metric)
    return make


register_space("densenas_mbv2", _space_factory("mbv2"))
register_space("densenas_resnet", _space_factory("resnet"))
