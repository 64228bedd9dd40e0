"""The `efficientnet` family: timm's own EfficientNet / MobileNetV3 classes, architecture as block strings.

Hosts DNA, Cream, CDARTS-a/b, DenseNAS (MobileNetV2 type) and every DNA search result. The arch mapping::

    model: efficientnet         # timm class: efficientnet (EfficientNet) or mobilenetv3 (MobileNetV3)
    block_args: [[ir_r1_k3_s2_e6_c24_se0.25, ...], ...]   # timm block strings, one list per stage
    stem_size: 32
    num_features: 1280
    act_layer: swish            # any timm activation name
    bn_eps: 1.0e-5              # optional (PyTorch default)
    se_layer: {gate_layer: hard_sigmoid, act_layer: relu, rd_round: true}   # optional SE variant
    se_from_exp: true           # mobilenetv3 only: SE width from the expanded channels
    head_bias: true             # mobilenetv3 only
    pad_type: ''                # '' (symmetric, PyTorch) or 'same' (TF)
    channel_multiplier: 1.0
    depth_multiplier: 1.0
    drop_rate: 0.2              # training defaults; callers may override through create_model kwargs
    drop_path_rate: 0.2
"""
from __future__ import annotations

from functools import partial

import torch.nn as nn
from timm.layers import get_act_layer
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import (EfficientNetBuilder, _decode_block_str, decode_arch_def,
                                                round_channels)
from timm.models.efficientnet import _create_effnet
from timm.models.mobilenetv3 import _create_mnv3

from ..entry import Field
from . import Family, register_family
from .densenas import mbv2_official_to_timm

MODELS = ("efficientnet", "mobilenetv3")
ARCH_KEYS = ("model", "block_args", "stem_size", "num_features", "act_layer", "bn_eps", "se_layer", "se_from_exp",
             "head_bias", "pad_type", "fix_stem", "channel_multiplier", "depth_multiplier", "drop_rate",
             "drop_path_rate")
SE_KEYS = ("gate_layer", "act_layer", "rd_round")


def _check_act(f: Field) -> str:
    name = f.expect(str, "an activation name")
    try:
        get_act_layer(name)
    except Exception:
        raise f.error(f"unknown activation {name!r}; expected a timm activation name such as 'swish', "
                      "'relu', 'relu6', 'hard_swish'") from None
    return name


def validate_arch(f: Field) -> dict:
    arch = f.mapping(required=("model", "block_args", "stem_size", "num_features", "act_layer"),
                     allowed=ARCH_KEYS)
    f.child("model").choice(MODELS)
    stages = f.child("block_args")
    stages.expect(list, "a list of stages, each a list of timm block strings")
    if not stages.value:
        raise stages.error("expected at least one stage")
    for i, stage in enumerate(stages.value):
        sf = stages.child(i)
        sf.expect(list, "a list of timm block strings")
        if not stage:
            raise sf.error("a stage needs at least one block string")
        for j, block in enumerate(stage):
            bf = sf.child(j)
            bf.expect(str, "a timm block string such as 'ir_r1_k3_s2_e6_c24_se0.25'")
            try:
                _decode_block_str(block)
            except Exception as e:  # timm raises assorted errors for malformed strings
                raise bf.error(f"not a valid timm block string ({type(e).__name__}: {e}); "
                               "expected e.g. 'ir_r1_k3_s2_e6_c24_se0.25'") from None
    f.child("stem_size").integer(low=1)
    f.child("num_features").integer(low=0)
    _check_act(f.child("act_layer"))
    if "bn_eps" in arch:
        arch["bn_eps"] = f.child("bn_eps").number(low=0, high=1)
    for key in ("channel_multiplier", "depth_multiplier"):
        if key in arch:
            arch[key] = f.child(key).number(low=1e-3, high=100)
    for key in ("drop_rate", "drop_path_rate"):
        if key in arch:
            arch[key] = f.child(key).number(low=0, high=1)
    for key in ("se_from_exp", "head_bias", "fix_stem"):
        if key in arch:
            f.child(key).expect(bool)
    if arch["model"] != "mobilenetv3":
        for key in ("se_from_exp", "head_bias"):
            if key in arch:
                raise f.child(key).error("only valid with model: mobilenetv3")
    if "pad_type" in arch:
        f.child("pad_type").choice(["", "same", "valid"])
    if "se_layer" in arch:
        se = f.child("se_layer")
        arch["se_layer"] = se.mapping(allowed=SE_KEYS)
        if "gate_layer" in se.value:
            _check_act(se.child("gate_layer"))
        if se.value.get("act_layer") is not None:
            _check_act(se.child("act_layer"))
        if "rd_round" in se.value:
            se.child("rd_round").expect(bool)
    return arch


