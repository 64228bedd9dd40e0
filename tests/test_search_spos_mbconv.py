"""SPOS through the same code on another space: the MBConv chain space of DNA / Cream (family efficientnet)."""
import os
import subprocess
import sys
from pathlib import Path

import timm
import torch
import yaml

import nas_zoo

REPO = Path(__file__).resolve().parents[1]

CONFIG = {
    "name": "spos_mbconv_test",
    "seed": 0,
    "data": {"kind": "embedded", "image_size": 32, "classes": 4, "num_train": 256, "num_val": 64,
             "val_fraction": 0.25},
    "space": {"kind": "mbconv", "options": {
        "stages": [[16, 2, 2], [24, 2, 1]], "ops": ["MB3_3x3", "MB6_5x5"], "stem_size": 8,
        "head_blocks": ["ds_r1_k3_s1_c8"], "num_features": 64, "drop_rate": 0.0, "drop_path_rate": 0.0}},
    "supernet": {"iterations": 6, "batch_size": 32, "lr": 0.05},
    "search": {"budget": "0.7 MMACs", "population": 6, "select": 2, "mutations": 2, "crossovers": 2,
               "generations": 2, "recal_batches": 1, "recal_batch_size": 32, "score_batches": 1,
               "score_batch_size": 32},
    "engine": {"device": "cpu", "tensorboard": False},
}


def test_spos_runs_on_the_mbconv_chain_space(tmp_path):
    config = tmp_path / "spos_mbconv.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    env = dict(os.environ, OMP_NUM_THREADS="1", NAS_ZOO_NO_PROGRESS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "nas_zoo.search.cli", "spos", "--config", str(config), "--out",
                          str(tmp_path / "run")], env=env, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    entry = yaml.safe_load((tmp_path / "run" / "entry.yaml").read_text())
    assert entry["family"] == "efficientnet"
    arch = entry["provenance"]["arch"]
    assert len(arch) == 2 and [len(s) for s in arch] == [2, 1]
    from nas_zoo.search.spaces import build_space
    space = build_space("mbconv", image_size=32, **CONFIG["space"]["options"])
    assert space.cost(arch, "macs", num_classes=4) <= 0.7e6  # the budget held
    name = nas_zoo.register_entry(tmp_path / "run" / "entry.yaml")
    model = timm.create_model(name, pretrained=True, num_classes=4,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "run" / "child.safetensors"))).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)
