"""The shufflenet_spos zoo models (DSNAS / SPOS) against the official code's logits (tests/fixtures/dsnas).

Checkpoints are written as the official training code saved them (devkit/core/utils.py save_checkpoint:
``{'epoch', 'model': 'singlepath', 'state_dict', 'best_prec1', 'optimizer'}``, no ``module.`` prefix) and loaded
through the public path: timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...)).
"""
import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import nas_zoo
from nas_zoo.cost import count_macs, count_params
from nas_zoo.families import shufflenet_spos
from reference import Fixture, synth_input, synth_tensor

MODELS = ["dsnas_search240", "dsnas_retrain240", "spos_retrain240"]


def official_dsnas_checkpoint(sd):
    """As DSNAS devkit/core/utils.py save_checkpoint() wrote it."""
    return {"epoch": 240, "model": "singlepath", "state_dict": sd, "best_prec1": 74.4,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "momentum": 0.9, "params": [0, 1]}]}}


def write_official(sd, path):
    torch.save(official_dsnas_checkpoint(sd), path)
    return str(path)


def logits_of(name, path, **kwargs):
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()
    with torch.no_grad():
        return model(synth_input(2, 224, 224, seed=0))


def supernet_state_dict(selected, bn_stats_fixture):
    """The official supernet's keys (all four ops per layer) with synthetic weights; log_alpha selects `selected`.

    Synthetic tensors depend only on the key, so the selected path holds exactly the child fixture's tensors.
    """
    supernet = Fixture("dsnas", "supernet_reference")
    sd = {k: torch.from_numpy(synth_tensor(k, s, d)) for k, s, d in supernet.keys}
    stats = np.load(bn_stats_fixture.dir / "bn_stats.npz")
    for k in stats.files:
        sd[k] = torch.from_numpy(stats[k])
    sd["log_alpha"] = F.one_hot(torch.tensor(selected), 4).float() + 0.01 * sd["log_alpha"]
    return sd


@pytest.mark.parametrize("name", MODELS)
def test_official_checkpoint_gives_official_logits(name, tmp_path):
    fx = Fixture("dsnas", name)
    sd = fx.state_dict()
    # a child file's log_alpha is a random tensor (retrain runs save one); it must neither matter nor be checked
    assert sd["log_alpha"].argmax(-1).tolist() != fx.facts["arch"]
    out = logits_of(name, write_official(sd, tmp_path / f"{fx.facts['official_name']}.pth"))
    diff = (out - fx.logits()).abs().max().item()
    assert diff <= fx.facts["atol"], f"{name}: max |diff| {diff:.2e} > {fx.facts['atol']}"


@pytest.mark.parametrize("name", MODELS)
def test_entry_matches_the_official_config(name):
    fx = Fixture("dsnas", name)
    arch = nas_zoo.get_entry(name).arch
    assert arch["choices"] == fx.facts["arch"]
    assert arch["bn_eps"] == fx.facts["bn_eps"]


@pytest.mark.parametrize("name", MODELS)
def test_params_equal_official_count(name):
    facts = Fixture("dsnas", name).facts
    # the official eval model also registers the unused 20x4 arch parameter log_alpha; the weights are the rest
    assert count_params(timm.create_model(name)) == facts["num_params"] - facts["log_alpha_numel"]


@pytest.mark.parametrize("name", MODELS)
def test_macs_equal_reference_conv_linear_count(name):
    for size, macs in Fixture("dsnas", name).facts["macs_conv_linear"].items():
        assert count_macs(timm.create_model(name), (3, int(size), int(size))) == macs


def test_supernet_checkpoint_of_an_entry_gives_the_child_logits(tmp_path):
    """A whole-supernet file whose argmax(log_alpha) is the entry's architecture loads to the child's logits."""
    fx = Fixture("dsnas", "dsnas_search240")
    sd = supernet_state_dict(fx.facts["arch"], fx)
    assert len(sd) == Fixture("dsnas", "supernet_reference").facts["n_state_keys"]
    out = logits_of("dsnas_search240", write_official(sd, tmp_path / "supernet.pth-80"))
    assert (out - fx.logits()).abs().max().item() <= fx.facts["atol"]


def test_official_supernet_reference_logits(tmp_path):
    """The official supernet's own argmax child (gen_max_child_flag), as an architecture-only entry."""
    ref = Fixture("dsnas", "supernet_reference")
    sd = {k: torch.from_numpy(synth_tensor(k, s, d)) for k, s, d in ref.keys}
    stats = np.load(ref.dir / "bn_stats.npz")
    for k in stats.files:
        sd[k] = torch.from_numpy(stats[k])
    assert sd["log_alpha"].argmax(-1).tolist() == ref.facts["argmax_arch"]
    entry = nas_zoo.get_entry("dsnas_search240").to_dict()
    entry.update(name="dsnas_supernet_reference_child", pretrained={})
    entry["arch"]["choices"] = ref.facts["argmax_arch"]
    name = nas_zoo.register_entry(entry)
    out = logits_of(name, write_official(sd, tmp_path / "model.pth-80"))
    diff = (out - ref.logits()).abs().max().item()
    assert diff <= ref.facts["atol"], f"max |diff| {diff:.2e}"


