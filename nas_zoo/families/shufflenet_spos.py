"""The `shufflenet_spos` family: the ShuffleNetV2 single-path one-shot space of SPOS and DSNAS.

Every layer of the network is one of four choice blocks (official index order)::

    0 shufflenet_3x3   1 shufflenet_5x5   2 shufflenet_7x7   3 xception_3x3

A stride-1 block splits its input channels even/odd: the even channels pass through, the odd ones go through
the block's main branch, and the two are concatenated (no shuffle after the concat: the next block's split does
the mixing). A stride-2 block (the first of each stage) feeds the whole input to both a projection branch and
the main branch. There is no residual add anywhere. The arch mapping::

    choices: [0, 0, 3, 0, 3, ...]        # one op index per layer, sum(stage_repeats) of them
    stage_repeats: [4, 4, 8, 4]
    stage_out_channels: [64, 160, 320, 640]
    stem_size: 16                        # 3x3 stride-2 conv + BN + ReLU
    num_features: 1024                   # 1x1 conv + BN + ReLU before the pool
    bn_eps: 0.01                         # every BN (stem, blocks, head); the official runs used 0.01 and 1e-5
    drop_rate: 0.1                       # optional: dropout before the classifier (default 0)

The classifier is a bias-free Linear, as in the official code. Global pooling is adaptive average pooling:
the official `nn.AvgPool2d(7)` equals it for a 7x7 final map (inputs of 193-224 px) only; see
docs/shufflenet_spos.md.

Official checkpoints (SNAS-Series DSNAS, `network_eval.ShuffleNetV2_OneShot` / `network.ShuffleNetV2_OneShot`)
hold either a child net (one op per layer, keys ``features.<layer>.<op>.*``) or the whole supernet (all four
ops per layer). `adapt_state_dict` keeps the entry's op per layer, drops ``log_alpha``, and refuses a file
whose choices disagree with the entry: a child's choices are read from its keys, a supernet's from
``argmax(log_alpha)`` (a child's ``log_alpha`` means nothing: retrain runs save a random one).
"""
from __future__ import annotations

import re
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from timm.layers import ConvNormAct, SelectAdaptivePool2d, get_device_dtype
from timm.models import build_model_with_cfg, checkpoint_seq
from timm.models._features import feature_take_indices

from ..checkpoint import CheckpointError
from ..entry import Field
from . import Family, register_family

__all__ = ["OPS", "ShuffleChoiceBlock", "ShuffleNetSPOS", "channel_split", "init_weights", "layer_specs",
           "official_unit_key"]

OPS = ("shufflenet_3x3", "shufflenet_5x5", "shufflenet_7x7", "xception_3x3")
ARCH_KEYS = ("choices", "stage_repeats", "stage_out_channels", "stem_size", "num_features", "bn_eps", "drop_rate")
REQUIRED_KEYS = ("choices", "stage_repeats", "stage_out_channels", "stem_size", "num_features", "bn_eps")


