"""The darts_cell models against the official CDARTS code's logits (tests/fixtures/cdarts), through the public
official-checkpoint path: synthetic weights saved as CDARTS retrain.py saves them, loaded with
timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...)).

The cell networks amplify float32 rounding (see the fixture README), so every fixture is compared twice: in float64
against the float64 reference at 1e-8, and in float32 at the recommended 5e-3."""
import json
from collections import OrderedDict

import numpy as np
import pytest
import timm
import torch

import nas_zoo
from nas_zoo.cost import count_macs, count_params
from nas_zoo.genotype import genotype_from_data, parse_genotype
from reference import FIXTURES, Fixture, official_cdarts_cell_checkpoint, synth_input

FIXTURE_NAMES = sorted(p.name for p in (FIXTURES / "cdarts").iterdir() if p.is_dir() and p.name != "search_step")
ENTRY_FIXTURES = [n for n in FIXTURE_NAMES if Fixture("cdarts", n).facts["entry"]]


def test_every_fixture_folder_is_tested():
    assert FIXTURE_NAMES == ["cdarts_cifar", "cdarts_cifar_arxiv_v1", "cdarts_cifar_feb2020", "cdarts_imagenet",
                             "cdarts_imagenet_arxiv_v1"]


checkpoint_pth_tar = official_cdarts_cell_checkpoint