def test_child_checkpoint_with_other_choices_is_refused(tmp_path):
    path = write_official(Fixture("dsnas", "spos_retrain240").state_dict(), tmp_path / "SPOSretrain240.pth")
    with pytest.raises(nas_zoo.CheckpointError) as err:
        timm.create_model("dsnas_retrain240", pretrained=True, pretrained_cfg_overlay=dict(file=path))
    msg = str(err.value)
    assert msg.startswith(path)
    assert "child checkpoint's keys" in msg and "model 'dsnas_retrain240'" in msg
    assert "layer 1: checkpoint 1 (shufflenet_5x5), entry 0 (shufflenet_3x3)" in msg


def test_supernet_checkpoint_selecting_other_choices_is_refused(tmp_path):
    fx = Fixture("dsnas", "dsnas_search240")
    spos = Fixture("dsnas", "spos_retrain240").facts["arch"]
    path = write_official(supernet_state_dict(spos, fx), tmp_path / "supernet.pth")
    with pytest.raises(nas_zoo.CheckpointError, match=r"argmax\(log_alpha\).*disagrees.*layer 1: checkpoint 1 "
                                                      r"\(shufflenet_5x5\), entry 0 \(shufflenet_3x3\)"):
        timm.create_model("dsnas_search240", pretrained=True, pretrained_cfg_overlay=dict(file=path))


@pytest.mark.parametrize("mistake, message", [
    ("no_log_alpha", r"several ops for layer 0 .*no 'log_alpha'"),
    ("log_alpha_shape", r"'log_alpha' has shape \(20, 3\), expected \(20, 4\)"),
])
def test_supernet_checkpoint_without_a_usable_selection_is_refused(mistake, message, tmp_path):
    fx = Fixture("dsnas", "dsnas_search240")
    sd = supernet_state_dict(fx.facts["arch"], fx)
    if mistake == "no_log_alpha":
        del sd["log_alpha"]
    else:
        sd["log_alpha"] = sd["log_alpha"][:, :3]
    path = write_official(sd, tmp_path / "supernet.pth")
    with pytest.raises(nas_zoo.CheckpointError, match=message):
        timm.create_model("dsnas_search240", pretrained=True, pretrained_cfg_overlay=dict(file=path))


def test_incomplete_child_checkpoint_names_the_missing_keys(tmp_path):
    sd = Fixture("dsnas", "spos_retrain240").state_dict()
    for key in [k for k in sd if k.startswith("features.7.")]:
        del sd[key]
    path = write_official(sd, tmp_path / "ck.pth")
    with pytest.raises(nas_zoo.CheckpointError, match=r"missing keys: stages\.1\.3\.branch_main\.0\.conv\.weight"):
        timm.create_model("spos_retrain240", pretrained=True, pretrained_cfg_overlay=dict(file=path))


@pytest.mark.parametrize("mistake", ["bn_eps", "channel_split"])
def test_a_broken_variant_fails_the_same_comparison(mistake, tmp_path, monkeypatch):
    """The comparison bites: the same weights in a subtly wrong model miss the reference."""
    name = "dsnas_search240"
    fx = Fixture("dsnas", name)
    path = write_official(fx.state_dict(), tmp_path / "ck.pth")
    if mistake == "bn_eps":  # the retrain runs' eps on the search run's weights
        entry = nas_zoo.get_entry(name).to_dict()
        entry["name"] = "broken_dsnas_search240_bn_eps"
        entry["arch"]["bn_eps"] = 1e-5
        name = nas_zoo.register_entry(entry)
    else:  # contiguous halves instead of the official even/odd channel split
        monkeypatch.setattr(shufflenet_spos, "channel_split", lambda x: x.chunk(2, dim=1))
    diff = (logits_of(name, path) - fx.logits()).abs().max().item()
    assert diff > fx.facts["atol"], f"the broken variant passed ({diff:.2e})"


def test_our_layout_and_other_heads(tmp_path):
    """A converted file (our keys, safetensors) loads as is; a new head or channel count adapts as in timm."""
    from safetensors.torch import save_file
    fx = Fixture("dsnas", "spos_retrain240")
    official = write_official(fx.state_dict(), tmp_path / "ck.pth")
    model = timm.create_model("spos_retrain240", pretrained=True, pretrained_cfg_overlay=dict(file=official))
    ours = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ours))
    assert (logits_of("spos_retrain240", ours) - fx.logits()).abs().max().item() <= fx.facts["atol"]
    small = timm.create_model("spos_retrain240", pretrained=True, pretrained_cfg_overlay=dict(file=official),
                              num_classes=10, in_chans=1)
    assert small(torch.randn(2, 1, 64, 64)).shape == (2, 10)
    assert torch.equal(small.stages[2][3].branch_main[0].conv.weight, model.stages[2][3].branch_main[0].conv.weight)
