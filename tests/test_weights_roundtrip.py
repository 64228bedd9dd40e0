"""Weights that last: official checkpoint -> `nas-zoo convert` -> hub layout (a hand-seeded HF cache, offline)
-> timm.create_model(..., pretrained=True) gives exactly the logits of the official file loaded directly.

Every registered model with an official-checkpoint maker (tests/reference.py OFFICIAL_CHECKPOINTS) gets the fast
check; a representative subset gets the full round trip (CLI, in_chans / num_classes / features_only, hf-hub:,
local-dir:, revision pins, cache_dir, torch.hub).
"""
import json
from pathlib import Path

import pytest
import timm
import torch

import nas_zoo
from hf_cache import offline_hub, seed_hf_cache  # noqa: F401  (fixture)
from nas_zoo.cli import main as cli
from nas_zoo.hub import convert_checkpoint
from reference import OFFICIAL_CHECKPOINTS, write_official_checkpoint

REPO_DIR = Path(__file__).resolve().parents[1]
ALL = sorted(n for n in OFFICIAL_CHECKPOINTS if n in {e.name for e in nas_zoo.list_entries()})
FULL = ["dna_a", "cream_14", "cdarts_b", "spos_retrain240"]  # both classes of the EfficientNet family + SPOS


def hub_id(name):
    entry = nas_zoo.get_entry(name)
    return entry.pretrained[entry.default_tag]["hf_hub_id"]


def probe(name, batch=2, channels=3, size=None):
    cfg = nas_zoo.get_entry(name).pretrained[nas_zoo.get_entry(name).default_tag]
    size = size or cfg["input_size"][-1]
    return torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))


def logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def official(name, path, **kwargs):
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


def test_every_builtin_model_has_an_official_checkpoint_maker():
    """The fast check below covers the whole zoo: a family adding built-in models with weights adds their makers
    (architecture-only entries, such as the DARTS baseline genotypes, have no official checkpoint)."""
    from nas_zoo.registry import builtin_entry_dir
    entries = [nas_zoo.load_entry(p) for p in builtin_entry_dir().glob("*.yaml")]
    names = {e.name for e in entries if any(cfg.get("hf_hub_id") for cfg in e.pretrained.values())}
    missing = sorted(names - set(ALL))
    assert names and not missing, f"add official-checkpoint makers to tests/reference.py for {missing}"


