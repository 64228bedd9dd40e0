"""What a new user meets first: entry folders that are run directories, early config checks, unreadable files,
unknown model names, offline weights, the zoo plot's panels and prices."""
import json
import subprocess
import sys

import pytest
import yaml

import nas_zoo
from nas_zoo.entry import EntryError

from search_helpers import REPO, cli, env, tiny_dna_config, write_config

FOUND_ARCH = {"model": "efficientnet", "stem_size": 8, "num_features": 64, "act_layer": "swish",
              "block_args": [["ds_r1_k3_s1_c8"], ["ir_r1_k3_s1_e6_c8"], ["ir_r1_k5_s2_e3_c16", "ir_r1_k3_s1_e6_c16"],
                             ["ir_r1_k3_s2_e6_c16"], ["ir_r1_k7_s1_e3_c24"], ["ir_r1_k3_s1_e6_c24"],
                             ["ir_r1_k3_s1_e3_c32"]]}


def fake_run_dir(path, name="new_user_found"):
    """The files a DNA run writes, entry.yaml beside resolved.yaml (itself YAML with a top-level `name`)."""
    path.mkdir(parents=True)
    (path / "potentials").mkdir()
    write_config(tiny_dna_config(name=name), path / "resolved.yaml")
    (path / "run.json").write_text(json.dumps({"command": "dna", "config": "dna.yaml", "overrides": []}))
    (path / "log.jsonl").write_text('{"event": "epoch", "loss": 1.0}\n')
    (path / "potentials" / "potential-0.yaml").write_text("loss: [1.0, 2.0]\n")
    entry = {"name": name, "family": "efficientnet", "arch": FOUND_ARCH, "pretrained": {},
             "provenance": {"method": "dna", "data": {"kind": "embedded", "image_size": 32, "classes": 4},
                            "cost": {"kind": "macs", "image_size": 32, "budget": 6.0}}}
    (path / "entry.yaml").write_text(yaml.safe_dump(entry, sort_keys=False))
    return path


def broken(path, name):
    path.write_text(yaml.safe_dump({"name": name, "family": "efficientnet", "arch": {**FOUND_ARCH, "stem_size": "8"}}))


def import_with_entries(directory, code):
    return subprocess.run([sys.executable, "-c", f"import nas_zoo, timm; {code}"], cwd=REPO,
                          env={**env(), "NAS_ZOO_ENTRIES": str(directory)}, capture_output=True, text=True)


# ---------------------------------------------------------------- 1. NAS_ZOO_ENTRIES=<run dir>
def test_a_run_directory_registers_its_entry_and_ignores_the_rest(tmp_path):
    run_dir = fake_run_dir(tmp_path / "run")
    out = import_with_entries(run_dir, "print(timm.create_model('new_user_found', num_classes=4).num_classes)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4"] and "Warning" not in out.stderr, out.stderr


