"""The `darts_cell` family: networks built from a DARTS genotype (CDARTS cell nets, DARTS, P-DARTS, PC-DARTS).

The network is the DARTS evaluation network as the CDARTS code builds it (``lib/models/model_augment.py``):
a stem, ``sum(cells_per_stage)`` cells where the last cell of every stage but the last is a reduction cell
(stride 2, channels doubled), global average pooling and a linear classifier; an auxiliary classifier on the
output of the last reduction cell is used in training only. The arch mapping::

    stem: cifar                # cifar: conv3x3 + BN; imagenet: the DARTS ImageNet stem (three stride-2 convs)
    init_channels: 36          # C: channels of a cell node in the first stage
    stem_multiplier: 3         # stem width = C * stem_multiplier
    cells_per_stage: [7, 7, 6]
    genotype: {normal: [[[sep_conv_3x3, 0], [sep_conv_3x3, 1]], ...], normal_concat: [2, 3, 4, 5], ...}
                               # or the official text 'Genotype(normal=[...], ...)'; see nas_zoo.genotype
    stage_genotypes: [...]     # instead of `genotype`: one genotype per stage
    drop_path_rate: 0.3        # training default (per non-identity op, as DARTS); callers may override
    drop_rate: 0.0             # dropout before the classifier (the official nets have none)

The ops (`OPS`, `PRIMITIVES`), the stem (`build_stem`) and the cell (`DartsCell`) are also the building blocks of the
DARTS-space search (``nas_zoo.search.spaces.darts``: its MixedOp holds one `OPS` module per candidate).
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import ConvNormAct, DropPath, create_classifier, create_conv2d, create_pool2d, get_device_dtype
from timm.models import build_model_with_cfg, checkpoint
from timm.models._features import feature_take_indices

from ..entry import EntryError, Field
from ..genotype import PRIMITIVES, Genotype, GenotypeError, genotype_from_data
from . import Family, register_family

__all__ = ["OPS", "PRIMITIVES", "ReLUConvBN", "DwSepConv", "SepConv", "FactorizedReduce", "Zero", "build_stem",
           "DartsCell", "AuxHead", "DartsCellNet", "network_plan", "LAYOUTS", "EVAL_CFGS", "DATASETS"]

ARCH_KEYS = ("stem", "init_channels", "stem_multiplier", "cells_per_stage", "genotype", "stage_genotypes",
             "drop_path_rate", "drop_rate")
STEMS = ("cifar", "imagenet")
# The two published layouts (CDARTS retrain scripts; identical to DARTS' NetworkCIFAR / NetworkImageNet), with the
# CDARTS retrain drop-path default (CIFAR: 0.3 for every cell above 3.0 M params; ImageNet: none).
LAYOUTS = {
    "cifar": dict(stem="cifar", init_channels=36, stem_multiplier=3, cells_per_stage=[7, 7, 6], drop_path_rate=0.3),
    "imagenet": dict(stem="imagenet", init_channels=48, stem_multiplier=1, cells_per_stage=[5, 5, 4],
                     drop_path_rate=0.0),
}
# Official eval preprocessing (CDARTS lib/datasets: CIFAR ToTensor + Normalize; ImageNet Resize 256, CenterCrop 224)
EVAL_CFGS = {
    "cifar": dict(input_size=[3, 32, 32], crop_pct=1.0, interpolation="bilinear",
                  mean=[0.49139968, 0.48215827, 0.44653124], std=[0.24703233, 0.24348505, 0.26158768]),
    "imagenet": dict(input_size=[3, 224, 224], crop_pct=0.875, interpolation="bilinear",
                     mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
}
DATASETS = {  # dataset -> (layout, timm tag, classes)
    "cifar10": ("cifar", "cifar10", 10),
    "cifar100": ("cifar", "cifar100", 100),
    "imagenet": ("imagenet", "in1k", 1000),
}


# ---------------------------------------------------------------------------------------------------------------
# ops: the eight candidates of the DARTS space, as CDARTS lib/models/ops.py defines them (BN eps 1e-5, no conv bias;
# pools without BN). `affine=False` gives the search-network variant.


class ReLUConvBN(nn.Module):
    """ReLU - conv - BN (DARTS `StdConv`): the cell input preprocessing and the ImageNet stem's last conv."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, affine: bool = True,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.act = nn.ReLU()
        self.conv = create_conv2d(in_chs, out_chs, kernel_size, stride=stride, **dd)
        self.bn = nn.BatchNorm2d(out_chs, affine=affine, **dd)

    def forward(self, x):
        return self.bn(self.conv(self.act(x)))