def retrain_resume(sd):
    """CDARTS retrain.py resume file (retrain_resume.pth.tar, ImageNet epoch_*.pth.tar)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.025, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 600)
    return {"model_main": OrderedDict(sd), "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
            "best_top1": 97.5, "best_top5": 99.9, "sta_epoch": 599}


def model_name(fx, tmp_path):
    """The entry of a fixture; the fixture without an entry is registered from its cells file by the CLI."""
    if fx.facts["entry"]:
        return fx.facts["entry"]
    from nas_zoo.cli import main
    name = f"reg_{fx.name}"
    if any(e.name == name for e in nas_zoo.list_entries()):
        return name
    out = tmp_path / "entries"
    cells_file = next(fx.dir.glob("*_genotype.json"))
    assert main(["register-genotype", str(cells_file), "--name", name, "--dataset", "cifar10", "--out", str(out)]) == 0
    nas_zoo.register_directory(out)
    return name


def load_official(fx, tmp_path, wrap=checkpoint_pth_tar, **kwargs):
    name = model_name(fx, tmp_path)
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(wrap(fx.state_dict()), path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    return model.eval()


def native_input(fx, dtype=torch.float32):
    size = 32 if fx.facts["layout"] == "cifar" else 224
    return synth_input(2, size, size, seed=0).to(dtype), f"logits_{size}"


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_official_checkpoint_gives_official_logits(name, tmp_path):
    fx = Fixture("cdarts", name)
    model = load_official(fx, tmp_path)
    x, stem = native_input(fx)
    with torch.no_grad():
        diff32 = (model(x) - fx.logits(stem)).abs().max().item()
        model.double()
        diff64 = (model(x.double()) - fx.logits(stem + "_f64")).abs().max().item()
    assert diff64 <= fx.facts["atol_f64"], f"{name} float64: max |diff| {diff64:.2e}"
    assert diff32 <= fx.facts["atol"], f"{name} float32: max |diff| {diff32:.2e}"


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_params_and_macs_equal_official_counts(name, tmp_path):
    fx = Fixture("cdarts", name)
    name = model_name(fx, tmp_path)
    with torch.device("meta"):
        model, with_aux = timm.create_model(name), timm.create_model(name, auxiliary=True)
    assert count_params(model) == fx.facts["num_params"]  # the official count (param_size): no aux head
    assert count_params(with_aux) == fx.facts["num_params_with_aux"]  # ModelAug, the checkpointed model
    for size, macs in fx.facts["macs_conv_linear"].items():
        assert count_macs(model, (3, int(size), int(size))) == macs


def test_resume_file_and_module_prefix_load_the_same(tmp_path):
    fx = Fixture("cdarts", "cdarts_cifar")
    x, stem = native_input(fx)
    prefixed = lambda sd: OrderedDict(("module." + k, v) for k, v in sd.items())  # noqa: E731
    for wrap in (retrain_resume, prefixed):
        model = load_official(fx, tmp_path, wrap=wrap)
        with torch.no_grad():
            assert (model(x) - fx.logits(stem)).abs().max() <= fx.facts["atol"]


def test_our_layout_round_trips_through_safetensors(tmp_path):
    from safetensors.torch import save_file
    fx = Fixture("cdarts", "cdarts_cifar")
    model = load_official(fx, tmp_path)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    again = timm.create_model("cdarts_cifar", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x, _ = native_input(fx)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def broken_entry(base, mutate, tag):
    entry = nas_zoo.get_entry(base).to_dict()
    entry["name"] = f"broken_{base}_{tag}"
    mutate(entry["arch"]["genotype"])
    return nas_zoo.register_entry(entry, replace=True)


def test_a_swapped_pool_fails_the_logit_comparison(tmp_path):
    """max_pool_3x3 -> avg_pool_3x3 in one reduction-cell edge: same weights, different network."""
    fx = Fixture("cdarts", "cdarts_cifar")
    reduce = nas_zoo.get_entry("cdarts_cifar").arch["genotype"]["reduce"]
    assert reduce[0][1] == ["max_pool_3x3", 0]

    def swap(g):
        g["reduce"][0][1] = ["avg_pool_3x3", 0]
    name = broken_entry("cdarts_cifar", swap, "pool")
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint_pth_tar(fx.state_dict()), path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x, stem = native_input(fx)
    with torch.no_grad():
        diff = (model(x) - fx.logits(stem)).abs().max().item()
    assert diff > 20 * fx.facts["atol"], f"the broken variant passed ({diff:.2e})"


def test_a_swapped_conv_is_refused_by_the_key_check(tmp_path):
    """sep_conv_3x3 -> sep_conv_5x5 on the first normal-cell edge: the checkpoint no longer fits, one clear error."""
    fx = Fixture("cdarts", "cdarts_cifar")

    def swap(g):
        g["normal"][0][0] = ["sep_conv_5x5", 0]
    name = broken_entry("cdarts_cifar", swap, "conv")
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint_pth_tar(fx.state_dict()), path)
    with pytest.raises(nas_zoo.CheckpointError, match=rf"does not fit model '{name}'.*shape mismatches.*"
                                                      r"cells\.0\.ops\.0\.conv1\.conv_dw\.weight \(36, 1, 3, 3\) vs "
                                                      r"\(36, 1, 5, 5\)"):
        timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_a_checkpoint_of_another_genotype_is_refused(tmp_path):
    fx = Fixture("cdarts", "cdarts_cifar_arxiv_v1")
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(checkpoint_pth_tar(fx.state_dict()), path)
    with pytest.raises(nas_zoo.CheckpointError, match="does not fit model 'cdarts_cifar'"):
        timm.create_model("cdarts_cifar", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_pretrained_with_other_head_channels_and_aux(tmp_path):
    fx = Fixture("cdarts", "cdarts_cifar")
    model = load_official(fx, tmp_path, num_classes=5, in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 5)
    # with the auxiliary head: the main path is the checkpoint's, the aux head starts from its initialisation
    model = load_official(fx, tmp_path, auxiliary=True)
    sd = fx.state_dict()
    assert torch.equal(model.stem0[0].conv.weight, sd["feature_extractor.0.0.weight"])
    assert torch.equal(model.fc.weight, sd["fc.weight"])
    assert not torch.equal(model.aux_head.classifier.weight, sd["aux_head.classifier.weight"])
    x, stem = native_input(fx)
    with torch.no_grad():
        assert (model(x) - fx.logits(stem)).abs().max() <= fx.facts["atol"]
    model.train()
    logits, aux = model(x)
    assert logits.shape == aux.shape == (2, 10)


def test_facts_agree_with_the_entries():
    for name in ENTRY_FIXTURES:
        fx = Fixture("cdarts", name)
        entry = nas_zoo.get_entry(fx.facts["entry"])
        assert genotype_from_data(entry.arch["genotype"]) == parse_genotype(fx.facts["genotype"])
        assert entry.pretrained[entry.default_tag]["num_classes"] == fx.facts["num_classes"]
    official = json.loads((FIXTURES / "cdarts" / "genotypes_official.json").read_text())
    assert set(official) == {"cifar_genotype", "imagenet_genotype", "dartsv1_genotype", "dartsv2_genotype",
                             "pdarts_genotype", "pcdarts_cifar_genotype", "pcdarts_imagenet_genotype"}


def test_bn_stats_were_applied():
    """Guard against a fixture that silently lost its calibrated statistics (the comparisons would still run)."""
    fx = Fixture("cdarts", "cdarts_imagenet")
    sd = fx.state_dict()
    stats = np.load(fx.dir / "bn_stats.npz")
    key = "nas_layers.2.3.preproc1.net.2.running_var"
    assert torch.equal(sd[key], torch.from_numpy(stats[key]))


def test_missing_weights_say_where_to_get_them(monkeypatch, tmp_path):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import: no network try
    drive = r"drive\.google\.com/drive/folders/1CkFp24bEDq0wUp504BQ68jn5Vs069qox"
    with pytest.raises(nas_zoo.WeightsNotFoundError, match=rf"(?s)nas-zoo/cdarts_cifar\.cifar10.*{drive}"):
        timm.create_model("cdarts_cifar", pretrained=True, cache_dir=tmp_path)
