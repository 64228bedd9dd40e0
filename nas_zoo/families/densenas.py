"""DenseNAS networks: the official ``net_config`` format, the ResNet-based family, the official key layouts.

DenseNAS (Fang et al., "Densely Connected Search Space for More Flexible Neural Architecture Search", CVPR 2020)
describes a derived network as a ``net_config`` text file: ``|``-separated items, then a ``net_type`` line::

    [[16, 16], 'mbconv_k3_t1', [], 0, 1]|
    [[16, 24], 'mbconv_k3_t6', [], 0, 2]|
    ...
    [[176, 384], 'mbconv_k7_t6', [], 0, 1]|
    [[384, 1984], 'conv1_1']
    net_type: mbv2

Each item is one DenseNAS block: ``[[in_ch, out_ch], head_op, [stack_ops], num_stack_layers, stride]``; the head
layer changes width and stride, the stack layers keep them. The official reader ``eval()``s every item; here each
is read with `ast.literal_eval` and checked, so a file can never run code.

The two network types land in two families:

* ``mbv2`` (DenseNAS-A/B/C/Large, official ``MBV2_Net``): entries of the ``efficientnet`` family. timm's
  EfficientNet reproduces MBV2_Net exactly with ReLU6, BN eps 1e-3, a 16-wide stem, ``ds`` blocks for ``t1``
  (no expansion) and its residual rule (identity shortcut whenever stride 1 and in == out, which is MBV2_Net's
  "shapes match" rule). Official checkpoints are read through the ``densenas`` checkpoint layout defined here.
* ``res`` (DenseNAS-R1/R2/R3, official ``RES_Net``): the ``densenas_resnet`` family below, a timm-style ResNet
  with per-block widths built from timm's own ResNet blocks, a ReLU6 stem and BN eps 1e-5.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, DropPath, create_classifier, get_device_dtype, make_divisible
from timm.models import build_model_with_cfg
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.resnet import BasicBlock, Bottleneck, downsample_conv

from ..entry import Field
from ..errors import NasZooError
from . import Family, register_family

__all__ = ["NetConfig", "NetConfigBlock", "NetConfigError", "parse_net_config", "read_net_config",
           "DenseNASResNet", "mbv2_official_to_timm", "resnet_official_to_ours"]

NET_TYPES = ("mbv2", "res")
# op name -> (kernel, expansion): the MBConv ops of the official OPS table (models/operations.py)
MBV2_OPS = {f"mbconv_k{k}_t{t}": (k, t) for k, t in ((3, 1), (3, 3), (3, 6), (5, 3), (5, 6), (7, 3), (7, 6))}
RES_OPS = {"basic_block": "basic", "bottle_neck": "bottleneck"}
SKIP_OP = "skip_connect"  # an identity stack layer (no weights); derived configs normally drop them already
HEAD_CONV_OP = "conv1_1"  # mbv2 only: the final 1x1 conv to last_dim, as the last item
OPS_BY_TYPE = {"mbv2": MBV2_OPS, "res": RES_OPS}
MAX_ITEM_CHARS = 10_000
ITEM_FORMAT = "[[in_ch, out_ch], head_op, [stack_ops], num_stack_layers, stride]"

# the official networks' fixed choices
MBV2_BN_EPS = 1e-3  # MBV2_Net.set_bn_param(0.1, 0.001)
RES_BN_EPS = 1e-5  # RES_Net keeps PyTorch's default
RES_BOTTLENECK_STEM = 32  # official Bottleneck multiplies its in_ch by 4 unless it equals 32 (the stem width)


# ----------------------------------------------------------------------------------------------------------------
# the net_config format

class NetConfigError(NasZooError):
    """A net_config that cannot be read; the message names the file and the item."""

    def render(self) -> str:
        return f"{self.source}: {self.field}: {self.problem}"

    @property
    def where(self) -> str:
        return self.field


@dataclass(frozen=True)
class NetConfigBlock:
    in_chs: int
    out_chs: int
    head_op: str
    stack_ops: Tuple[str, ...]
    stride: int
    num_stack_layers: int  # as written; the official code builds one layer per entry of stack_ops

    @property
    def layer_ops(self) -> List[Tuple[str, int]]:
        """(op, stride) of every layer with weights: the head layer, then the stack layers minus identities."""
        return [(self.head_op, self.stride)] + [(op, 1) for op in self.stack_ops if op != SKIP_OP]

    def to_text(self) -> str:
        return str([[self.in_chs, self.out_chs], self.head_op, list(self.stack_ops), self.num_stack_layers,
                    self.stride])


@dataclass(frozen=True)
class NetConfig:
    net_type: str
    blocks: Tuple[NetConfigBlock, ...]
    last_dim: Optional[int] = None  # mbv2: width of the final 1x1 conv
    source: str = "<net_config>"

    def to_text(self) -> str:
        """The official on-disk format (what tools/utils.py:load_net_config reads)."""
        items = [b.to_text() for b in self.blocks]
        if self.last_dim is not None:
            items.append(str([[self.blocks[-1].out_chs, self.last_dim], HEAD_CONV_OP]))
        return "|\n".join(items) + f"\nnet_type: {self.net_type}\n"

    def to_family_arch(self) -> Tuple[str, Dict[str, Any]]:
        """(family name, entry arch) hosting this network."""
        if self.net_type == "mbv2":
            return "efficientnet", mbv2_arch(self)
        return "densenas_resnet", resnet_arch(self)


def read_net_config(path: Union[str, Path], net_type: Optional[str] = None) -> NetConfig:
    """Read a net_config file in the official format (items, then a ``net_type: ...`` line)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise NetConfigError(str(path), "<file>", f"cannot read the net_config file ({e.strerror})") from None
    except UnicodeDecodeError:
        raise NetConfigError(str(path), "<file>", "not a text file") from None
    return parse_net_config(text, net_type=net_type, source=str(path))


