"""`nas-zoo validate`, `benchmark`, `plot` and model cards."""
import csv
import json
import sys

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import nas_zoo
from nas_zoo.cli import main as cli
from nas_zoo.hub import check_model_folder, convert_checkpoint
from reference import write_official_checkpoint

NAME = "cream_14"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_official_checkpoint(NAME, tmp_path_factory.mktemp("ckpt"))


def make_val_set(root, model, n_right=4, n_wrong=2):
    """A tiny ImageFolder whose answers we know: each image goes into the folder of the class the model
    predicts (n_right) or of the next class (n_wrong). Returns (data dir, class-map file, expected top-1, top-5)."""
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config(model=model), is_training=False)
    data = root / "imagenet" / "val"
    correct1 = correct5 = 0
    for i in range(n_right + n_wrong):
        pixels = np.random.default_rng(i).integers(0, 256, (80, 96, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        with torch.no_grad():
            out = model(transform(image).unsqueeze(0))[0]
        label = int(out.argmax()) if i < n_right else (int(out.argmax()) + 1) % 1000
        correct1 += int(int(out.argmax()) == label)
        correct5 += int(label in out.topk(5).indices.tolist())
        folder = data / f"c{label:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"img{i}.png")
    class_map = root / "classes.txt"
    class_map.write_text("".join(f"c{k:03d}\n" for k in range(1000)))
    total = n_right + n_wrong
    return root / "imagenet", class_map, 100 * correct1 / total, 100 * correct5 / total


def test_validate_with_a_checkpoint_and_a_model_card(ckpt, tmp_path, capsys):
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt))).eval()
    data, class_map, top1, top5 = make_val_set(tmp_path, model)
    assert top1 == pytest.approx(100 * 4 / 6)
    folder = tmp_path / "hub"
    convert_checkpoint(NAME, ckpt, folder)
    card_before = (folder / "README.md").read_text()
    args = ["validate", NAME, "--data", str(data), "--checkpoint", str(ckpt), "--class-map", str(class_map),
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--json", "--no-progress",
            "--model-card", str(folder / "README.md")]
    assert cli(args) == 0
    out = capsys.readouterr().out
    result = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    assert result["images"] == 6 and result["input_size"] == [3, 64, 64]
    assert result["top1"] == pytest.approx(top1) and result["top5"] == pytest.approx(top5)
    assert result["paper_top1"] == 53.8
    assert f"{'ours':<8}{top1:>8.2f}{top5:>8.2f}" in out and f"{'paper':<8}{53.8:>8.2f}{77.2:>8.2f}" in out

    card = (folder / "README.md").read_text()
    assert f"| ours (`nas-zoo validate`) | {top1:.2f} | {top5:.2f} | 6 images, 64x64" in card
    assert "name: top-1 accuracy (nas-zoo validate)" in card and f"value: {round(top1, 3)}" in card
    assert "name: top-1 accuracy (paper)" in card and "value: 53.8" in card
    # everything else of the card is kept
    before_results = card_before.split("## Results")[0].split("---\n", 2)[2]
    assert before_results in card and card.count("<!-- nas-zoo:results -->") == 1
    check_model_folder(folder)
    # validating again replaces our numbers instead of adding more
    assert cli(args) == 0
    again = (folder / "README.md").read_text()
    assert again.count("accuracy (nas-zoo validate)") == 2 and again.count("| ours (`nas-zoo validate`)") == 1


def test_validate_pretrained_from_a_folder_and_limit(ckpt, tmp_path, capsys):
    model = timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt))).eval()
    data, class_map, _, _ = make_val_set(tmp_path, model, n_right=3, n_wrong=0)
    folder = tmp_path / "hub"
    convert_checkpoint(NAME, ckpt, folder)
    assert cli(["validate", f"local-dir:{folder}", "--data", str(data), "--class-map", str(class_map),
                "--workers", "0", "--device", "cpu", "--json", "--no-progress", "--limit", "2"]) == 0
    result = json.loads(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("{")))
    assert result["images"] == 2 and result["top1"] == 100.0 and result["paper_top1"] == 53.8


