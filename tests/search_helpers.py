"""Tiny DNA / train configs for the search tests (seconds on one CPU core)."""
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
OPS = ("MB6_3x3", "MB6_5x5", "MB6_7x7", "MB3_3x3", "MB3_5x5", "MB3_7x7")  # PRIMITIVES without SE


def tiny_dna_config(**changes) -> dict:
    cfg = {
        "name": "dna_test_found",
        "seed": 1,
        "data": {"kind": "embedded", "image_size": 32, "num_train": 256, "num_val": 64},
        "teacher": {"arch": {
            "model": "efficientnet", "stem_size": 8, "num_features": 64, "act_layer": "swish",
            "block_args": [["ds_r1_k3_s1_c8"], ["ir_r1_k3_s1_e2_c16"], ["ir_r1_k3_s2_e2_c16"],
                           ["ir_r1_k3_s2_e2_c24"], ["ir_r1_k3_s1_e2_c24"],
                           ["ir_r1_k3_s1_e2_c32"], ["ir_r1_k3_s1_e2_c32"]]}},
        # the demo's kind of space: total stride 8 for 32 px images, the official ops without SE
        "supernet": {"stem_size": 8, "stem_block": "ds_r1_k3_s1_c8",
                     "stages": [[8, 1, 1], [16, 2, 2], [16, 2, 1], [24, 1, 1], [24, 1, 1], [32, 1, 1]],
                     "ops": list(OPS)},
        "distill": {"epochs": 2, "batch_size": 32, "lr": [0.002, 0.005, 0.005, 0.005, 0.005, 0.002]},
        "potential": {"batches": 1, "batch_size": 32},
        "search": {"budget": "100 MMACs"},
        "export": {"stem_size": 8, "num_features": 64, "drop_rate": 0.0, "drop_path_rate": 0.0},
        "engine": {"device": "cpu", "tensorboard": False},
    }
    return with_changes(cfg, changes)


def write_config(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def env() -> dict:
    e = dict(os.environ, OMP_NUM_THREADS="1", NAS_ZOO_NO_PROGRESS="1")
    return e


def cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas_zoo.search.cli", *map(str, args)], env=env(), cwd=REPO,
                          capture_output=True, text=True, **kwargs)


def with_changes(cfg: dict, changes: dict) -> dict:
    """`cfg` with dotted-key changes applied in place (`{"distill.epochs": 1}`); returns it."""
    for key, value in changes.items():
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return cfg
