"""The shipped dsnas and spos demos end to end (minutes each on a CPU): the supernet learns, the entry is a timm
model with the run's weights that is far above chance, and the run leaves 3 same-cost random baselines for
`nas-zoo-search compare`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml

import nas_zoo
from nas_zoo.search.data import DataConfig, build_dataset, create_loader
from nas_zoo.search.methods import dsnas, spos

REPO = Path(__file__).resolve().parents[1]
CHANCE = 25.0  # 4 classes


def run_demo(tmp_path, method):
    env = dict(os.environ, OMP_NUM_THREADS="1", NAS_ZOO_NO_PROGRESS="1", PYTHONPATH=str(REPO))
    run_dir = tmp_path / method
    out = subprocess.run([sys.executable, "-m", "nas_zoo.search.cli", method, "--config",
                          str(REPO / "configs" / "search" / f"{method}_demo.yaml"), "--out", str(run_dir)],
                         env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir, [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def val_top1_of_entry(run_dir):
    """The exported entry, built by timm with child.safetensors, on the run's val split."""
    cfg = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    entry = yaml.safe_load((run_dir / "entry.yaml").read_text())
    # a name of this test's own: the registry is process-wide and other tests register the demo's name
    name = nas_zoo.register_entry({**entry, "name": f"{entry['name']}_demo_test"}, replace=True)
    model = timm.create_model(name, pretrained=True, num_classes=4,
                              pretrained_cfg_overlay=dict(file=str(run_dir / "child.safetensors"))).eval()
    data = DataConfig.from_dict({**cfg["data"], "val_fraction": None}, where="data")  # the real val split
    val = build_dataset(data, "val")
    loader = create_loader(val, data, 250, train=False)
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    return 100.0 * correct / total


def check_baselines(run_dir, space, found, budget=None):
    baselines = sorted((run_dir / "baselines").glob("*.yaml"))
    assert len(baselines) == 3
    for b in baselines:
        arch = yaml.safe_load(b.read_text())["arch"]["choices"]
        assert arch != found and abs(space.cost(arch) - space.cost(found)) <= 0.05 * space.cost(found)
        assert all(arch[layer] == op for layer, op in space.fixed.items())
        assert budget is None or space.cost(arch) <= budget


@pytest.mark.slow
def test_dsnas_demo_learns_and_its_child_is_a_timm_model_far_above_chance(tmp_path):
    run_dir, log = run_demo(tmp_path, "dsnas")
    search = [r["max_child_top1"] for r in log if "max_child_top1" in r]
    child = [r["child_top1"] for r in log if "child_top1" in r]
    assert len(search) == 6 and len(child) == 6
    assert search[-1] > CHANCE + 15 and search[-1] > search[0] + 10   # the supernet learns
    assert child[-1] > search[-1]                                     # and the child trains on from it
    assert val_top1_of_entry(run_dir) == pytest.approx(child[-1], abs=0.2)  # its weights, other batching
    cfg = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    space = dsnas.build_space(cfg["space"], 32, num_classes=4)
    found = yaml.safe_load((run_dir / "entry.yaml").read_text())["arch"]["choices"]
    check_baselines(run_dir, space, found)


@pytest.mark.slow
def test_spos_demo_scores_above_chance_within_budget_and_exports_the_winner(tmp_path):
    run_dir, _ = run_demo(tmp_path, "spos")
    meta = json.loads((run_dir / "population.json").read_text())
    cfg = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    space = spos.make_space(cfg, 32, 4)
    found = meta["chosen"]["arch"]
    assert meta["chosen"]["score"] > CHANCE + 10
    assert space.cost(found) <= 0.73e6
    scores = [c["score"] for g in meta["history"] for c in g["candidates"]]
    assert meta["chosen"]["score"] == max(scores)
    assert val_top1_of_entry(run_dir) > CHANCE + 5  # the supernet's weights of the winner, BN recalibrated
    check_baselines(run_dir, space, found, budget=0.73e6)