@pytest.mark.parametrize("name", ALL)
def test_hub_weights_give_the_official_logits(name, tmp_path, offline_hub):
    ckpt = write_official_checkpoint(name, tmp_path)
    report = convert_checkpoint(name, ckpt, tmp_path / "out")
    assert report.max_abs_diff == 0.0
    seed_hf_cache(offline_hub, hub_id(name), tmp_path / "out")
    x = probe(name, batch=1)
    assert torch.equal(logits(timm.create_model(name, pretrained=True), x), logits(official(name, ckpt), x))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (official checkpoint, converted folder), made through the CLI."""
    root = tmp_path_factory.mktemp("converted")
    out = {}
    for name in FULL:
        ckpt = write_official_checkpoint(name, root)
        folder = root / f"{name}-hub"
        assert cli(["convert", name, str(ckpt), "--out", str(folder)]) == 0
        out[name] = (ckpt, folder)
    return out


@pytest.mark.parametrize("name", FULL)
def test_converted_folder_layout(name, converted):
    ckpt, folder = converted[name]
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    entry = nas_zoo.get_entry(name)
    assert config["architecture"] == f"nas_zoo_{entry.family}"
    assert config["num_classes"] == 1000 and config["num_features"] > 0
    carried = config["model_args"]["nas_zoo_entry"]
    assert carried["name"] == name and carried["arch"] == entry.arch
    assert carried["pretrained"][entry.default_tag]["hf_hub_id"] == hub_id(name)
    assert config["pretrained_cfg"]["input_size"] == entry.pretrained[entry.default_tag]["input_size"]
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: timm\n")
    assert f"arxiv.org/abs/{entry.paper['arxiv']}" in card and "imagenet-1k" in card
    assert f"{entry.paper['top1']:.2f}" in card  # the paper's top-1 in the results table


@pytest.mark.parametrize("name", FULL)
@pytest.mark.parametrize("kwargs, channels", [({}, 3), (dict(in_chans=1), 1), (dict(num_classes=10), 3),
                                              (dict(features_only=True), 3)])
def test_round_trip_by_name(name, kwargs, channels, converted, offline_hub):
    ckpt, folder = converted[name]
    seed_hf_cache(offline_hub, hub_id(name), folder)
    x = probe(name, channels=channels)
    got = logits(timm.create_model(name, pretrained=True, **kwargs), x)
    want = logits(official(name, ckpt, **kwargs), x)
    if kwargs.get("features_only"):
        assert len(got) == len(want) >= 4 and all(torch.equal(g, w) for g, w in zip(got, want))
    elif kwargs.get("num_classes"):
        # a new head is freshly initialised; everything before it comes from the weights
        assert got.shape == want.shape == (2, 10)
        feats = [timm.create_model(name, pretrained=True, num_classes=0), official(name, ckpt, num_classes=0)]
        assert torch.equal(logits(feats[0], x), logits(feats[1], x))
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", FULL)
def test_round_trip_through_hf_hub_name(name, converted, offline_hub):
    """timm.create_model('hf-hub:ORG/NAME') reads config.json and model.safetensors from the (offline) cache."""
    ckpt, folder = converted[name]
    seed_hf_cache(offline_hub, hub_id(name), folder)
    x = probe(name)
    model = timm.create_model(f"hf-hub:{hub_id(name)}", pretrained=True)
    assert torch.equal(logits(model, x), logits(official(name, ckpt), x))
    assert model.pretrained_cfg["architecture"] == name
    small = timm.create_model(f"hf-hub:{hub_id(name)}", pretrained=True, in_chans=1, num_classes=10)
    assert logits(small, probe(name, channels=1)).shape == (2, 10)


def test_local_dir_and_folder_file(converted):
    ckpt, folder = converted["cream_14"]
    x = probe("cream_14")
    want = logits(official("cream_14", ckpt), x)
    assert torch.equal(logits(timm.create_model(f"local-dir:{folder}", pretrained=True), x), want)
    assert torch.equal(logits(official("cream_14", folder), x), want)  # file=<folder> takes its safetensors


def test_revision_pin_and_cache_dir(converted, tmp_path, offline_hub):
    """Two commits in the cache: main points at the newer; '@<commit>' pins the older one; cache_dir= works
    where HF_HUB_CACHE does not point."""
    ckpt, folder = converted["dna_a"]
    older = seed_hf_cache(offline_hub, hub_id("dna_a"), folder)
    from safetensors.torch import load_file, save_file
    newer_dir = tmp_path / "newer"
    newer_dir.mkdir()
    for f in ("config.json", "README.md"):
        (newer_dir / f).write_bytes((folder / f).read_bytes())
    sd = load_file(str(folder / "model.safetensors"))
    sd["classifier.bias"] = sd["classifier.bias"] + 1.0
    save_file(sd, str(newer_dir / "model.safetensors"))
    newer = seed_hf_cache(offline_hub, hub_id("dna_a"), newer_dir)
    assert newer != older
    x = probe("dna_a")
    want = logits(official("dna_a", ckpt), x)
    main = logits(timm.create_model("dna_a", pretrained=True), x)
    assert torch.allclose(main, want + 1.0, atol=1e-5)
    pinned = timm.create_model("dna_a", pretrained=True,
                               pretrained_cfg_overlay=dict(hf_hub_id=f"{hub_id('dna_a')}@{older}"))
    assert torch.equal(logits(pinned, x), want)
    assert torch.equal(logits(timm.create_model(f"hf-hub:{hub_id('dna_a')}@{older}", pretrained=True), x), want)

    other_cache = tmp_path / "other-cache"
    seed_hf_cache(other_cache, hub_id("dna_a"), folder)
    import shutil
    shutil.rmtree(offline_hub / ("models--" + hub_id("dna_a").replace("/", "--")))
    with pytest.raises(nas_zoo.WeightsNotFoundError):
        timm.create_model("dna_a", pretrained=True)
    model = timm.create_model("dna_a", pretrained=True, cache_dir=str(other_cache))
    assert torch.equal(logits(model, x), want)


def test_unregistered_searched_model_loads_from_config_alone(tmp_path, offline_hub):
    """A searched architecture that a fresh interpreter never registered: hf-hub:ORG/NAME builds it from
    config.json alone (and registers it, so the name works afterwards)."""
    import subprocess
    import sys

    from reference import Fixture, official_dna_checkpoint

    entry = nas_zoo.get_entry("dna_b").to_dict()
    entry["name"] = "searched_net_rt"
    entry["pretrained"]["in1k"]["hf_hub_id"] = "alice/searched_net_rt.in1k"
    source = tmp_path / "searched_net_rt.yaml"
    nas_zoo.load_entry(entry).save(source)
    ckpt = tmp_path / "ckpt.pth.tar"
    torch.save(official_dna_checkpoint(Fixture("dna", "dna_b").state_dict()), ckpt)
    assert cli(["convert", str(source), str(ckpt), "--out", str(tmp_path / "out")]) == 0
    seed_hf_cache(offline_hub, "alice/searched_net_rt.in1k", tmp_path / "out")
    x = probe("dna_b")
    torch.save(x, tmp_path / "x.pt")
    code = (
        "import sys, torch, timm, nas_zoo\n"
        "assert not timm.is_model('searched_net_rt')\n"
        "m = timm.create_model('hf-hub:alice/searched_net_rt.in1k', pretrained=True).eval()\n"
        "again = timm.create_model('searched_net_rt', pretrained=True).eval()\n"
        "x = torch.load(sys.argv[1])\n"
        "with torch.no_grad():\n"
        "    torch.save([m(x), again(x)], sys.argv[2])\n")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(offline_hub),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    by_hub, by_name = torch.load(tmp_path / "y.pt")
    want = logits(official("dna_b", ckpt), x)
    assert torch.allclose(by_hub, want, rtol=0, atol=1e-6) and torch.equal(by_hub, by_name)


def test_torch_hub_local(converted, offline_hub):
    ckpt, folder = converted["dna_a"]
    seed_hf_cache(offline_hub, hub_id("dna_a"), folder)
    x = probe("dna_a")
    plain = torch.hub.load(str(REPO_DIR), "dna_a", source="local", pretrained=False)
    assert type(plain).__name__ == "EfficientNet" and logits(plain, x).shape == (2, 1000)
    model = torch.hub.load(str(REPO_DIR), "dna_a", source="local", pretrained=True)
    assert torch.equal(logits(model, x), logits(official("dna_a", ckpt), x))
    ten = torch.hub.load(str(REPO_DIR), "cream_14", source="local", pretrained=False, num_classes=10)
    assert logits(ten, probe("cream_14")).shape == (2, 10)