def parse_net_config(text: str, net_type: Optional[str] = None, source: str = "<net_config>") -> NetConfig:
    """Parse net_config text: the official file format, or the bare item string together with ``net_type``.

    As the official reader does, lines are stripped and joined, and everything from the ``net_type`` line on is
    the type. Items are Python literals read with `ast.literal_eval` (never ``eval``) and then checked.
    """
    body, file_type = [], None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if "net_type" in line:
            m = re.fullmatch(r"net_type\s*:\s*(\S+)", line)
            if not m:
                raise NetConfigError(source, f"line {number}", f"expected 'net_type: mbv2' or 'net_type: res', "
                                                               f"got {line[:80]!r}")
            file_type = m.group(1)
            break
        body.append(line)
    if file_type is not None and net_type is not None and file_type != net_type:
        raise NetConfigError(source, "net_type", f"the file says {file_type!r} but {net_type!r} was asked for")
    net_type = file_type or net_type
    if net_type is None:
        raise NetConfigError(source, "net_type", "missing: the official format ends with a line such as "
                                                 "'net_type: mbv2' (or pass net_type)")
    if net_type not in NET_TYPES:
        raise NetConfigError(source, "net_type", f"expected one of {list(NET_TYPES)}, got {net_type!r}")
    joined = "".join(body)
    if not joined.strip():
        raise NetConfigError(source, "<items>", f"no items: expected '|'-separated items {ITEM_FORMAT}")
    pieces = joined.split("|")
    values = [_literal(piece, i, len(pieces), source) for i, piece in enumerate(pieces)]
    return _check_items(values, net_type, source)


def _where(i: int, n: int, value: Any = None) -> str:
    text = "" if value is None else f" {value!r}"
    return f"item {i + 1} of {n}" + (text if len(text) < 70 else text[:67] + "...")


def _literal(piece: str, i: int, n: int, source: str) -> Any:
    piece = piece.strip()
    where = _where(i, n)
    if not piece:
        raise NetConfigError(source, where, "empty (a '|' too many?); expected " + ITEM_FORMAT)
    if len(piece) > MAX_ITEM_CHARS:
        raise NetConfigError(source, where, f"longer than {MAX_ITEM_CHARS} characters; not a net_config item")
    try:
        return ast.literal_eval(piece)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        shown = piece if len(piece) < 70 else piece[:67] + "..."
        raise NetConfigError(source, where, f"not a Python literal list (only numbers, strings and lists are "
                                            f"allowed; code is never run): {shown!r}") from None


