"""shufflenet_spos entries: malformed architectures give one EntryError naming the field."""
import copy

import pytest
import torch

import nas_zoo
from nas_zoo.families.shufflenet_spos import OPS, ShuffleChoiceBlock, channel_split

GOOD = {
    "name": "spos_entry_check",
    "family": "shufflenet_spos",
    "arch": {
        "choices": [0, 1, 2, 3] * 5,
        "stage_repeats": [4, 4, 8, 4],
        "stage_out_channels": [64, 160, 320, 640],
        "stem_size": 16,
        "num_features": 1024,
        "bn_eps": 1e-5,
    },
}


def _with(path, value):
    data = copy.deepcopy(GOOD)
    *parents, last = path
    target = data["arch"]
    for key in parents:
        target = target[key]
    if value is _with:
        del target[last]
    else:
        target[last] = value
    return data


DELETE = _with


@pytest.mark.parametrize("path, value, field, problem", [
    (["choices"], [0] * 19, "arch.choices", r"one op index per layer: 20 \(sum of stage_repeats \[4, 4, 8, 4\]\), got 19"),
    (["choices", 7], 4, "arch.choices[7]", r"op index in 0..3 .*3=xception_3x3.*got 4"),
    (["choices", 0], -1, "arch.choices[0]", r"op index in 0..3"),
    (["choices", 2], "1", "arch.choices[2]", r"expected an integer, got str"),
    (["choices", 2], True, "arch.choices[2]", r"expected an integer, got bool"),
    (["choices"], "0003", "arch.choices", r"expected a list of integers"),
    (["choices"], DELETE, "arch.choices", r"missing \(required\)"),
    (["stage_repeats"], [], "arch.stage_repeats", r"at least one stage"),
    (["stage_repeats", 1], 0, "arch.stage_repeats[1]", r"integer >= 1"),
    (["stage_out_channels"], [64, 160, 320], "arch.stage_out_channels", r"list of 4 integers, got 3"),
    (["stage_out_channels", 2], 321, "arch.stage_out_channels[2]", r"even number of channels"),
    (["stage_out_channels", 1], 64, "arch.stage_out_channels[1]", r"more channels than the stage input \(64\)"),
    (["stem_size"], 0, "arch.stem_size", r"integer >= 1"),
    (["num_features"], 1.5, "arch.num_features", r"expected an integer"),
    (["bn_eps"], DELETE, "arch.bn_eps", r"missing \(required\)"),
    (["bn_eps"], 0, "arch.bn_eps", r"number in"),
    (["drop_rate"], 1.0, "arch.drop_rate", r"\[0, 1\)"),
    (["ops"], list(OPS), "arch.ops", r"unknown field"),
])
def test_malformed_arch_names_the_field(path, value, field, problem):
    with pytest.raises(nas_zoo.EntryError, match=problem) as err:
        nas_zoo.load_entry(_with(path, value), source="bad.yaml")
    assert err.value.field == field
    assert str(err.value).startswith(f"bad.yaml: field '{field}'")


def test_a_valid_entry_builds_and_describes():
    entry = nas_zoo.load_entry(GOOD)
    from nas_zoo.families import get_family
    assert get_family("shufflenet_spos").describe(entry.arch) == "choices 0123-0123-01230123-0123"
    model = get_family("shufflenet_spos").build(entry, pretrained=False)
    assert [blk.op for stage in model.stages for blk in stage] == [OPS[c] for c in GOOD["arch"]["choices"]]


def test_channel_split_is_the_official_reshape_trick():
    """DSNAS blocks.py channel_shuffle: reshape to (N*C/2, 2, HW), permute, reshape to (2, N, C/2, H, W)."""
    x = torch.randn(2, 8, 3, 5)
    n, c, h, w = x.shape
    y = x.reshape(n * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
    even, odd = channel_split(x)
    assert torch.equal(even, y[0]) and torch.equal(odd, y[1])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("stride", [1, 2])
def test_choice_block_shapes(op, stride):
    block = ShuffleChoiceBlock(64 if stride == 1 else 32, 64, stride, op).eval()
    out = block(torch.randn(2, 64 if stride == 1 else 32, 8, 8))
    assert out.shape == (2, 64, 8 // stride, 8 // stride)


def test_choice_block_refuses_unknown_op():
    with pytest.raises(ValueError, match="unknown choice op 'shufflenet_9x9'"):
        ShuffleChoiceBlock(64, 64, 1, "shufflenet_9x9")
