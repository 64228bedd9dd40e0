"""Reference fixtures: deterministic synthetic weights in the official key layout, and the logits the official
code produced with them (tests/fixtures/<family>/<model>/, copied from the measured reference).

The weight rules (numpy PCG64 seeded by the CRC32 of each key) are the fixtures' own; see `synth_tensor`.
"""
import argparse
import json
import zlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures"


def synth_tensor(key, shape, dtype="float32"):
    shape = tuple(int(s) for s in shape)
    numel = int(np.prod(shape)) if shape else 1
    if key.endswith("num_batches_tracked") or dtype.startswith("int"):
        return np.zeros(shape, dtype=np.int64)
    a = np.random.default_rng(zlib.crc32(key.encode())).random(numel) * 2.0 - 1.0
    if key.endswith("running_var"):
        v = 1.0 + 0.5 * np.abs(a)
    elif key.endswith("running_mean"):
        v = 0.1 * a
    elif len(shape) == 1 and key.endswith("weight"):
        v = 1.0 + 0.1 * a
    elif len(shape) <= 1:
        v = 0.1 * a
    else:
        v = a * np.sqrt(3.0 / (numel / shape[0]))
    return v.reshape(shape).astype(np.float32)


def synth_input(n=2, h=224, w=224, seed=0):
    return torch.from_numpy((np.random.default_rng(seed).random((n, 3, h, w)) * 2.0 - 1.0).astype(np.float32))


class Fixture:
    def __init__(self, family, name):
        self.dir = FIXTURES / family / name
        self.name = name
        self.facts = json.loads((self.dir / "facts.json").read_text())
        self.keys = json.loads((self.dir / "state_keys.json").read_text())

    def state_dict(self):
        """Official-layout state dict: synthetic weights + calibrated BN running stats."""
        sd = OrderedDict((k, torch.from_numpy(synth_tensor(k, s, d))) for k, s, d in self.keys)
        stats = np.load(self.dir / "bn_stats.npz")
        for k in stats.files:
            sd[k] = torch.from_numpy(stats[k])
        return sd

    def logits(self, name="logits_224"):
        return torch.from_numpy(np.load(self.dir / f"{name}.npy"))

    def cases(self):
        """(logits file stem, input) pairs available for this model."""
        out = []
        for f in sorted(self.dir.glob("logits_*.npy")):
            stem = f.stem
            if stem.endswith("_f64"):
                continue
            if stem == "logits_hold":
                x = synth_input(1, 192, 192, seed=7)
            else:
                size = int(stem.rsplit("_", 1)[1])
                x = synth_input(2, size, size, seed=0)
            out.append((stem, x))
        return out


def official_dna_checkpoint(sd):
    """As DNA's retraining/train.py (timm 0.1.14 CheckpointSaver) saved it; the EMA copy differs on purpose."""
    ema = OrderedDict((k, v + 1.0 if v.is_floating_point() else v) for k, v in sd.items())
    return {"epoch": 499, "arch": "DNA", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []},
            "args": argparse.Namespace(model="DNA_a", lr=0.048, model_ema=True), "version": 2,
            "state_dict_ema": ema, "metric": 77.1}


def official_cream_checkpoint(sd):
    """As Cream's timm 0.1.20 CheckpointSaver saved it: args is a yacs CfgNode; EMA is what test.py evaluates."""
    from yacs.config import CfgNode

    args = CfgNode({"MODEL": "Childnet", "NET": CfgNode({"SELECTION": 14}), "LR": 0.012})
    plain = OrderedDict(("module." + k, v + 1.0 if v.is_floating_point() else v) for k, v in sd.items())
    return {"epoch": 499, "arch": "Childnet", "state_dict": plain, "optimizer": {}, "args": args, "version": 2,
            "state_dict_ema": sd, "metric": 79.9}


def official_cdarts_checkpoint(sd):
    """The CDARTS detection/segmentation code reads checkpoint['state_dict'] (bare ChildNet keys)."""
    return {"epoch": 249, "arch": "ChildNet", "state_dict": sd}


# How to make the official checkpoint of a zoo model: name -> () -> the object its training code saved
# (synthetic fixture weights). The weights round-trip tests (tests/test_weights_roundtrip.py) run over every
# registered model listed here; a family adds its models with `register_official_checkpoints`.
OFFICIAL_CHECKPOINTS = {}


def register_official_checkpoints(fixture_family, names, wrap):
    for name in names:
        OFFICIAL_CHECKPOINTS[name] = (lambda n=name: wrap(Fixture(fixture_family, n).state_dict()))


def write_official_checkpoint(name, directory):
    """The official checkpoint of `name` as a file in `directory` (what the authors' download gives)."""
    path = Path(directory) / f"{name}.pth.tar"
    torch.save(OFFICIAL_CHECKPOINTS[name](), path)
    return path


register_official_checkpoints("dna", ["dna_a", "dna_b", "dna_c", "dna_d"], official_dna_checkpoint)
register_official_checkpoints("cream", ["cream_14", "cream_43", "cream_114", "cream_287", "cream_481",
                                        "cream_604"], official_cream_checkpoint)
register_official_checkpoints("cream", ["cdarts_a", "cdarts_b"], official_cdarts_checkpoint)


def official_densenas_checkpoint(sd):
    """As DenseNAS run_apis/retrain.py saved it: torch.save(nn.DataParallel(model).state_dict())."""
    return OrderedDict(("module." + k, v) for k, v in sd.items())


def official_dsnas_checkpoint(sd):
    """As the DSNAS devkit (core/utils.py save_checkpoint) wrote it."""
    return {"epoch": 240, "model": "singlepath", "state_dict": sd, "best_prec1": 74.4,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "momentum": 0.9, "params": [0, 1]}]}}


register_official_checkpoints("densenas", ["densenas_a", "densenas_b", "densenas_c"], official_densenas_checkpoint)
register_official_checkpoints("dsnas", ["dsnas_search240", "dsnas_retrain240", "spos_retrain240"],
                              official_dsnas_checkpoint)


def official_cdarts_cell_checkpoint(sd):
    """CDARTS retrain.py `save_checkpoint`: checkpoint.pth.tar / best.pth.tar hold the bare ModelAug state_dict."""
    return OrderedDict(sd)


register_official_checkpoints("cdarts", ["cdarts_cifar", "cdarts_imagenet"], official_cdarts_cell_checkpoint)


def search_step_dir(family: str) -> Path:
    """The folder of a family's single-search-step fixtures: `$NAS_ZOO_SEARCH_REFERENCE/<family>/search_step` when
    the variable is set (same layout as the measured reference), else the copy in tests/fixtures."""
    import os
    root = os.environ.get("NAS_ZOO_SEARCH_REFERENCE")
    return (Path(root) if root else FIXTURES) / family / "search_step"


def search_step_file(family: str, name: str) -> Path:
    """One fixture file; a missing file is a test failure, never a skip."""
    path = search_step_dir(family) / name
    assert path.is_file(), f"search-step fixture missing: {path} (set NAS_ZOO_SEARCH_REFERENCE or restore tests/fixtures)"
    return path