def _int(value: Any, low: int, source: str, where: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise NetConfigError(source, where, f"{what}: expected an integer >= {low}, got {value!r}")
    return value


def _channels(value: Any, source: str, where: str) -> Tuple[int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise NetConfigError(source, where, f"channels: expected [in_ch, out_ch], got {value!r}")
    return (_int(value[0], 1, source, where, "in_ch"), _int(value[1], 1, source, where, "out_ch"))


def _check_items(values: Sequence[Any], net_type: str, source: str) -> NetConfig:
    ops = OPS_BY_TYPE[net_type]
    n = len(values)
    blocks: List[NetConfigBlock] = []
    last_dim = None
    for i, value in enumerate(values):
        where = _where(i, n, value)
        if not isinstance(value, (list, tuple)):
            raise NetConfigError(source, where, f"expected a list {ITEM_FORMAT}")
        if len(value) == 2 and value[1] == HEAD_CONV_OP:
            if net_type != "mbv2" or i != n - 1:
                raise NetConfigError(source, where, f"'{HEAD_CONV_OP}' is only valid as the last item of an mbv2 "
                                                    "net_config")
            in_chs, last_dim = _channels(value[0], source, where)
            if not blocks or in_chs != blocks[-1].out_chs:
                raise NetConfigError(source, where, f"in_ch {in_chs} must equal the out_ch of the item before it")
            continue
        if len(value) != 5:
            raise NetConfigError(source, where, f"expected 5 fields {ITEM_FORMAT}, got {len(value)}")
        chs, head_op, stack_ops, num_stack, stride = value
        in_chs, out_chs = _channels(chs, source, where)
        if head_op not in ops:
            raise NetConfigError(source, where, f"head_op: expected one of {sorted(ops)} for net_type {net_type}, "
                                                f"got {head_op!r}")
        if not isinstance(stack_ops, (list, tuple)) or any(op not in ops and op != SKIP_OP for op in stack_ops):
            raise NetConfigError(source, where, f"stack_ops: expected a list of {sorted(ops) + [SKIP_OP]}, "
                                                f"got {stack_ops!r}")
        num_stack = _int(num_stack, 0, source, where, "num_stack_layers")
        stride = _int(stride, 1, source, where, "stride")
        if blocks and in_chs != blocks[-1].out_chs:
            raise NetConfigError(source, where, f"in_ch {in_chs} must equal the out_ch {blocks[-1].out_chs} of the "
                                                "item before it")
        blocks.append(NetConfigBlock(in_chs, out_chs, head_op, tuple(stack_ops), stride, num_stack))
    if not blocks:
        raise NetConfigError(source, "<items>", f"no blocks: expected items {ITEM_FORMAT}")
    if net_type == "mbv2" and last_dim is None:
        raise NetConfigError(source, _where(n - 1, n, values[-1]), "an mbv2 net_config ends with the final 1x1 conv "
                                                                   f"item [[in_ch, last_dim], '{HEAD_CONV_OP}']")
    if net_type == "res":
        _check_res_channels(blocks, source)
    return NetConfig(net_type=net_type, blocks=tuple(blocks), last_dim=last_dim, source=source)


def _check_res_channels(blocks: Sequence[NetConfigBlock], source: str) -> None:
    """Refuse configs the official RES_Net cannot run: its Bottleneck takes 4 x in_ch input channels unless
    in_ch is 32, so e.g. a basic_block after a bottle_neck, or a bottle_neck after a basic block, breaks."""
    channels = blocks[0].in_chs  # the stem's output
    n = len(blocks)
    for i, block in enumerate(blocks):
        layers = [(block.head_op, block.in_chs)] + [(op, block.out_chs) for op in block.stack_ops if op != SKIP_OP]
        for j, (op, declared_in) in enumerate(layers):
            bottleneck = op == "bottle_neck"
            expects = declared_in * 4 if bottleneck and declared_in != RES_BOTTLENECK_STEM else declared_in
            if expects != channels:
                layer = "head layer" if j == 0 else f"stack layer {j}"
                why = (f" (bottle_neck takes 4 x in_ch unless in_ch is {RES_BOTTLENECK_STEM})" if bottleneck else "")
                raise NetConfigError(source, _where(i, n, block.to_text()),
                                     f"the {layer} ({op}) takes {expects} input channels{why} but gets {channels}: "
                                     "the official RES_Net cannot run this config")
            channels = block.out_chs * 4 if bottleneck else block.out_chs


def mbv2_arch(cfg: NetConfig) -> Dict[str, Any]:
    """The `efficientnet`-family arch of an mbv2 net_config: one timm stage per item, one block string per layer."""
    stages = []
    for i, block in enumerate(cfg.blocks):
        stage = []
        for op, stride in block.layer_ops:
            kernel, expansion = MBV2_OPS[op]
            if expansion == 1:  # MBConv t1 has no expand conv: timm's depthwise-separable block
                stage.append(f"ds_r1_k{kernel}_s{stride}_c{block.out_chs}")
            else:
                stage.append(f"ir_r1_k{kernel}_s{stride}_e{expansion}_c{block.out_chs}")
        stages.append(stage)
        # timm rounds block widths and expanded widths to multiples of 8; the official code uses them as given
        widths = [block.out_chs]
        for j, (op, _) in enumerate(block.layer_ops):
            expansion = MBV2_OPS[op][1]
            if expansion > 1:
                widths.append((block.in_chs if j == 0 else block.out_chs) * expansion)
        for width in widths:
            if make_divisible(width) != width:
                raise NetConfigError(cfg.source, _where(i, len(cfg.blocks), block.to_text()),
                                     f"width {width} is not a multiple of 8: timm's EfficientNet rounds channel "
                                     "counts to multiples of 8, so this network cannot be hosted exactly")
    return {"model": "efficientnet", "block_args": stages, "stem_size": cfg.blocks[0].in_chs, "fix_stem": True,
            "num_features": cfg.last_dim, "act_layer": "relu6", "bn_eps": MBV2_BN_EPS}


def resnet_arch(cfg: NetConfig) -> Dict[str, Any]:
    """The `densenas_resnet`-family arch of a res net_config: one stage per item."""
    stages = [{"width": b.out_chs, "stride": b.stride, "layers": [RES_OPS[op] for op, _ in b.layer_ops]}
              for b in cfg.blocks]
    return {"stem_size": cfg.blocks[0].in_chs, "stages": stages}


# ----------------------------------------------------------------------------------------------------------------
# official key layouts -> ours

_LAYER_RE = re.compile(r"^(blocks\.(\d+)\.(?:head_layer|stack_layers\.(\d+))\.)(.+)$")
_MBV2_WITH_EXPANSION = {"_expand_conv.0": "conv_pw", "_expand_conv.1": "bn1", "_depthwise_conv.0": "conv_dw",
                        "_depthwise_conv.1": "bn2", "_project_conv.0": "conv_pwl", "_project_conv.1": "bn3"}
_MBV2_WITHOUT_EXPANSION = {"_depthwise_conv.0": "conv_dw", "_depthwise_conv.1": "bn1", "_project_conv.0": "conv_pw",
                           "_project_conv.1": "bn2"}


def _layer_indices(state_dict) -> Dict[str, int]:
    """Official layer prefix (``blocks.i.head_layer.`` / ``blocks.i.stack_layers.j.``) -> our index in stage i.

    Identity stack layers (skip_connect) hold no weights, so numbering the layers that do, head first, then the
    stack layers in order, gives our indices."""
    found: Dict[int, Dict[int, str]] = {}
    for key in state_dict:
        m = _LAYER_RE.match(key)
        if m:
            position = -1 if m.group(3) is None else int(m.group(3))
            found.setdefault(int(m.group(2)), {})[position] = m.group(1)
    return {prefix: index for layers in found.values() for index, (_, prefix) in enumerate(sorted(layers.items()))}


def _replace_prefix(name: str, table: Dict[str, str]) -> str:
    for old, new in table.items():
        if name.startswith(old + "."):
            return new + name[len(old):]
    return name


def _rename(state_dict, stages: str, outer: Dict[str, str], inner) -> Dict[str, torch.Tensor]:
    """Rename official keys: ``blocks.i.<layer>.rest`` -> ``<stages>.i.<our index>.inner(<layer>, rest)``, other
    keys by the `outer` prefix table. Keys matching no official pattern (e.g. already ours) pass through."""
    indices = _layer_indices(state_dict)
    out = {}
    for key, value in state_dict.items():
        m = _LAYER_RE.match(key)
        if m:
            key = f"{stages}.{m.group(2)}.{indices[m.group(1)]}.{inner(m.group(1), m.group(4))}"
        else:
            key = _replace_prefix(key, outer)
        out[key] = value
    return out


def mbv2_official_to_timm(state_dict, entry=None) -> Dict[str, torch.Tensor]:
    """Official ``MBV2_Net`` keys -> timm EfficientNet keys (the ``densenas`` checkpoint layout of the
    `efficientnet` family). Keys already in timm's layout pass through, so converted files load the same way."""
    expanded = {m.group(1) for m in map(_LAYER_RE.match, state_dict) if m and m.group(4).startswith("_expand_conv.")}

    def inner(layer: str, rest: str) -> str:  # MBConv t1 has no expand conv, so its BNs are numbered differently
        return _replace_prefix(rest, _MBV2_WITH_EXPANSION if layer in expanded else _MBV2_WITHOUT_EXPANSION)

    outer = {"input_block.0": "conv_stem", "input_block.1": "bn1", "conv1_1_block.conv1_1.0": "conv_head",
             "conv1_1_block.conv1_1.1": "bn2"}
    return _rename(state_dict, "blocks", outer, inner)


def resnet_official_to_ours(state_dict, entry=None) -> Dict[str, torch.Tensor]:
    """Official ``RES_Net`` keys -> `DenseNASResNet` keys. Inside a layer the names already agree (both follow
    torchvision's ResNet blocks: conv1, bn1, ..., downsample.0/1)."""
    outer = {"input_block.0": "stem.conv", "input_block.1": "stem.bn", "classifier": "fc"}
    return _rename(state_dict, "stages", outer, lambda layer, rest: rest)


# ----------------------------------------------------------------------------------------------------------------
# the ResNet-based network

LAYER_TYPES = {"basic": BasicBlock, "bottleneck": Bottleneck}


class DenseNASResNet(nn.Module):
    """DenseNAS ResNet-based network (official ``RES_Net``): a 3x3 stride-2 stem with ReLU6, then one stage per
    DenseNAS block, each a list of basic / bottleneck layers of one width whose first layer carries the stride;
    a 1x1 conv + BN shortcut wherever stride or width changes; global pooling and a linear classifier.

    Args:
        stages: one mapping per stage: ``width`` (bottleneck output is 4 x width), ``stride``, ``layers``
            (``'basic'`` / ``'bottleneck'`` per layer).
        stem_size: stem output channels.
        bn_eps: BatchNorm epsilon (RES_Net: 1e-5).
    """

    def __init__(
            self,
            stages: Sequence[Dict[str, Any]],
            stem_size: int = 32,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = "avg",
            bn_eps: float = RES_BN_EPS,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        norm_layer = partial(nn.BatchNorm2d, eps=bn_eps)

        self.stem = ConvNormAct(in_chans, stem_size, 3, stride=2, norm_layer=norm_layer, act_layer=nn.ReLU6, **dd)
        points = [dict(num_chs=stem_size, reduction=2, module="stem")]

        total_layers = sum(len(s["layers"]) for s in stages)
        layer_idx, channels, reduction = 0, stem_size, 2
        stage_modules = []
        for i, stage in enumerate(stages):
            layers = []
            for j, layer_type in enumerate(stage["layers"]):
                block_cls = LAYER_TYPES[layer_type]
                stride = stage["stride"] if j == 0 else 1
                out_chs = stage["width"] * block_cls.expansion
                downsample = None
                if stride != 1 or channels != out_chs:
                    downsample = downsample_conv(channels, out_chs, 1, stride=stride, norm_layer=norm_layer, **dd)
                dpr = drop_path_rate * layer_idx / max(total_layers - 1, 1)
                layers.append(block_cls(channels, stage["width"], stride=stride, downsample=downsample,
                                        norm_layer=norm_layer, act_layer=nn.ReLU,
                                        drop_path=DropPath(dpr) if dpr > 0 else None, **dd))
                channels, layer_idx = out_chs, layer_idx + 1
            reduction *= stage["stride"]
            stage_modules.append(nn.Sequential(*layers))
            points.append(dict(num_chs=channels, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stage_modules)

        # one feature per reduction: the last module at each (stem = index 0, stage i = index i + 1)
        self.feature_points = [i for i, p in enumerate(points)
                               if i == len(points) - 1 or points[i + 1]["reduction"] != p["reduction"]]
        self.feature_info = [points[i] for i in self.feature_points]
        self.num_features = self.head_hidden_size = channels
        self.global_pool, self.fc = create_classifier(channels, num_classes, pool_type=global_pool, **dd)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():  # as RES_Net
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier; the current pooling is kept when `global_pool` is None."""
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool,
                                                      **get_device_dtype(self))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Forward features that returns intermediates (indices into `feature_info`)."""
        assert output_fmt in ("NCHW",), "Output shape must be NCHW."
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.feature_points), indices)
        take_points = [self.feature_points[i] for i in take_indices]
        last_point = self.feature_points[max_index]

        x = self.stem(x)
        if 0 in take_points:
            intermediates.append(x)
        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            stages = self.stages
        else:
            stages = self.stages[:last_point]
        for point, stage in enumerate(stages, 1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if point in take_points:
                intermediates.append(x)

        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Prune layers not required for specified intermediates."""
        take_indices, max_index = feature_take_indices(len(self.feature_points), indices)
        self.stages = self.stages[:self.feature_points[max_index]]
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)
        else:
            x = self.stages(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return self.forward_head(x)


# ----------------------------------------------------------------------------------------------------------------
# the densenas_resnet family

ARCH_KEYS = ("stem_size", "stages", "bn_eps", "drop_rate", "drop_path_rate")
STAGE_KEYS = ("width", "stride", "layers")


def validate_arch(f: Field) -> dict:
    arch = f.mapping(required=("stem_size", "stages"), allowed=ARCH_KEYS)
    f.child("stem_size").integer(low=1)
    stages = f.child("stages")
    stages.expect(list, "a list of stages, each {width, stride, layers}")
    if not stages.value:
        raise stages.error("expected at least one stage")
    normalised = []
    for i in range(len(stages.value)):
        sf = stages.child(i)
        stage = sf.mapping(required=STAGE_KEYS, allowed=STAGE_KEYS)
        sf.child("width").integer(low=1)
        sf.child("stride").integer(low=1)
        layers = sf.child("layers")
        layers.expect(list, f"a list of layer types {sorted(LAYER_TYPES)}")
        if not layers.value:
            raise layers.error("a stage needs at least one layer")
        for j in range(len(layers.value)):
            layers.child(j).choice(sorted(LAYER_TYPES))
        normalised.append(stage)
    arch["stages"] = normalised
    if "bn_eps" in arch:
        arch["bn_eps"] = f.child("bn_eps").number(low=0, high=1)
    for key in ("drop_rate", "drop_path_rate"):
        if key in arch:
            arch[key] = f.child(key).number(low=0, high=1)
    return arch


def _reductions(arch: dict) -> List[int]:
    """Total stride after the stem and after each stage."""
    reductions = [2]
    for stage in arch["stages"]:
        reductions.append(reductions[-1] * stage["stride"])
    return reductions


def build(entry, pretrained: bool = False, **kwargs) -> nn.Module:
    arch = entry.arch
    model_args = dict(stages=arch["stages"], stem_size=arch["stem_size"], bn_eps=arch.get("bn_eps", RES_BN_EPS),
                      drop_rate=arch.get("drop_rate", 0.0), drop_path_rate=arch.get("drop_path_rate", 0.0))
    model_args.update(kwargs)  # caller wins (num_classes, in_chans, features_only ...)
    feature_cfg = dict(flatten_sequential=True, out_indices=tuple(range(len(set(_reductions(arch))))))
    return build_model_with_cfg(DenseNASResNet, entry.name, pretrained, feature_cfg=feature_cfg, **model_args)


def describe(arch: dict) -> str:
    return "widths " + "-".join(str(s["width"]) for s in arch["stages"]) + ", depths " + "-".join(
        str(len(s["layers"])) for s in arch["stages"])


FAMILY = register_family(Family(name="densenas_resnet", validate_arch=validate_arch, build=build,
                                adapt_state_dict=resnet_official_to_ours, describe=describe,
                                cfg_defaults={"first_conv": "stem.conv", "classifier": "fc"},
                                reduction=lambda arch: _reductions(arch)[-1]))