def model_kwargs(arch: dict) -> dict:
    """timm constructor kwargs for an arch mapping (without block decoding side effects on `arch`)."""
    kwargs = dict(
        block_args=decode_arch_def(arch["block_args"], arch.get("depth_multiplier", 1.0)),
        stem_size=arch["stem_size"],
        num_features=arch["num_features"],
        act_layer=get_act_layer(arch["act_layer"]),
        norm_layer=partial(nn.BatchNorm2d, eps=arch.get("bn_eps", 1e-5)),
        round_chs_fn=partial(round_channels, multiplier=arch.get("channel_multiplier", 1.0)),
        pad_type=arch.get("pad_type", ""),
        fix_stem=arch.get("fix_stem", False),
        drop_rate=arch.get("drop_rate", 0.0),
        drop_path_rate=arch.get("drop_path_rate", 0.0),
    )
    if "se_layer" in arch:
        se = arch["se_layer"]
        se_kwargs = {}
        if "gate_layer" in se:
            se_kwargs["gate_layer"] = se["gate_layer"]
        if se.get("act_layer"):
            se_kwargs["force_act_layer"] = get_act_layer(se["act_layer"])
        if se.get("rd_round"):
            se_kwargs["rd_round_fn"] = round_channels
        kwargs["se_layer"] = partial(SqueezeExcite, **se_kwargs)
    if arch["model"] == "mobilenetv3":
        kwargs["se_from_exp"] = arch.get("se_from_exp", True)
        kwargs["head_bias"] = arch.get("head_bias", True)
    return kwargs


def block_builder(arch: dict, device=None) -> EfficientNetBuilder:
    """The EfficientNetBuilder that timm's EfficientNet / MobileNetV3 constructor makes for `arch`: the one builder
    of every block of this family (zoo models, search supernets, cost tables). Drop path is left to the caller."""
    kw = model_kwargs(arch)
    extra = {"se_from_exp": kw["se_from_exp"]} if arch["model"] == "mobilenetv3" else {}
    return EfficientNetBuilder(output_stride=32, pad_type=kw["pad_type"], round_chs_fn=kw["round_chs_fn"],
                               act_layer=kw["act_layer"], norm_layer=kw["norm_layer"],
                               se_layer=kw.get("se_layer", SqueezeExcite), device=device, **extra)


def build_block(arch: dict, block_string: str, in_chs: int, device=None) -> nn.Module:
    """One block of `arch`'s family settings from its timm block string."""
    args, repeats = _decode_block_str(block_string)
    if repeats != 1:
        raise ValueError(f"one block is wanted; {block_string!r} repeats it {repeats} times (use _r1_)")
    return block_builder(arch, device=device)(in_chs, [[args]])[0][0]


def build(entry, pretrained: bool = False, **kwargs) -> nn.Module:
    model_args = model_kwargs(entry.arch)
    model_args.update(kwargs)  # caller wins (num_classes, drop_rate, in_chans, features_only ...)
    create = _create_mnv3 if entry.arch["model"] == "mobilenetv3" else _create_effnet
    return create(entry.name, pretrained=pretrained, **model_args)


def describe(arch: dict) -> str:
    depths = []
    for stage in arch["block_args"]:
        depths.append(sum(_decode_block_str(b)[1] for b in stage))
    return "depths " + "-".join(str(d) for d in depths)


FAMILY = register_family(Family(name="efficientnet", validate_arch=validate_arch, build=build, describe=describe,
                                cfg_defaults={"first_conv": "conv_stem", "classifier": "classifier"},
                                # DenseNAS-A/B/C/Large: official MBV2_Net checkpoints (checkpoint_layout: densenas)
                                checkpoint_layouts={"densenas": mbv2_official_to_timm}))