class DwSepConv(nn.Module):
    """ReLU - depthwise kxk (stride, dilation) - pointwise 1x1 - BN: DARTS `dil_conv_kxk`, and half a `sep_conv_kxk`.

    Padding is symmetric, (stride - 1 + dilation * (k - 1)) // 2, which equals the official k // 2 * dilation."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, dilation: int = 1,
                 affine: bool = True, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.act = nn.ReLU()
        self.conv_dw = create_conv2d(in_chs, in_chs, kernel_size, stride=stride, dilation=dilation, depthwise=True,
                                     **dd)
        self.conv_pw = create_conv2d(in_chs, out_chs, 1, **dd)
        self.bn = nn.BatchNorm2d(out_chs, affine=affine, **dd)

    def forward(self, x):
        return self.bn(self.conv_pw(self.conv_dw(self.act(x))))


class SepConv(nn.Module):
    """DARTS `sep_conv_kxk`: two `DwSepConv`, the first one strided."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, affine: bool = True,
                 device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.conv1 = DwSepConv(in_chs, in_chs, kernel_size, stride, affine=affine, **dd)
        self.conv2 = DwSepConv(in_chs, out_chs, kernel_size, 1, affine=affine, **dd)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs on x and on x shifted by one pixel, concatenated, BN (DARTS `FactorizedReduce`).

    The shifted path crops the first row/column and pads one zero row/column at the end: for even sizes this is
    exactly the official ``conv2(x[:, :, 1:, 1:])``; odd sizes, where the official code fails, work too."""

    def __init__(self, in_chs: int, out_chs: int, affine: bool = True, device=None, dtype=None):
        super().__init__()
        if out_chs % 2:
            raise ValueError(f"FactorizedReduce needs an even number of output channels, got {out_chs}")
        dd = {"device": device, "dtype": dtype}
        self.act = nn.ReLU()
        self.conv1 = create_conv2d(in_chs, out_chs // 2, 1, stride=2, **dd)
        self.conv2 = create_conv2d(in_chs, out_chs // 2, 1, stride=2, **dd)
        self.bn = nn.BatchNorm2d(out_chs, affine=affine, **dd)

    def forward(self, x):
        x = self.act(x)
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        return self.bn(torch.cat([self.conv1(x), self.conv2(shifted)], dim=1))


class Zero(nn.Module):
    """DARTS `none`: zeros of the (strided) input's shape."""

    def __init__(self, stride: int = 1):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.)
        return x[:, :, ::self.stride, ::self.stride].mul(0.)


def _pool(kind: str):
    def make(chs: int, stride: int, affine: bool = True, **dd) -> nn.Module:
        # symmetric padding 1, and the average excludes the padding, as the official nn.AvgPool2d(3, s, 1, False)
        extra = dict(count_include_pad=False) if kind == "avg" else {}
        return create_pool2d(kind, 3, stride, padding="", **extra)
    return make


# OPS[name](channels, stride, affine, device=..., dtype=...) -> module
OPS = {
    "max_pool_3x3": _pool("max"),
    "avg_pool_3x3": _pool("avg"),
    "skip_connect": lambda chs, stride, affine=True, **dd: nn.Identity() if stride == 1 else FactorizedReduce(
        chs, chs, affine=affine, **dd),
    "sep_conv_3x3": lambda chs, stride, affine=True, **dd: SepConv(chs, chs, 3, stride, affine=affine, **dd),
    "sep_conv_5x5": lambda chs, stride, affine=True, **dd: SepConv(chs, chs, 5, stride, affine=affine, **dd),
    "dil_conv_3x3": lambda chs, stride, affine=True, **dd: DwSepConv(chs, chs, 3, stride, 2, affine=affine, **dd),
    "dil_conv_5x5": lambda chs, stride, affine=True, **dd: DwSepConv(chs, chs, 5, stride, 2, affine=affine, **dd),
    "none": lambda chs, stride, affine=True, **dd: Zero(stride),
}
assert tuple(OPS) == PRIMITIVES


