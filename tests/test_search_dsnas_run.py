"""`nas-zoo-search dsnas` end to end on tiny data: the entry is a timm model with the run's weights; the child
starts from the supernet's weights of its path (child.epochs=0 exports exactly that slice), `child.retrain` from
scratch; the LR carries over at the switch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file

import nas_zoo
from nas_zoo.search.engine import load_checkpoint
from nas_zoo.search.methods.dsnas import build_space

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.num_train=256", "data.num_val=64", "search.epochs=4", "search.stop_epoch=2",
        "search.pretrain_epochs=0"]


def run(tmp_path, name, *overrides):
    env = dict(os.environ, OMP_NUM_THREADS="1", NAS_ZOO_NO_PROGRESS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "nas_zoo.search.cli", "dsnas", "--config",
                          str(REPO / "configs" / "search" / "dsnas_demo.yaml"), "--out", str(tmp_path / name),
                          *TINY, *overrides], env=env, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path / name


def slice_of_supernet(run_dir):
    saved = load_checkpoint(run_dir / "supernet.pt")
    cfg = {"stage_repeats": [2, 2, 2], "stage_out_channels": [32, 64, 128], "stem_size": 16, "num_features": 256,
           "bn_eps": 0.01}
    return saved, build_space(cfg, 32).child_state_dict(saved["supernet"], saved["arch"])


@pytest.mark.slow
def test_child_inherits_the_supernet_path_and_retrain_does_not(tmp_path):
    inherit = run(tmp_path, "inherit", "child.epochs=0")
    saved, expected = slice_of_supernet(inherit)
    got = load_file(inherit / "child.safetensors")
    assert got.keys() == expected.keys()
    assert all(got[k].equal(expected[k]) for k in got)

    name = nas_zoo.register_entry(inherit / "entry.yaml")
    model = timm.create_model(name, pretrained=True, num_classes=4,
                              pretrained_cfg_overlay=dict(file=str(inherit / "child.safetensors"))).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)

    retrain = run(tmp_path, "retrain", "child.epochs=1", "--retrain")
    assert yaml.safe_load((retrain / "resolved.yaml").read_text())["child"]["retrain"] is True
    _, sliced = slice_of_supernet(retrain)
    fresh = load_file(retrain / "child.safetensors")
    assert not fresh["stem.conv.weight"].equal(sliced["stem.conv.weight"])

    log = [json.loads(line) for line in (retrain / "log.jsonl").read_text().splitlines()]
    switch = next(r for r in log if r.get("phase") == "switch")
    last_search = [r for r in log if r.get("phase") == "dsnas" and r["epoch"] == 2][0]
    assert switch["lr"] == pytest.approx(last_search["lr_weights"], rel=0.05)  # the schedule's LR at the switch
    assert (retrain / "alpha_history.json").exists()
