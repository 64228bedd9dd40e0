"""The EfficientNet-family zoo models against the official code's logits (tests/fixtures/{dna,cream})."""
import pytest
import timm
import torch

import nas_zoo  # noqa: F401  (registers the zoo)
from nas_zoo.cost import count_macs, count_params
from reference import (Fixture, official_cdarts_checkpoint, official_cream_checkpoint, official_dna_checkpoint,
                       synth_input)

DNA = ["dna_a", "dna_b", "dna_c", "dna_d"]
CREAM = ["cream_14", "cream_43", "cream_114", "cream_287", "cream_481", "cream_604"]
CDARTS = ["cdarts_a", "cdarts_b"]
WRAPPERS = {**{n: official_dna_checkpoint for n in DNA}, **{n: official_cream_checkpoint for n in CREAM},
            **{n: official_cdarts_checkpoint for n in CDARTS}}


def fixture_of(name):
    return Fixture("dna" if name.startswith("dna") else "cream", name)


def load_official(name, tmp_path, **kwargs):
    fx = fixture_of(name)
    path = tmp_path / f"{name}.pth.tar"
    torch.save(WRAPPERS[name](fx.state_dict()), path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    return model.eval(), fx


@pytest.mark.parametrize("name", DNA + CREAM + CDARTS)
def test_official_checkpoint_gives_official_logits(name, tmp_path):
    model, fx = load_official(name, tmp_path)
    for stem, x in fx.cases():
        with torch.no_grad():
            out = model(x)
        diff = (out - fx.logits(stem)).abs().max().item()
        assert diff <= fx.facts["atol"], f"{name} {stem}: max |diff| {diff:.2e} > {fx.facts['atol']}"


@pytest.mark.parametrize("name", DNA + CREAM + CDARTS)
def test_params_equal_official_count(name):
    model = timm.create_model(name)
    assert count_params(model) == fixture_of(name).facts["num_params"]


@pytest.mark.parametrize("name", DNA + CREAM + CDARTS)
def test_macs_equal_reference_conv_linear_count(name):
    for size, macs in fixture_of(name).facts["macs_conv_linear"].items():
        assert count_macs(timm.create_model(name), (3, int(size), int(size))) == macs


@pytest.mark.parametrize("name, mistake", [
    ("dna_a", "se_gate"), ("cream_14", "se_gate"), ("cdarts_a", "last_width"), ("cream_604", "head_bn_eps"),
])
def test_a_broken_variant_fails_the_same_comparison(name, mistake, tmp_path):
    """The comparison bites: the same weights in a subtly wrong architecture miss the reference."""
    entry = nas_zoo.get_entry(name).to_dict()
    entry["name"] = f"broken_{name}_{mistake}"
    arch = entry["arch"]
    if mistake == "se_gate":  # sigmoid <-> hard_sigmoid
        gate = arch.get("se_layer", {}).get("gate_layer", "sigmoid")
        arch["se_layer"] = {**arch.get("se_layer", {}), "gate_layer": "sigmoid" if gate != "sigmoid" else "hard_sigmoid"}
    elif mistake == "head_bn_eps":
        arch["bn_eps"] = 1e-3
    fx = fixture_of(name)
    sd = fx.state_dict()
    if mistake == "last_width":  # a 320-wide last conv, as Cream has, cannot take the 960-wide checkpoint
        arch["block_args"][-1] = ["cn_r1_k1_s1_c320_se0.25"]
        broken = nas_zoo.register_entry(entry)
        path = tmp_path / "ck.pth"
        torch.save(WRAPPERS[name](sd), path)
        with pytest.raises(nas_zoo.CheckpointError, match=r"does not fit model 'broken_cdarts_a_last_width'.*"
                                                            r"shape mismatches.*blocks\.6\.0\.conv\.weight"):
            timm.create_model(broken, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        return
    broken = nas_zoo.register_entry(entry)
    model = timm.create_model(broken).eval()
    model.load_state_dict(sd)
    stem, x = fx.cases()[0]
    with torch.no_grad():
        diff = (model(x) - fx.logits(stem)).abs().max().item()
    assert diff > fx.facts["atol"], f"the broken variant passed ({diff:.2e})"


def test_dna_takes_the_weights_the_official_eval_used(tmp_path):
    """DNA's validate.py evaluates 'state_dict', not the EMA copy; use_ema=True takes the EMA copy."""
    fx = fixture_of("dna_a")
    path = tmp_path / "ck.pth"
    torch.save(official_dna_checkpoint(fx.state_dict()), path)
    plain = timm.create_model("dna_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    ema = timm.create_model("dna_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), use_ema=True)
    key = "conv_stem.weight"
    assert torch.equal(plain.state_dict()[key], fx.state_dict()[key])
    assert torch.equal(ema.state_dict()[key], fx.state_dict()[key] + 1.0)


def test_cream_file_loads_without_yacs(tmp_path):
    """The official Cream pickle names yacs.config.CfgNode; loading must neither need yacs nor run its code."""
    import subprocess
    import sys
    fx = fixture_of("cream_14")
    path = tmp_path / "14.pth.tar"
    torch.save(official_cream_checkpoint(fx.state_dict()), path)
    code = ("import sys; sys.modules['yacs'] = None; sys.modules['yacs.config'] = None\n"
            "import timm, nas_zoo, torch\n"
            f"m = timm.create_model('cream_14', pretrained=True, pretrained_cfg_overlay=dict(file={str(path)!r}))\n"
            "print(float(m.conv_stem.weight.sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert abs(float(out.stdout) - float(fx.state_dict()["conv_stem.weight"].sum())) < 1e-4


def test_bare_state_dict_and_safetensors_in_our_layout(tmp_path):
    from safetensors.torch import save_file
    fx = fixture_of("cream_43")
    sd = fx.state_dict()
    bare, st = tmp_path / "bare.pth", tmp_path / "w.safetensors"
    torch.save({"module." + k: v for k, v in sd.items()}, bare)
    save_file(dict(sd), str(st))
    x = synth_input(2, 96, 96)
    outs = []
    for path in (bare, st):
        model = timm.create_model("cream_43", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
        with torch.no_grad():
            outs.append(model(x))
    ref = fx.logits("logits_native_96")
    for out in outs:
        assert (out - ref).abs().max() <= fx.facts["atol"]


def test_pretrained_with_other_head_and_channels(tmp_path):
    model, _ = load_official("dna_c", tmp_path, num_classes=10, in_chans=1)
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)
