"""The train command's DARTS retrain recipe: cutout, the auxiliary head's loss, the linear drop-path ramp."""
import pytest
import torch

from nas_zoo.search.config import ConfigError, load_config
from nas_zoo.search.data import DataConfig
from nas_zoo.search.data.transforms import Cutout, build_transform
from nas_zoo.search.train import TRAIN_SCHEMA, run_training
from nas_zoo.search.engine import DistContext

from search_helpers import REPO


def test_cutout_zeros_one_clipped_square():
    torch.manual_seed(0)
    img = torch.ones(3, 32, 32)
    out = Cutout(16)(img)
    zero = (out == 0).all(0)
    rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
    assert 0 < zero.sum() <= 16 * 16 and zero.sum() == len(rows) * len(cols)  # one axis-aligned rectangle
    assert len(rows) <= 16 and len(cols) <= 16 and torch.equal(img, torch.ones(3, 32, 32))  # input untouched
    t = build_transform(DataConfig.from_dict({"kind": "embedded", "cutout": 8}), train=True)
    assert "Cutout(length=8)" in repr(t)
    with pytest.raises(Exception, match="cutout"):
        DataConfig.from_dict({"kind": "embedded", "cutout": -1})


def _cfg(tmp_path, **train):
    data = {"kind": "embedded", "image_size": 32, "classes": 2, "num_train": 32, "num_val": 16, "cutout": 8}
    cfg, _ = load_config({"data": data, "train": {"epochs": 2, "batch_size": 16, "lr": 0.01, **train},
                          "engine": {"device": "cpu", "tensorboard": False}}, TRAIN_SCHEMA)
    return cfg


def test_darts_cell_retrain_with_aux_head_and_drop_path_ramp(tmp_path, monkeypatch):
    from nas_zoo.families.darts_cell import DartsCellNet
    rates, aux_seen = [], []
    real_set, real_forward = DartsCellNet.set_drop_path_rate, DartsCellNet.forward

    def spy_set(self, rate):
        rates.append(rate)
        return real_set(self, rate)

    def spy_forward(self, x):
        out = real_forward(self, x)
        if self.training:
            aux_seen.append(isinstance(out, tuple))
        return out

    monkeypatch.setattr(DartsCellNet, "set_drop_path_rate", spy_set)
    monkeypatch.setattr(DartsCellNet, "forward", spy_forward)
    cfg = _cfg(tmp_path, aux_weight=0.4, drop_path_rate=0.2, drop_path_schedule="linear")
    result = run_training("pdarts_cifar", cfg, tmp_path / "run", DistContext())
    assert rates == [0.0, 0.1]  # rate * epoch / epochs at each epoch start
    assert aux_seen and all(aux_seen)  # trained with the auxiliary head's (logits, aux_logits)
    assert 0.0 <= result["val_top1"] <= 100.0


def test_aux_weight_on_a_model_without_an_auxiliary_head_is_one_error(tmp_path):
    with pytest.raises(ConfigError, match="train.aux_weight"):
        run_training("dna_a", _cfg(tmp_path, aux_weight=0.4, epochs=1), tmp_path / "run", DistContext())


def test_shipped_cdarts_train_configs_pass_the_schema():
    for name in ("cdarts_train_cifar10.yaml", "cdarts_train_demo.yaml"):
        cfg, _ = load_config(REPO / "configs" / "search" / name, TRAIN_SCHEMA)
        assert cfg["train"]["aux_weight"] == 0.4 and cfg["train"]["drop_path_schedule"] == "linear"