def test_a_broken_entry_in_an_entries_directory_warns_once_and_is_skipped(tmp_path):
    run_dir = fake_run_dir(tmp_path / "run")
    broken(run_dir / "other.yaml", "broken_one")
    (run_dir / "notes.yaml").write_text("just: [some, notes]\n")
    (run_dir / "bad_syntax.yaml").write_text("name: [unclosed\n")
    out = import_with_entries(run_dir, "print(timm.is_model('new_user_found'), timm.is_model('broken_one'))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]
    warnings = [ln for ln in out.stderr.splitlines() if "EntryWarning" in ln]
    assert len(warnings) == 2, out.stderr  # the broken entry and the file that is not YAML; notes.yaml is silent
    assert any(f"{run_dir / 'other.yaml'}: field 'arch.stem_size'" in ln for ln in warnings), out.stderr
    assert any(f"{run_dir / 'bad_syntax.yaml'}: field '<file>': not valid YAML" in ln for ln in warnings)


def test_explicit_registration_still_raises(tmp_path):
    run_dir = fake_run_dir(tmp_path / "run", name="new_user_explicit")
    assert nas_zoo.register_directory(run_dir) == ["new_user_explicit"]  # resolved.yaml is no entry
    broken(run_dir / "other.yaml", "broken_two")
    with pytest.raises(EntryError, match="other.yaml: field 'arch.stem_size'"):
        nas_zoo.register_entry(run_dir / "other.yaml")
    with pytest.raises(EntryError, match="other.yaml: field 'arch.stem_size'"):
        nas_zoo.register_directory(run_dir)
    with pytest.raises(EntryError, match="resolved.yaml: field 'family': missing"):
        nas_zoo.register_entry(run_dir / "resolved.yaml")


@pytest.mark.slow
def test_the_documented_command_on_a_real_run_directory(tmp_path):
    """NAS_ZOO_ENTRIES=<run dir> as the demo prints it, on the directory a DNA search wrote."""
    run_dir = tmp_path / "run"
    config = write_config(tiny_dna_config(**{"teacher.train.epochs": 1, "distill.epochs": 1}), tmp_path / "dna.yaml")
    out = cli("dna", "--config", config, "--out", run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (run_dir / "resolved.yaml").is_file() and (run_dir / "entry.yaml").is_file()
    out = import_with_entries(run_dir, "print(timm.create_model('dna_test_found', num_classes=10).num_classes)")
    assert out.returncode == 0 and out.stdout.split() == ["10"], out.stderr
    assert "Warning" not in out.stderr, out.stderr


# ---------------------------------------------------------------- 4. every checkable config value, before training
def test_a_negative_distill_batch_size_fails_at_once_through_the_cli(tmp_path):
    config = write_config(tiny_dna_config(**{"distill.batch_size": -4, "teacher.train.epochs": 1}),
                          tmp_path / "dna.yaml")
    out = cli("dna", "--config", config, "--out", tmp_path / "run")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert str(config) in lines[0] and "distill.batch_size" in lines[0] and "expected a number >= 1" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before the teacher was built, let alone trained


@pytest.mark.parametrize("change, key, expected", [
    ({"distill.batch_size": 0}, "distill.batch_size", ">= 1"),
    ({"distill.epochs": 0}, "distill.epochs", ">= 1"),
    ({"distill.lr": [0.002, 0.005, -0.005, 0.005, 0.005, 0.002]}, "distill.lr[2]", "> 0"),
    ({"distill.weight_decay": -1e-4}, "distill.weight_decay", ">= 0"),
    ({"potential.batches": 0}, "potential.batches", ">= 1"),
    ({"potential.batch_size": -64}, "potential.batch_size", ">= 1"),
    ({"search.budget": "0 MMACs"}, "search.budget", "> 0"),
    ({"search.budget": "-5 MMACs"}, "search.budget", "> 0"),
    ({"teacher.train.epochs": -1}, "teacher.train.epochs", ">= 0"),
    ({"teacher.train.batch_size": 0}, "teacher.train.batch_size", ">= 1"),
    ({"teacher.train.lr": 0}, "teacher.train.lr", "> 0"),
    ({"teacher.train.label_smoothing": 1.5}, "teacher.train.label_smoothing", "in [0, 1]"),
    ({"export.drop_rate": -0.1}, "export.drop_rate", "in [0, 1]"),
    ({"engine.workers": -1}, "engine.workers", ">= 0"),
])
def test_out_of_range_values_name_file_and_key(tmp_path, capsys, change, key, expected):
    from nas_zoo.search.cli import main
    config = write_config(tiny_dna_config(**change), tmp_path / "bad.yaml")
    code = main(["dna", "--config", str(config), "--out", str(tmp_path / "run")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert f"{config}: key '{key}': expected a number {expected}" in lines[0], lines[0]
    assert not (tmp_path / "run").exists()


def test_the_shipped_configs_pass_the_checks():
    from nas_zoo.search.config import load_config
    from nas_zoo.search.methods import dna
    from nas_zoo.search.train import TRAIN_SCHEMA
    for name in ("dna_demo.yaml", "dna_imagenet.yaml"):
        cfg, source = load_config(REPO / "configs" / "search" / name, dna.SCHEMA)
        dna.check_config(cfg, source)
    for name in ("train_demo.yaml", "train_imagenet.yaml"):
        load_config(REPO / "configs" / "search" / name, TRAIN_SCHEMA)


# ---------------------------------------------------------------- 5. unreadable files, unknown names, offline weights
@pytest.fixture
def odd_files(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("epoch 3: loss 0.41\nepoch 4: loss 0.38\n")
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes((i * 7919 + 13) % 251 for i in range(4096)))  # fixed bytes of no format
    return text, noise


def test_a_text_file_is_not_a_checkpoint(odd_files):
    from nas_zoo.checkpoint import CheckpointError, read_checkpoint
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(odd_files[0])
    assert str(err.value) == f"not a checkpoint: {odd_files[0]} is a text file (it starts 'epoch 3: loss 0.41')"


def test_random_bytes_are_a_damaged_file_not_a_refused_object(odd_files):
    from nas_zoo.checkpoint import CheckpointError, read_checkpoint
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(odd_files[1])
    assert str(err.value).startswith(f"not a checkpoint: {odd_files[1]} is damaged")
    assert "refused" not in str(err.value) and "allow-list" not in str(err.value)


def test_a_truncated_checkpoint_is_damaged(tmp_path):
    import torch
    from nas_zoo.checkpoint import CheckpointError, read_checkpoint
    whole = tmp_path / "whole.pth"
    torch.save({"state_dict": {"w": torch.zeros(64)}}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(CheckpointError, match=r"not a checkpoint: .*cut.pth is a damaged or truncated PyTorch file"):
        read_checkpoint(cut)


def test_a_text_checkpoint_through_the_cli_and_create_model(odd_files, tmp_path, capsys):
    import timm
    from nas_zoo.checkpoint import CheckpointError
    from nas_zoo.cli import main
    assert main(["convert", "cream_14", str(odd_files[0]), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nas-zoo convert: error: not a checkpoint: "), lines
    with pytest.raises(CheckpointError, match="not a checkpoint: .* is a text file"):
        timm.create_model("cream_14", pretrained=True, pretrained_cfg_overlay=dict(file=str(odd_files[0])))


def test_benchmark_of_an_unknown_model_is_one_line(capsys):
    from nas_zoo.cli import main
    assert main(["benchmark", "dna_z", "--iters", "1", "--warmup", "0", "--device", "cpu"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "unknown model 'dna_z'" in lines[0] and "dna_a" not in captured.out, lines
    assert lines[0].startswith("nas-zoo benchmark: error: ")


@pytest.fixture
def no_network(monkeypatch):
    """Every way out of the process records the attempt and fails, as on a machine without network."""
    import socket

    import huggingface_hub
    calls = []

    def refuse(what):
        def fail(*args, **kwargs):
            calls.append(what)
            raise OSError(101, f"{what}: network is unreachable (test)")
        return fail

    for what in ("getaddrinfo", "create_connection"):
        monkeypatch.setattr(socket, what, refuse(what))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse("hf_hub_download"))
    return calls


def seeded_cache(tmp_path, monkeypatch, name="cream_14"):
    """A converted folder of `name` (random weights) as the HF cache holds it; the hub not offline."""
    from huggingface_hub import constants

    from hf_cache import seed_hf_cache
    from nas_zoo.hub import convert_checkpoint
    from reference import write_official_checkpoint
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    ckpt = write_official_checkpoint(name, tmp_path)
    convert_checkpoint(name, ckpt, tmp_path / "folder")
    entry = nas_zoo.get_entry(name)
    seed_hf_cache(cache, entry.pretrained[entry.default_tag]["hf_hub_id"], tmp_path / "folder")
    return cache


def test_cached_weights_load_without_any_network_call(tmp_path, monkeypatch, no_network):
    import timm
    seeded_cache(tmp_path, monkeypatch)  # HF_HUB_OFFLINE unset: the cache is still looked at first
    model = timm.create_model("cream_14", pretrained=True)
    assert model.num_classes == 1000 and no_network == []


def test_offline_without_cached_weights_fails_at_once(tmp_path, monkeypatch, no_network):
    import timm
    from huggingface_hub import constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(nas_zoo.WeightsNotFoundError, match="not in the local cache and HF_HUB_OFFLINE=1"):
        timm.create_model("cream_14", pretrained=True)
    assert no_network == []


def test_unreachable_hub_is_asked_once_without_retries(tmp_path, monkeypatch, no_network):
    import time as time_module

    import huggingface_hub
    import timm
    from huggingface_hub import constants
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    lookups, sleeps = [], []
    real_lookup = huggingface_hub.get_hf_file_metadata
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata",
                        lambda *a, **k: lookups.append(a) or real_lookup(*a, **k))
    monkeypatch.setattr(time_module, "sleep", sleeps.append)  # huggingface_hub's retries back off with sleep
    with pytest.raises(nas_zoo.WeightsNotFoundError, match="not in the local cache and the hub cannot be reached"):
        timm.create_model("cream_14", pretrained=True)
    assert len(lookups) == 1 and sleeps == [] and "hf_hub_download" not in no_network, (lookups, no_network)
    assert no_network  # the one lookup did try the network (and met the refusal)


# ---------------------------------------------------------------- 3. nas-zoo plot: panels per dataset, own prices
def test_plot_records_carry_dataset_and_own_resolution(tmp_path):
    from nas_zoo.commands.plot import collect, series
    from nas_zoo.cost import count_macs
    run_dir = fake_run_dir(tmp_path / "run", name="new_user_plotted")
    records = {r["name"]: r for r in collect([str(run_dir)], {"new_user_plotted": 61.0}, family="efficientnet")}
    found = records["new_user_plotted"]
    assert found["dataset"] == "embedded demo data, 4 classes" and found["res"] == 32 and found["user"]
    import timm
    import torch
    with torch.device("meta"):
        model = timm.create_model("new_user_plotted", num_classes=4)
    assert found["macs"] == count_macs(model, (3, 32, 32)) / 1e6  # not at 224 px, not with 1000 classes
    assert records["dna_a"]["dataset"] == "ImageNet-1k" and records["dna_a"]["res"] == 224
    assert records["cream_14"]["res"] == 64
    for method, dataset, pts in series(list(records.values())):
        assert {r["dataset"] for r in pts} == {dataset} and not any(r["user"] for r in pts)


def test_zoo_datasets_and_lines_never_mix():
    from nas_zoo.commands.plot import datasets, method_styles, series
    from nas_zoo.commands.zoo import eval_setting
    from nas_zoo.registry import builtin_entry_dir
    builtin = {p.stem for p in builtin_entry_dir().glob("*.yaml")}
    records = [{"name": e.name, "method": str(e.provenance.get("method") or e.family), "user": False,
                "top1": e.paper.get("top1"), "macs": 1.0, "dataset": eval_setting(e)["dataset"],
                "res": eval_setting(e)["input_size"][-1]} for e in nas_zoo.list_entries() if e.name in builtin]
    by_name = {r["name"]: r for r in records}
    assert by_name["cdarts_cifar"]["dataset"] == "CIFAR-10" and by_name["cdarts_cifar"]["res"] == 32
    assert by_name["cdarts_imagenet"]["dataset"] == "ImageNet-1k"
    assert datasets(records) == ["ImageNet-1k", "CIFAR-10"]
    cdarts = [(d, sorted(r["name"] for r in pts)) for m, d, pts in series(records) if m == "cdarts"]
    assert cdarts == [("ImageNet-1k", ["cdarts_a", "cdarts_b", "cdarts_imagenet", "cdarts_imagenet_arxiv_v1"]),
                      ("CIFAR-10", ["cdarts_cifar", "cdarts_cifar_arxiv_v1"])]
    styles = method_styles(records)
    colours = [colour for colour, _ in styles.values()]
    assert len(styles) >= 10 and len(set(colours)) == len(colours) and "crimson" not in colours


def synthetic(name, dataset, method, macs, params, top1, res=224, user=False):
    return {"name": name, "dataset": dataset, "method": method, "macs": macs, "params": params, "top1": top1,
            "res": res, "user": user}


def test_plot_panels_one_per_dataset_with_labels_apart():
    pytest.importorskip("matplotlib")
    import itertools

    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from nas_zoo.commands.plot import _overlap, figure
    records = [synthetic(f"m{i}", "ImageNet-1k", "alpha" if i % 2 else "beta", 300 + 3 * i, 4 + 0.02 * i,
                         75 + 0.05 * i) for i in range(8)]
    records += [synthetic(f"c{i}", "CIFAR-10", "alpha", 500 + i, 3.5 + 0.01 * i, 97.0 + 0.01 * i, res=32)
                for i in range(4)]
    records += [synthetic("searched", "embedded demo data, 4 classes", "dna", 6.0, 0.2, None, res=32, user=True)]
    fig = figure(records)
    try:
        labels = {}
        renderer = fig.canvas.get_renderer()
        for ax in fig.axes:
            boxes = [Text.get_window_extent(t, renderer) for t in ax.texts]
            labels[ax.get_ylabel()] = labels.get(ax.get_ylabel(), []) + [t.get_text() for t in ax.texts]
            for a, b in itertools.combinations(boxes, 2):
                assert not _overlap((a.x0, a.y0, a.x1, a.y1), (b.x0, b.y0, b.x1, b.y1)), ax.get_ylabel()
        assert set(labels) == {"ImageNet-1k top-1 (%)", "CIFAR-10 top-1 (%)",
                               "embedded demo data, 4 classes top-1 (%)"}
        text = {k: " ".join(v) for k, v in labels.items()}
        assert "c0" not in text["ImageNet-1k top-1 (%)"] and "m0" not in text["CIFAR-10 top-1 (%)"]
        assert "searched @32: no top-1 yet" in text["embedded demo data, 4 classes top-1 (%)"]
        assert all(f"m{i}" in text["ImageNet-1k top-1 (%)"] for i in range(8))  # every name shown
    finally:
        plt.close(fig)