def test_benchmark_table_and_csv(tmp_path, capsys):
    path = tmp_path / "bench.csv"
    assert cli(["benchmark", NAME, "dna_a", "--batch-size", "2", "--warmup", "1", "--iters", "2", "--device",
                "cpu", "--train", "--channels-last", "--img-size", "64", "--csv", str(path)]) == 0
    out = capsys.readouterr().out
    rows = list(csv.DictReader(path.open()))
    assert [(r["model"], r["mode"]) for r in rows] == [(NAME, "infer"), (NAME, "train"), ("dna_a", "infer"),
                                                       ("dna_a", "train")]
    for r in rows:
        assert float(r["samples_per_sec"]) > 0 and float(r["step_ms"]) > 0
        assert r["batch_size"] == "2" and r["img_size"] == "64" and r["channels_last"] == "True"
        assert r["peak_mem_mb"] == ""  # not measured on CPU
    assert float(rows[0]["params_m"]) == pytest.approx(2.673, abs=1e-3)
    assert "img/s" in out and "cpu, channels_last" in out


def test_benchmark_zoo_expands_to_every_entry():
    from nas_zoo.commands.benchmark import expand_names
    assert expand_names(["zoo", "resnet18"]) == sorted(e.name for e in nas_zoo.list_entries()) + ["resnet18"]


def test_plot_png_with_user_entries(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot extra (matplotlib) is not installed")
    from nas_zoo.commands.plot import collect
    user = tmp_path / "entries"
    user.mkdir()
    searched = nas_zoo.get_entry("dna_b").to_dict()
    searched.update(name="plot_searched", paper={"top1": 76.0})
    nas_zoo.load_entry(searched).save(user / "plot_searched.yaml")
    fresh = dict(searched, name="plot_fresh")
    fresh.pop("paper")
    nas_zoo.load_entry(fresh).save(user / "plot_fresh.yaml")
    out = tmp_path / "zoo.png"
    assert cli(["plot", "--out", str(out), "--entries", str(user), "--top1", "dna_a=77.5"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
    records = {r["name"]: r for r in collect([str(user)], {"dna_a": 77.5})}
    assert records["plot_searched"]["user"] and records["plot_searched"]["top1"] == 76.0
    assert records["plot_fresh"]["top1"] is None and not records["dna_a"]["user"]
    assert records["dna_a"]["top1"] == 77.5 and records["cream_14"]["top1"] == 53.8
    assert records["dna_a"]["macs"] == pytest.approx(335.141728)


def test_plot_names_bad_input(tmp_path, monkeypatch, capsys):
    assert cli(["plot", "--out", str(tmp_path / "x.png"), "--top1", "dna_a:77"]) == 2
    assert "--top1 'dna_a:77': expected NAME=VALUE" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert cli(["plot", "--out", str(tmp_path / "x.png")]) == 2
    assert "pip install 'nas-zoo[plot]'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("name, size, backend", [("cream_14", 64, "inductor"), ("dna_a", 96, "aot_eager")])
def test_torch_compile(name, size, backend, tmp_path):
    """torch.compile works on zoo models, whole-graph (MobileNetV3 class with the default inductor backend; the
    EfficientNet class traced by dynamo + AOTAutograd, which is where compile problems start, without minutes
    of C++ code generation on a CPU). benchmarks/zoo_overhead.py --compile runs inductor on every zoo model."""
    ckpt = write_official_checkpoint(name, tmp_path)  # fixture weights: logits of order 1, unlike a fresh init
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt))).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        want = model(x)
        got = torch.compile(model, backend=backend, fullgraph=True)(x)
    assert want.abs().max() > 0.1 and (got - want).abs().max().item() < 1e-4