def channel_split(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(even channels, odd channels): what the official `channel_shuffle` reshape/permute trick returns."""
    return x[:, 0::2], x[:, 1::2]


def _kernel_size(op: str) -> int:
    return int(op.rsplit("_", 1)[1].split("x")[0])


class ShuffleChoiceBlock(nn.Module):
    """One choice block of the space: a ShuffleNetV2 unit (k = 3, 5, 7) or an Xception unit, by op name.

    in_chs / out_chs are the block's input and output widths; mid_chs defaults to out_chs // 2 (the official
    channel scale 1.0). Convs have no bias; depthwise convs are followed by BN without activation.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, op: str, mid_chs: Optional[int] = None,
                 norm_layer=nn.BatchNorm2d, act_layer=nn.ReLU):
        super().__init__()
        if op not in OPS:
            raise ValueError(f"unknown choice op {op!r}; expected one of {list(OPS)}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.op = op
        self.stride = stride
        branch_in = in_chs if stride == 2 else in_chs // 2
        mid_chs = mid_chs or out_chs // 2
        main_out = out_chs - branch_in
        k = _kernel_size(op)
        cna = partial(ConvNormAct, norm_layer=norm_layer, act_layer=act_layer)
        if op.startswith("shufflenet"):
            self.branch_main = nn.Sequential(
                cna(branch_in, mid_chs, 1),
                cna(mid_chs, mid_chs, k, stride=stride, groups=mid_chs, apply_act=False),
                cna(mid_chs, main_out, 1),
            )
        else:
            self.branch_main = nn.Sequential(
                cna(branch_in, branch_in, 3, stride=stride, groups=branch_in, apply_act=False),
                cna(branch_in, mid_chs, 1),
                cna(mid_chs, mid_chs, 3, groups=mid_chs, apply_act=False),
                cna(mid_chs, mid_chs, 1),
                cna(mid_chs, mid_chs, 3, groups=mid_chs, apply_act=False),
                cna(mid_chs, main_out, 1),
            )
        if stride == 2:
            self.branch_proj = nn.Sequential(
                cna(in_chs, in_chs, k, stride=stride, groups=in_chs, apply_act=False),
                cna(in_chs, in_chs, 1),
            )
        else:
            self.branch_proj = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x_pass, x_main = channel_split(x)
            return torch.cat([x_pass, self.branch_main(x_main)], dim=1)
        return torch.cat([self.branch_proj(x), self.branch_main(x)], dim=1)


def layer_specs(stage_repeats: Sequence[int], stage_out_channels: Sequence[int],
                stem_size: int) -> List[Tuple[int, int, int, int, int]]:
    """Per choice layer: (stage, index in stage, in_chs, out_chs, stride); the first block of a stage has stride 2."""
    specs, in_chs = [], stem_size
    for s, (repeats, out_chs) in enumerate(zip(stage_repeats, stage_out_channels)):
        for j in range(repeats):
            specs.append((s, j, in_chs, out_chs, 2 if j == 0 else 1))
            in_chs = out_chs
    return specs


def init_weights(model: nn.Module) -> None:
    """The official initialisation (DSNAS network.py `_initialize_weights`, after megvii's SPOS)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            std = 0.01 if name.startswith("stem") else 1.0 / m.weight.shape[1]
            nn.init.normal_(m.weight, 0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.constant_(m.bias, 1e-4)
            if m.running_mean is not None:
                nn.init.zeros_(m.running_mean)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ShuffleNetSPOS(nn.Module):
    """A child network of the ShuffleNetV2 one-shot space: stem, choice blocks in stages, 1x1 conv, classifier."""

    def __init__(
            self,
            ops: Sequence[str],
            stage_repeats: Sequence[int] = (4, 4, 8, 4),
            stage_out_channels: Sequence[int] = (64, 160, 320, 640),
            stem_size: int = 16,
            num_features: int = 1024,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            norm_layer=nn.BatchNorm2d,
            act_layer=nn.ReLU,
            device=None,
            dtype=None,
    ):
        super().__init__()
        if drop_path_rate:  # accepted so that generic train recipes (drop_path_rate: 0) build it
            raise ValueError(f"drop_path_rate={drop_path_rate}: ShuffleNetV2 blocks have no residual path to drop")
        if len(ops) != sum(stage_repeats):
            raise ValueError(f"expected {sum(stage_repeats)} ops (sum of stage_repeats), got {len(ops)}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        cna = partial(ConvNormAct, norm_layer=norm_layer, act_layer=act_layer)

        self.stem = cna(in_chans, stem_size, 3, stride=2)
        self.feature_info = [dict(num_chs=stem_size, reduction=2, module="stem")]
        stages: List[List[nn.Module]] = [[] for _ in stage_repeats]
        reduction = 2
        for (s, j, in_chs, out_chs, stride), op in zip(layer_specs(stage_repeats, stage_out_channels, stem_size), ops):
            stages[s].append(ShuffleChoiceBlock(in_chs, out_chs, stride, op, norm_layer=norm_layer,
                                                act_layer=act_layer))
        for s, out_chs in enumerate(stage_out_channels):
            reduction *= 2
            self.feature_info.append(dict(num_chs=out_chs, reduction=reduction, module=f"stages.{s}"))
        self.stages = nn.Sequential(*[nn.Sequential(*blocks) for blocks in stages])
        self.final_conv = cna(stage_out_channels[-1], num_features, 1)
        self.num_features = self.head_hidden_size = num_features

        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = self._make_fc(num_classes)
        init_weights(self)
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _make_fc(self, num_classes: int) -> nn.Module:
        # no bias, as in the official classifier; created where the rest of the model lives
        in_features = self.num_features * self.global_pool.feat_mult()
        if num_classes <= 0:
            return nn.Identity()
        return nn.Linear(in_features, num_classes, bias=False, **get_device_dtype(self)).train(self.training)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict:
        return dict(
            stem=r"^stem",
            blocks=[(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None),
                    (r"^final_conv", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = self._make_fc(num_classes)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features at the stem and after each stage (feature_info order); `norm` has nothing to apply here.

        indices: the last n features if an int, all if None, else the listed ones.
        """
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if feat_idx == len(self.stages):
            x = self.final_conv(x)
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages (and the 1x1 conv / head) the requested intermediates do not need."""
        take_indices, max_index = feature_take_indices(len(self.feature_info), indices)
        self.stages = self.stages[:max_index]
        # final_conv follows the last stage and never feeds a feature: it goes with the head or a truncation
        if prune_norm or prune_head or max_index < len(self.feature_info) - 1:
            self.final_conv = nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x, flatten=True)
        else:
            x = self.stages(x)
        return self.final_conv(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------- entries

def validate_arch(f: Field) -> dict:
    arch = f.mapping(required=REQUIRED_KEYS, allowed=ARCH_KEYS)
    repeats_f = f.child("stage_repeats")
    repeats = repeats_f.int_list()
    if not repeats:
        raise repeats_f.error("expected at least one stage")
    for i in range(len(repeats)):
        repeats_f.child(i).integer(low=1)
    widths_f = f.child("stage_out_channels")
    widths = widths_f.int_list(len(repeats))
    stem = f.child("stem_size").integer(low=1)
    prev = stem
    for i, width in enumerate(widths):
        w = widths_f.child(i)
        if width < 2 or width % 2:
            raise w.error(f"expected an even number of channels >= 2 (stride-1 blocks split channels in halves), "
                          f"got {width}")
        if width <= prev:
            raise w.error(f"expected more channels than the stage input ({prev}): the first block of a stage "
                          f"concatenates its {prev} projected input channels with a main branch, got {width}")
        prev = width
    choices_f = f.child("choices")
    choices = choices_f.int_list()
    if len(choices) != sum(repeats):
        raise choices_f.error(f"expected one op index per layer: {sum(repeats)} (sum of stage_repeats "
                              f"{repeats}), got {len(choices)}")
    for i, c in enumerate(choices):
        if not 0 <= c < len(OPS):
            raise choices_f.child(i).error(
                f"expected an op index in 0..{len(OPS) - 1} ({', '.join(f'{k}={n}' for k, n in enumerate(OPS))}), "
                f"got {c}")
    f.child("num_features").integer(low=1)
    arch["bn_eps"] = f.child("bn_eps").number(low=1e-12, high=1)
    if "drop_rate" in arch:
        rate = f.child("drop_rate").number(low=0, high=1)
        if rate >= 1:
            raise f.child("drop_rate").error(f"expected a number in [0, 1), got {rate}")
        arch["drop_rate"] = rate
    return arch


def model_kwargs(arch: dict) -> dict:
    return dict(
        ops=[OPS[c] for c in arch["choices"]],
        stage_repeats=tuple(arch["stage_repeats"]),
        stage_out_channels=tuple(arch["stage_out_channels"]),
        stem_size=arch["stem_size"],
        num_features=arch["num_features"],
        norm_layer=partial(nn.BatchNorm2d, eps=arch["bn_eps"]),
        drop_rate=arch.get("drop_rate", 0.0),
    )


def build(entry, pretrained: bool = False, **kwargs) -> nn.Module:
    model_args = model_kwargs(entry.arch)
    model_args.update(kwargs)  # caller wins (num_classes, drop_rate, in_chans, features_only ...)
    return build_model_with_cfg(ShuffleNetSPOS, entry.name, pretrained,
                                feature_cfg=dict(flatten_sequential=True), **model_args)


def describe(arch: dict) -> str:
    it = iter(arch["choices"])
    stages = ["".join(str(next(it)) for _ in range(n)) for n in arch["stage_repeats"]]
    return "choices " + "-".join(stages)


# ------------------------------------------------------------------------------- official checkpoints

_CHOICE_KEY = re.compile(r"^features\.(\d+)\.(\d+)\.(branch_main|branch_proj)\.(\d+)\.(.+)$")
# The official nn.Sequential layouts (c: conv, b: BN, r: ReLU). Ours group each conv with its BN (ConvNormAct).
_OFFICIAL_SEQ = {"shufflenet": "cbrcbcbr", "xception": "cbcbrcbcbrcbcbr", "proj": "cbcbr"}


def _seq_map(pattern: str) -> Dict[int, str]:
    out, unit = {}, -1
    for i, kind in enumerate(pattern):
        if kind == "c":
            unit += 1
            out[i] = f"{unit}.conv"
        elif kind == "b":
            out[i] = f"{unit}.bn"
    return out


_SEQ_MAPS = {name: _seq_map(p) for name, p in _OFFICIAL_SEQ.items()}
_HEAD_KEYS = {"first_conv.0.": "stem.conv.", "first_conv.1.": "stem.bn.",
              "conv_last.0.": "final_conv.conv.", "conv_last.1.": "final_conv.bn.", "classifier.0.": "fc."}


def official_unit_key(op: int, branch: str, index: int) -> Optional[str]:
    """Our sub-key of the official `branch_main` / `branch_proj` Sequential index of op `op` ('3.bn'); None for a
    parameter-free index (a ReLU). Shared by the entry loader and the search supernet."""
    seq = "proj" if branch == "branch_proj" else OPS[op].split("_")[0]
    return _SEQ_MAPS[seq].get(index)


def _is_official(state_dict) -> bool:
    return any(k == "log_alpha" or k.startswith(("features.", "first_conv.", "conv_last.", "classifier.0."))
               for k in state_dict)


def _op_label(c: int) -> str:
    return f"{c} ({OPS[c]})" if 0 <= c < len(OPS) else str(c)


def _selected_choices(state_dict, choices: Sequence[int], name: str) -> None:
    """Raise CheckpointError when the ops the checkpoint holds (child) or selects (supernet) are not the entry's."""
    held: Dict[int, set] = {}
    for key in state_dict:
        m = _CHOICE_KEY.match(key)
        if m and int(m.group(1)) < len(choices) and int(m.group(2)) < len(OPS):
            held.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    supernet = [layer for layer, ops in held.items() if len(ops) > 1]
    if supernet:
        alpha = state_dict.get("log_alpha")
        if alpha is None:
            raise CheckpointError(
                f"holds several ops for layer {supernet[0]} ({sorted(held[supernet[0]])}) like a supernet, but no "
                f"'log_alpha' to tell which op was selected; model '{name}' needs exactly one op per layer")
        if tuple(alpha.shape) != (len(choices), len(OPS)):
            raise CheckpointError(f"'log_alpha' has shape {tuple(alpha.shape)}, expected "
                                  f"{(len(choices), len(OPS))} (layers x ops)")
        found = alpha.argmax(dim=-1).tolist()
        how = "argmax(log_alpha) of this supernet checkpoint"
    else:
        found = [next(iter(held[i])) if i in held else None for i in range(len(choices))]
        how = "the op of each layer in this child checkpoint's keys"
    wrong = [f"layer {i}: checkpoint {_op_label(got)}, entry {_op_label(want)}"
             for i, (got, want) in enumerate(zip(found, choices)) if got is not None and got != want]
    if wrong:
        more = f" (+{len(wrong) - 5} more)" if len(wrong) > 5 else ""
        shown = [-1 if c is None else c for c in found]  # -1: the layer has no weights in the file
        raise CheckpointError(
            f"its architecture is not model '{name}': {how} disagrees with the entry's choices in "
            f"{len(wrong)} of {len(choices)} layers: " + "; ".join(wrong[:5]) + more
            + f" (checkpoint choices {shown}, entry choices {list(choices)})")


def adapt_state_dict(state_dict, entry) -> dict:
    """Official DSNAS/SPOS keys -> ours, keeping only the entry's op per layer; our own layout passes as is."""
    if not _is_official(state_dict):
        return state_dict
    arch = entry.arch
    choices = arch["choices"]
    _selected_choices(state_dict, choices, entry.name)
    specs = layer_specs(arch["stage_repeats"], arch["stage_out_channels"], arch["stem_size"])
    out = {}
    for key, value in state_dict.items():
        if key == "log_alpha":
            continue  # architecture parameter: not used by the child net
        m = _CHOICE_KEY.match(key)
        if m and int(m.group(1)) < len(choices) and int(m.group(2)) < len(OPS):
            layer, op, branch, idx, rest = int(m.group(1)), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            if op != choices[layer]:
                continue  # another op of a supernet layer
            unit = official_unit_key(op, branch, idx)
            if unit is not None:
                s, j = specs[layer][:2]
                out[f"stages.{s}.{j}.{branch}.{unit}.{rest}"] = value
                continue
        for old, new in _HEAD_KEYS.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        out[key] = value  # anything unknown stays, so the key check names it
    return out


FAMILY = register_family(Family(name="shufflenet_spos", validate_arch=validate_arch, build=build,
                                adapt_state_dict=adapt_state_dict, describe=describe,
                                cfg_defaults={"first_conv": "stem.conv", "classifier": "fc"}))