def build_stem(stem_type: str, in_chans: int, stem_chs: int, device=None, dtype=None) -> Tuple[nn.Module, nn.Module]:
    """(stem0, stem1): the first cell reads (stem0(x), stem1(stem0(x))). CIFAR: conv3x3 + BN, stem1 the identity;
    ImageNet: two stride-2 conv3x3 + BN (ReLU between), stem1 a stride-2 ReLU-conv3x3-BN."""
    dd = {"device": device, "dtype": dtype}
    if stem_type == "cifar":
        return nn.Sequential(ConvNormAct(in_chans, stem_chs, 3, stride=1, apply_act=False, **dd)), nn.Identity()
    stem0 = nn.Sequential(
        ConvNormAct(in_chans, stem_chs // 2, 3, stride=2, **dd),
        ConvNormAct(stem_chs // 2, stem_chs, 3, stride=2, apply_act=False, **dd),
    )
    return stem0, ReLUConvBN(stem_chs, stem_chs, 3, stride=2, **dd)


# ---------------------------------------------------------------------------------------------------------------
# the cell


class DartsCell(nn.Module):
    """A DARTS cell fixed by a genotype: two preprocessed inputs, nodes that each sum their edges, and the
    concatenation of the `concat` states as output (``out_chs = chs * len(concat)``).

    Edges from the cell inputs use stride 2 in a reduction cell. Drop-path applies to every op but identity
    (as DARTS / CDARTS ``to_dag``); its rate can be changed at any time (`DartsCellNet.set_drop_path_rate`)."""

    def __init__(self, nodes, concat: Sequence[int], in_chs_pp: int, in_chs_p: int, chs: int, reduction: bool,
                 reduction_prev: bool, affine: bool = True, drop_path: float = 0., device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.reduction = reduction
        self.preproc0 = (FactorizedReduce(in_chs_pp, chs, affine=affine, **dd) if reduction_prev
                         else ReLUConvBN(in_chs_pp, chs, 1, 1, affine=affine, **dd))
        self.preproc1 = ReLUConvBN(in_chs_p, chs, 1, 1, affine=affine, **dd)
        ops: List[nn.Module] = []
        sources: List[int] = []
        droppable: List[bool] = []
        first_in_node: List[bool] = []
        last_in_node: List[bool] = []
        for node in nodes:
            for j, (name, src) in enumerate(node):
                op = OPS[name](chs, 2 if reduction and src < 2 else 1, affine, **dd)
                ops.append(op)
                sources.append(int(src))
                droppable.append(not isinstance(op, nn.Identity))
                first_in_node.append(j == 0)
                last_in_node.append(j == len(node) - 1)
        self.ops = nn.ModuleList(ops)
        self.sources, self.droppable = sources, droppable
        self.first_in_node, self.last_in_node = first_in_node, last_in_node
        self.concat = [int(i) for i in concat]
        self.drop_path = DropPath(drop_path)
        self.out_chs = chs * len(self.concat)

    def forward(self, s0, s1):
        states = [self.preproc0(s0), self.preproc1(s1)]
        node = states[1]  # replaced by the first edge of every node
        for i, op in enumerate(self.ops):
            h = op(states[self.sources[i]])
            if self.droppable[i]:
                h = self.drop_path(h)
            node = h if self.first_in_node[i] else node + h
            if self.last_in_node[i]:
                states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)


class AuxHead(nn.Module):
    """The DARTS auxiliary classifier (``AuxiliaryHeadCIFAR`` / ``AuxiliaryHeadImageNet``), same key layout.

    ReLU, 5x5 average pool (stride 3 on CIFAR, 2 on ImageNet), 1x1 conv to 128 + BN + ReLU, 2x2 conv to 768
    (+ BN on CIFAR only, as the official code), ReLU, linear. At the native input size the map is 1x1 here; a global
    average pool before the linear layer (an identity there) lets larger inputs work too."""

    def __init__(self, in_chs: int, num_classes: int, pool_stride: int = 3, final_bn: bool = True, device=None,
                 dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        layers = [nn.ReLU(), nn.AvgPool2d(5, stride=pool_stride, padding=0, count_include_pad=False),
                  nn.Conv2d(in_chs, 128, 1, bias=False, **dd), nn.BatchNorm2d(128, **dd), nn.ReLU(inplace=True),
                  nn.Conv2d(128, 768, 2, bias=False, **dd)]
        if final_bn:
            layers.append(nn.BatchNorm2d(768, **dd))
        layers.append(nn.ReLU(inplace=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(768, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.min_size = 5 + pool_stride  # the 5x5 pool then the 2x2 conv need two pooled rows / columns

    def reset(self, num_classes: int):
        dd = get_device_dtype(self)
        self.classifier = (nn.Linear(768, num_classes, **dd) if num_classes > 0 else nn.Identity()).train(self.training)

    def forward(self, x):
        for side in (x.shape[-2], x.shape[-1]):  # two asserts, not `and`: FX traces each as a node
            torch._assert(side >= self.min_size, "the auxiliary head needs a larger feature map: train at the native "
                          "input size (32 for the CIFAR layout, 224 for ImageNet) or build the model with "
                          "auxiliary=False")
        x = self.features(x)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


# ---------------------------------------------------------------------------------------------------------------
# the network


def _stage_genotypes(genotype, n_stages: int) -> List[Genotype]:
    if isinstance(genotype, (Genotype, str, dict)):
        return [genotype_from_data(genotype)] * n_stages
    genotypes = [genotype_from_data(g) for g in genotype]
    if len(genotypes) != n_stages:
        raise ValueError(f"{len(genotypes)} stage genotypes for {n_stages} stages")
    return genotypes


def network_plan(stem: str, init_channels: int, stem_multiplier: int, cells_per_stage: Sequence[int],
                 genotypes: Sequence[Genotype]) -> dict:
    """Channels, strides and feature taps of the network, without building it."""
    stem_chs = init_channels * stem_multiplier
    if stem == "cifar":
        stem_taps = [dict(num_chs=stem_chs, reduction=1, module="stem0.0")]
        reduction, reduction_prev = 1, False
    else:
        stem_taps = [dict(num_chs=stem_chs // 2, reduction=2, module="stem0.0"),
                     dict(num_chs=stem_chs, reduction=4, module="stem0.1")]
        reduction, reduction_prev = 8, True
    cells = []
    chs_pp = chs_p = stem_chs
    chs = init_channels
    last_stage = len(cells_per_stage) - 1
    for s, n_cells in enumerate(cells_per_stage):
        for c in range(n_cells):
            is_reduction = c == n_cells - 1 and s < last_stage
            if is_reduction:
                chs *= 2
            nodes, concat = genotypes[s].cell(is_reduction)
            cells.append(dict(nodes=nodes, concat=concat, in_chs_pp=chs_pp, in_chs_p=chs_p, chs=chs,
                              reduction=is_reduction, reduction_prev=reduction_prev, stage=s))
            chs_pp, chs_p = chs_p, chs * len(concat)
            reduction_prev = is_reduction
    taps = list(stem_taps)
    for i, cell in enumerate(cells):
        if cell["reduction"]:
            reduction *= 2
        next_reduces = i + 1 < len(cells) and cells[i + 1]["reduction"]
        if next_reduces or i == len(cells) - 1:  # the last cell at each resolution
            taps.append(dict(num_chs=cell["chs"] * len(cell["concat"]), reduction=reduction, module=f"cells.{i}"))
    reductions = [i for i, cell in enumerate(cells) if cell["reduction"]]
    return dict(stem_chs=stem_chs, cells=cells, feature_info=taps, num_features=chs_p, reduction=reduction,
                aux_index=reductions[-1] if reductions else None)


class DartsCellNet(nn.Module):
    """A DARTS evaluation network built from a genotype, in the timm model API.

    Output: logits; in training mode with ``auxiliary=True`` the tuple ``(logits, aux_logits)`` (DARTS recipe:
    ``loss = ce(logits) + aux_weight * ce(aux_logits)``, aux_weight 0.4). A scripted model returns logits only.
    """

    def __init__(
            self,
            genotype: Union[Genotype, str, dict, Sequence[Union[Genotype, str, dict]]],
            init_channels: int = 36,
            cells_per_stage: Sequence[int] = (7, 7, 6),
            stem_type: str = "cifar",
            stem_multiplier: int = 3,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = "avg",
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            auxiliary: bool = False,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if stem_type not in STEMS:
            raise ValueError(f"stem_type must be one of {STEMS}, got {stem_type!r}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        genotypes = _stage_genotypes(genotype, len(cells_per_stage))
        plan = network_plan(stem_type, init_channels, stem_multiplier, cells_per_stage, genotypes)
        stem_chs = plan["stem_chs"]
        self.stem0, self.stem1 = build_stem(stem_type, in_chans, stem_chs, **dd)
        self.cells = nn.ModuleList([
            DartsCell(c["nodes"], c["concat"], c["in_chs_pp"], c["in_chs_p"], c["chs"], c["reduction"],
                      c["reduction_prev"], drop_path=drop_path_rate, **dd) for c in plan["cells"]])
        self.feature_info = plan["feature_info"]
        self._cell_taps: Dict[int, int] = {int(f["module"].split(".")[1]): i for i, f in enumerate(self.feature_info)
                                           if f["module"].startswith("cells.")}

        self.aux_index = -1
        self.aux_head = None
        if auxiliary:
            if plan["aux_index"] is None:
                raise ValueError("auxiliary=True needs a reduction cell (at least two stages)")
            self.aux_index = plan["aux_index"]
            self.aux_head = AuxHead(self.cells[self.aux_index].out_chs, num_classes,
                                    pool_stride=3 if stem_type == "cifar" else 2, final_bn=stem_type == "cifar",
                                    **dd)

        self.num_features = self.head_hidden_size = plan["num_features"]
        self.global_pool, self.head_drop, self.fc = create_classifier(
            self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)

    # -- timm model API ------------------------------------------------------------------------------------------

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r"^stem", blocks=r"^cells\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool,
                                                      **get_device_dtype(self))
        self.global_pool.train(self.training)
        self.fc.train(self.training)
        if self.aux_head is not None:
            self.aux_head.reset(num_classes)

    @torch.jit.ignore
    def set_drop_path_rate(self, rate: float):
        """Set the drop-path rate of every cell (the official recipe ramps it: rate * epoch / epochs)."""
        for m in self.modules():
            if isinstance(m, DropPath):
                m.drop_prob = rate

    def _run_cells(self, s0, s1, aux_at: int) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        aux: Optional[torch.Tensor] = None
        for i, cell in enumerate(self.cells):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                s0, s1 = s1, checkpoint(cell, s0, s1)
            else:
                s0, s1 = s1, cell(s0, s1)
            if i == aux_at and self.aux_head is not None:
                aux = self.aux_head(s1)
        return s1, aux

    def forward_features(self, x):
        s0 = self.stem0(x)
        x, _ = self._run_cells(s0, self.stem1(s0), -1)
        return x

    def forward_head(self, x, pre_logits: bool = False):
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        if not torch.jit.is_scripting() and self.aux_head is not None and self.training:
            s0 = self.stem0(x)
            x, aux = self._run_cells(s0, self.stem1(s0), self.aux_index)
            return self.forward_head(x), aux
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features at the taps of `feature_info` (stem outputs, then the last cell at each resolution).

        Args:
            x: input images.
            indices: take the last n taps if int, all if None, the listed ones if a sequence.
            norm: unused (the network has no final norm).
            stop_early: stop after the last tap asked for.
            output_fmt: only 'NCHW'.
            intermediates_only: return only the intermediate features.
        """
        assert output_fmt == "NCHW", "Output format must be NCHW."
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        for j, block in enumerate(self.stem0):
            x = block(x)
            if j in take_indices:
                intermediates.append(x)
        s0 = x
        s1 = self.stem1(s0)
        last_cell = len(self.cells) - 1
        if stop_early:
            last_cell = max([c for c, f in self._cell_taps.items() if f <= max_index], default=-1)
        for i, cell in enumerate(self.cells):
            if i > last_cell:
                break
            if self.grad_checkpointing and not torch.jit.is_scripting():
                s0, s1 = s1, checkpoint(cell, s0, s1)
            else:
                s0, s1 = s1, cell(s0, s1)
            x = s1
            if self._cell_taps.get(i, -1) in take_indices:
                intermediates.append(s1)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the cells after the last tap asked for (and the heads); returns the kept tap indices."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        keep = max([c for c, f in self._cell_taps.items() if f <= max_index], default=-1) + 1
        if keep < len(self.cells):
            self.cells = self.cells[:keep]
            if not keep:  # a stem tap: the features end there
                self.stem0 = self.stem0[:max_index + 1]
                self.stem1 = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True
        self.aux_head, self.aux_index = None, -1
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


# ---------------------------------------------------------------------------------------------------------------
# the family: entry arch -> model, official checkpoint keys -> ours


def _check_genotype(f: Field) -> dict:
    try:
        return genotype_from_data(f.value, f.source).to_dict()
    except GenotypeError as e:
        raise EntryError(f.source, f"{f.path}.{e.where}" if e.where else f.path, e.problem) from None


def validate_arch(f: Field) -> dict:
    arch = f.mapping(required=("stem", "init_channels", "stem_multiplier", "cells_per_stage"), allowed=ARCH_KEYS)
    f.child("stem").choice(STEMS)
    f.child("init_channels").integer(low=1)
    f.child("stem_multiplier").integer(low=1)
    stages = f.child("cells_per_stage")
    stages.expect(list, "a list of cell counts, one per stage")
    if not stages.value:
        raise stages.error("expected at least one stage")
    arch["cells_per_stage"] = stages.int_list()
    for i in range(len(stages.value)):
        stages.child(i).integer(low=1)
    if arch["stem"] == "imagenet" and arch["init_channels"] % 2:
        raise f.child("init_channels").error("the imagenet stem halves the stem width and reduces with a "
                                             f"FactorizedReduce: expected an even number, got {arch['init_channels']}")
    has_one, has_stages = "genotype" in arch, "stage_genotypes" in arch
    if has_one == has_stages:
        raise f.child("genotype").error("give exactly one of 'genotype' (all stages) or 'stage_genotypes' "
                                        "(one per stage)")
    if has_one:
        arch["genotype"] = _check_genotype(f.child("genotype"))
    else:
        sg = f.child("stage_genotypes")
        sg.expect(list, "a list of genotypes, one per stage")
        if len(sg.value) != len(arch["cells_per_stage"]):
            raise sg.error(f"expected {len(arch['cells_per_stage'])} genotypes (one per stage), got {len(sg.value)}")
        arch["stage_genotypes"] = [_check_genotype(sg.child(i)) for i in range(len(sg.value))]
    for key in ("drop_path_rate", "drop_rate"):
        if key in arch:
            arch[key] = f.child(key).number(low=0, high=0.99)
    return arch


def model_kwargs(arch: dict) -> dict:
    return dict(
        genotype=arch["genotype"] if "genotype" in arch else arch["stage_genotypes"],
        init_channels=arch["init_channels"],
        cells_per_stage=tuple(arch["cells_per_stage"]),
        stem_type=arch["stem"],
        stem_multiplier=arch["stem_multiplier"],
        drop_path_rate=arch.get("drop_path_rate", 0.),
        drop_rate=arch.get("drop_rate", 0.),
    )


def _plan(arch: dict) -> dict:
    kw = model_kwargs(arch)
    return network_plan(kw["stem_type"], kw["init_channels"], kw["stem_multiplier"], kw["cells_per_stage"],
                        _stage_genotypes(kw["genotype"], len(kw["cells_per_stage"])))


def _aux_filter(inner):
    """Official checkpoints' aux-head weights are not loaded (see adapt_state_dict); a model built with
    ``auxiliary=True`` keeps its freshly initialised aux head."""
    def filter_fn(state_dict, model=None):
        if inner is not None:
            state_dict = inner(state_dict, model)
        if model is not None:
            state_dict = dict(state_dict)
            for k, v in model.state_dict().items():
                if k.startswith("aux_head.") and k not in state_dict:
                    state_dict[k] = v
        return state_dict
    return filter_fn


def build(entry, pretrained: bool = False, **kwargs) -> nn.Module:
    model_args = model_kwargs(entry.arch)
    model_args.update(kwargs)
    if kwargs.get("features_only"):
        if model_args.get("auxiliary"):
            raise ValueError("features_only models have no auxiliary head; drop auxiliary=True")
        model_args["auxiliary"] = False
    plan = _plan(entry.arch)
    model_args["pretrained_filter_fn"] = _aux_filter(model_args.get("pretrained_filter_fn"))
    return build_model_with_cfg(
        DartsCellNet, entry.name, pretrained,
        feature_cfg=dict(feature_cls="hook", no_rewrite=True, out_indices=tuple(range(len(plan["feature_info"])))),
        **model_args)


# official key layout (CDARTS ModelAug / ModelTest) -> ours
_STEM_KEYS = {
    "cifar": {"feature_extractor.0.0.": "stem0.0.conv.", "feature_extractor.0.1.": "stem0.0.bn."},
    "imagenet": {"feature_extractor.0.0.": "stem0.0.conv.", "feature_extractor.0.1.": "stem0.0.bn.",
                 "feature_extractor.0.3.": "stem0.1.conv.", "feature_extractor.0.4.": "stem0.1.bn.",
                 "feature_extractor.1.1.": "stem1.conv.", "feature_extractor.1.2.": "stem1.bn."},
}
_CELL_KEY = re.compile(r"^nas_layers\.(\d+)\.(\d+)\.(.+)$")
_PREPROC_STDCONV = re.compile(r"^(preproc[01])\.net\.([12])\.(.+)$")
_DAG_KEY = re.compile(r"^dag\.(\d+)\.(\d+)\.(?:0\.)?(.+)$")  # the '.0.' is the official DropPath wrapper
_SEP_KEY = re.compile(r"^net\.([01])\.net\.([123])\.(.+)$")
_DIL_KEY = re.compile(r"^net\.([123])\.(.+)$")
_DW_PW_BN = {"1": "conv_dw", "2": "conv_pw", "3": "bn"}


def _map_cell_key(rest: str, node_start: List[int]) -> Optional[str]:
    m = _PREPROC_STDCONV.match(rest)
    if m:
        return f"{m.group(1)}.{'conv' if m.group(2) == '1' else 'bn'}.{m.group(3)}"
    if rest.startswith(("preproc0.", "preproc1.")):
        return rest  # FactorizedReduce: conv1 / conv2 / bn, same names
    m = _DAG_KEY.match(rest)
    if not m:
        return None
    node, edge, tail = int(m.group(1)), int(m.group(2)), m.group(3)
    if node >= len(node_start):
        return None
    op = f"ops.{node_start[node] + edge}"
    sep, dil = _SEP_KEY.match(tail), _DIL_KEY.match(tail)
    if sep:
        return f"{op}.conv{int(sep.group(1)) + 1}.{_DW_PW_BN[sep.group(2)]}.{sep.group(3)}"
    if dil:
        return f"{op}.{_DW_PW_BN[dil.group(1)]}.{dil.group(2)}"
    return f"{op}.{tail}"  # FactorizedReduce (stride-2 skip_connect): conv1 / conv2 / bn


def adapt_state_dict(state_dict, entry) -> dict:
    """Official CDARTS keys (``feature_extractor.*``, ``nas_layers.<stage>.<cell>.dag.<node>.<edge>.0.*``, ``fc.*``)
    to ours (``stem0.*``, ``stem1.*``, ``cells.<i>.ops.<k>.*``, ``fc.*``). ``aux_head.*`` (training-only, in every
    retrain checkpoint) is dropped. A state dict already in our layout passes through. Keys that fit nowhere are
    kept as they are, so the key check names them."""
    if not any(k.startswith(("feature_extractor.", "nas_layers.")) for k in state_dict):
        return {k: v for k, v in state_dict.items() if not k.startswith("aux_head.")}
    arch = entry.arch
    plan = _plan(arch)
    offsets = [sum(arch["cells_per_stage"][:s]) for s in range(len(arch["cells_per_stage"]))]
    node_starts = []
    for cell in plan["cells"]:
        starts, total = [], 0
        for node in cell["nodes"]:
            starts.append(total)
            total += len(node)
        node_starts.append(starts)
    stem_keys = _STEM_KEYS[arch["stem"]]
    out = {}
    for key, value in state_dict.items():
        if key.startswith("aux_head."):
            continue
        new = None
        for old_prefix, new_prefix in stem_keys.items():
            if key.startswith(old_prefix):
                new = new_prefix + key[len(old_prefix):]
        m = _CELL_KEY.match(key)
        if m:
            stage, cell, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            if stage < len(offsets) and cell < arch["cells_per_stage"][stage]:
                index = offsets[stage] + cell
                mapped = _map_cell_key(rest, node_starts[index])
                if mapped is not None:
                    new = f"cells.{index}.{mapped}"
        out[new or key] = value
    return out


def describe(arch: dict) -> str:
    cells = sum(arch["cells_per_stage"])
    return f"{cells} cells, C={arch['init_channels']}, {arch['stem']} stem"


FAMILY = register_family(Family(
    name="darts_cell", validate_arch=validate_arch, build=build, adapt_state_dict=adapt_state_dict,
    describe=describe, cfg_defaults={"first_conv": "stem0.0.conv", "classifier": "fc"},
    reduction=lambda arch: _plan(arch)["reduction"]))
