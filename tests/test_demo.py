"""The main job (`python -m nas_zoo.demo`) and the shipped search configs it runs."""
import json
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import torch
import yaml

from search_helpers import REPO, env

from nas_zoo.cost import count_macs
from nas_zoo.families.efficientnet import model_kwargs
from nas_zoo.search.config import load_config
from nas_zoo.search.cost import Budget
from nas_zoo.search.methods import dna
from nas_zoo.search.spaces.dna import op_block_string
from nas_zoo.search.train import TRAIN_SCHEMA

SEARCH_CONFIGS = Path(str(files("nas_zoo.configs") / "search"))


def test_the_installed_configs_are_the_repository_configs():
    shipped = sorted(p.name for p in SEARCH_CONFIGS.glob("*.yaml"))
    assert shipped == sorted(p.name for p in (REPO / "configs" / "search").glob("*.yaml"))
    assert {"dna_demo.yaml", "dna_imagenet.yaml", "train_demo.yaml", "train_imagenet.yaml"} <= set(shipped)


@pytest.mark.parametrize("name", ["dna_demo.yaml", "dna_imagenet.yaml"])
def test_shipped_dna_configs_pass_the_schema(name):
    cfg, source = load_config(SEARCH_CONFIGS / name, dna.SCHEMA, [])
    dna.check_config(cfg, source)
    assert len(cfg["distill"]["lr"]) == len(cfg["supernet"]["stages"]) == 6


@pytest.mark.parametrize("name", ["train_demo.yaml", "train_imagenet.yaml"])
def test_shipped_train_configs_pass_the_schema(name):
    cfg, _ = load_config(SEARCH_CONFIGS / name, TRAIN_SCHEMA, [])
    assert cfg["train"]["epochs"] > 0


def _space_macs(cfg, op_index: int, num_classes: int = 4) -> float:
    """MMACs of the retrained net that takes op `op_index` in every searched layer."""
    from timm.models.efficientnet import EfficientNet
    ops = cfg["supernet"]["ops"]
    blocks = [[cfg["supernet"]["stem_block"]]] + [
        [op_block_string(ops[op_index], stride if i == 0 else 1, hidden) for i in range(layers)]
        for hidden, stride, layers in cfg["supernet"]["stages"]]
    arch = {"model": "efficientnet", "block_args": blocks, "stem_size": cfg["export"]["stem_size"],
            "num_features": cfg["export"]["num_features"], "act_layer": "swish"}
    with torch.device("meta"):
        net = EfficientNet(num_classes=num_classes, **model_kwargs(arch))
    size = cfg["data"]["image_size"]
    return count_macs(net, (3, size, size)) / 1e6


def test_demo_teacher_fits_the_supernet_and_the_budget_constrains_the_space():
    cfg, source = load_config(SEARCH_CONFIGS / "dna_demo.yaml", dna.SCHEMA, [])
    teacher = dna.build_teacher(cfg, num_classes=4)
    shapes = dna.teacher_block_shapes(teacher, cfg["data"]["image_size"])
    strides = [s for _, s, _ in cfg["supernet"]["stages"]]
    assert dna.match_stages(shapes, strides, None, source) == list(range(7))  # one teacher block per boundary
    assert shapes[-1][1] == 8  # 4x4 final maps at 32 px
    ops = cfg["supernet"]["ops"]
    cheapest, largest = ops.index("MB3_3x3"), ops.index("MB6_7x7")
    low, high = _space_macs(cfg, cheapest), _space_macs(cfg, largest)
    # the budget must leave a real choice: not every candidate fits, and some do
    budget = Budget.parse(cfg["search"]["budget"]).value / 1e6
    assert low < budget < high, (low, budget, high)


def _run_demo(out: Path, *args: str, timeout: int) -> str:
    proc = subprocess.run([sys.executable, "-m", "nas_zoo.demo", "--out", str(out), *args], env=env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_main_job_wires_search_training_and_comparison(tmp_path):
    small = ["data.num_train=256", "data.num_val=64"]
    stdout = _run_demo(tmp_path / "demo", *small, "teacher.train.epochs=1", "distill.epochs=1",
                       "potential.batches=1", "--train-epochs", "1",
                       *[a for kv in small for a in ("--train-set", kv)], timeout=1800)
    entry = yaml.safe_load((tmp_path / "demo" / "search" / "entry.yaml").read_text())
    assert entry["provenance"]["cost"]["macs_m"] <= entry["provenance"]["cost"]["budget_value"] == 6.0
    rows = [line.split() for line in stdout.splitlines() if "(found)" in line or "(zoo)" in line]
    assert [r[1] for r in rows] == ["(found)", "(zoo)"], stdout
    randoms = [line.split() for line in stdout.splitlines() if "(random)" in line]
    assert [r[0] for r in randoms] == [f"dna_demo_found_random{i}" for i in range(3)], stdout
    for r in randoms:  # the honest baseline: the same space, within 5 % of the found model's MACs
        assert float(r[2]) == pytest.approx(float(rows[0][2]), rel=0.06)
    mean = next(line for line in stdout.splitlines() if line.startswith("random mean (n=3)")).split()
    assert float(mean[-2].rstrip("%")) == pytest.approx(sum(float(r[4].rstrip("%")) for r in randoms) / 3, abs=0.06)
    assert rows[0][0] == "dna_demo_found" and float(rows[0][2]) == pytest.approx(entry["provenance"]["cost"]["macs_m"],
                                                                                    abs=0.01)
    found = json.loads((tmp_path / "demo" / "train_found" / "metrics.json").read_text())["final"]
    assert f"{found['val_top1']:.1f}%" == rows[0][4]
    assert "chance is 25 %" in stdout and "total stride 8" in stdout
    resolved = yaml.safe_load((tmp_path / "demo" / "train_found" / "resolved.yaml").read_text())
    assert resolved["data"]["num_train"] == 256 and resolved["train"]["epochs"] == 1
    for figure in ("compare.png", "search/search.png", "search/teacher/curves.png", "train_found/curves.png"):
        assert (tmp_path / "demo" / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure


@pytest.mark.slow
def test_main_job_default_config_trains_the_found_model_well_above_chance(tmp_path):
    """The demo's own configs, unchanged (no zoo comparison or random baselines, to save their minutes)."""
    # minutes when quiet; the timeout guards against a hang, it is not a speed test
    stdout = _run_demo(tmp_path / "demo", "--no-compare", "--baselines", "0", timeout=2400)
    found = json.loads((tmp_path / "demo" / "train_found" / "metrics.json").read_text())["final"]
    # 4 classes, 1000 held-out images: chance is 25 % (+-1.4 % std); measured 83.3 %
    assert found["val_top1"] > 50.0, (found, stdout[-2000:])
    entry = yaml.safe_load((tmp_path / "demo" / "search" / "entry.yaml").read_text())
    assert entry["provenance"]["cost"]["macs_m"] <= entry["provenance"]["cost"]["budget_value"]
