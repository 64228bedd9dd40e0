"""CDARTS end to end: the evaluation network is the darts_cell family's model, the run's phases and outputs, config
errors, resume after SIGKILL inside a warm-up and a joint epoch, two gloo processes."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn

import nas_zoo
from nas_zoo.families.darts_cell import DartsCellNet
from nas_zoo.search.config import ConfigError, load_config
from nas_zoo.search.engine import DistContext
from nas_zoo.search.methods import cdarts
from nas_zoo.search.spaces.darts import Alphas, CdartsNetwork, MixedOp, PRIMITIVES, random_genotype

from search_helpers import REPO, cli, env, write_config, with_changes


def tiny_cdarts_config(**changes) -> dict:
    cfg = {
        "name": "cdarts_test_found",
        "seed": 3,
        "data": {"kind": "embedded", "image_size": 32, "classes": 4, "num_train": 192, "num_val": 32},
        "space": {"init_channels": 4, "search_cells_per_stage": [1, 1, 1], "eval_cells_per_stage": [1, 1, 1]},
        "search": {"batch_size": 16, "pretrain_epochs": 1, "cycles": 2, "warmup_epochs": 1, "joint_epochs": 1,
                   "w_lr": 0.05, "eval_lr": 0.05, "alpha_lr": 0.01},
        "export": {"init_channels": 8, "cells_per_stage": [1, 1, 1]},
        "engine": {"device": "cpu", "tensorboard": False, "ckpt_every": 1},
    }
    return with_changes(cfg, changes)


def test_mixed_op_with_one_hot_weights_is_that_op():
    torch.manual_seed(0)
    mixed = MixedOp(8, stride=2).eval()
    x = torch.randn(2, 8, 8, 8)
    for i, name in enumerate(PRIMITIVES):
        w = torch.zeros(len(PRIMITIVES))
        w[i] = 1.0
        assert torch.allclose(mixed(x, w), mixed.ops[i](x)), name
    assert all(not bn.affine for bn in mixed.modules() if isinstance(bn, nn.BatchNorm2d))


def test_evaluation_network_is_the_darts_cell_model():
    """The family's DartsCellNet at search width, loaded with the evaluation network's weights (BN affine 1/0),
    gives the evaluation network's logits: one builder for the search and the zoo."""
    torch.manual_seed(0)
    genotype = random_genotype(np.random.RandomState(1))
    net = CdartsNetwork(5, init_channels=8, search_cells_per_stage=[1, 1, 1], eval_cells_per_stage=[2, 2, 1])
    net.build_eval(genotype)
    x = torch.randn(2, 3, 32, 32)
    net.train()
    net.forward_eval(x)  # non-trivial BN running statistics
    net.eval()
    model = DartsCellNet(genotype, init_channels=8, cells_per_stage=(2, 2, 1), stem_type="cifar",
                         stem_multiplier=3, num_classes=5).eval()
    state = {}
    for k, v in net.state_dict().items():
        if k.startswith(("stem0.", "stem1.")):
            state[k] = v
        elif k.startswith("eval_cells."):
            state["cells." + k[len("eval_cells."):]] = v
        elif k.startswith("fc_eval."):
            state["fc." + k[len("fc_eval."):]] = v
    for k, v in model.state_dict().items():  # affine-off BN == affine BN with weight 1, bias 0
        if k not in state and k.endswith(("bn.weight", "bn.bias")):
            state[k] = torch.ones_like(v) if k.endswith("weight") else torch.zeros_like(v)
    model.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.allclose(model(x), net.forward_eval(x)[0], atol=1e-5)


def test_alphas_are_shared_by_every_stage_and_small():
    alphas = Alphas(generator=torch.Generator().manual_seed(0))
    assert [tuple(a.shape) for a in alphas.normal] == [(2, 8), (3, 8), (4, 8), (5, 8)]
    assert all(a.abs().max() < 1e-2 for a in list(alphas.normal) + list(alphas.reduce))


def _load(cfg, tmp_path):
    return load_config(write_config(cfg, tmp_path / "c.yaml"), cdarts.SCHEMA, [])


@pytest.mark.parametrize("key,value,match", [
    ("search.split", 1.5, "search.split"),
    ("space.search_cells_per_stage", [1, 1], "space.search_cells_per_stage"),
    ("search.sample_ratio", 0.0, "search.sample_ratio"),
    ("data.val_fraction", 0.2, "data.val_fraction"),
])
def test_config_errors_name_the_field(tmp_path, key, value, match):
    cfg, source = _load(tiny_cdarts_config(**{key: value}), tmp_path)
    with pytest.raises(ConfigError, match=match):
        cdarts.check_config(cfg, source)


def test_class_stratified_split(tmp_path):
    cfg, source = _load(tiny_cdarts_config(), tmp_path)
    from nas_zoo.search.methods import Job
    run = cdarts._Run(Job(method=cdarts.METHOD, cfg=cfg, run_dir=tmp_path / "run", ctx=DistContext(),
                          source=source))
    a = np.bincount([int(run.train_ds[i][1]) for i in range(len(run.train_ds))], minlength=4)
    b = np.bincount([int(run.held_ds[i][1]) for i in range(len(run.held_ds))], minlength=4)
    assert len(run.train_ds) + len(run.held_ds) == 192
    assert np.abs(a - b).max() <= 1 and (a > 0).all()  # every class on both sides, halves within one image


def _run(tmp_path, name, *overrides):
    config = write_config(tiny_cdarts_config(), tmp_path / f"{name}.yaml")
    out = cli("cdarts", "--config", config, "--out", tmp_path / name, *overrides)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path / name


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("cdarts"), "ref")


def test_run_writes_an_entry_timm_builds_and_the_genotype_history(reference_run):
    log = [json.loads(line) for line in (reference_run / "log.jsonl").read_text().splitlines()]
    log = [r for r in log if "plan_phase" in r]
    assert [r["plan_phase"] for r in log] == ["pretrain", "warmup", "joint", "warmup", "joint"]
    joint = [r for r in log if r["plan_phase"] == "joint"]
    assert joint[0]["reg_decay"] == pytest.approx(5.0) and joint[1]["reg_decay"] < 5.0
    history = json.loads((reference_run / "genotype_history.json").read_text())
    assert [h["cycle"] for h in history] == [0, 1]
    from nas_zoo.entry import load_entry
    name = nas_zoo.register_entry(reference_run / "entry.yaml", replace=True)
    entry = load_entry(reference_run / "entry.yaml")
    assert entry.family == "darts_cell" and entry.arch["init_channels"] == 8
    assert entry.provenance["genotype_history"] == [h["genotype"] for h in history]
    assert entry.provenance["retrain"]["aux_weight"] == 0.4
    model = timm.create_model(name, num_classes=4).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def _kill_when(tmp_path, name, phase):
    """Start a run, SIGKILL it once its checkpoint is inside an epoch of `phase` (batch >= 1)."""
    config = write_config(tiny_cdarts_config(), tmp_path / f"{name}.yaml")
    run_dir = tmp_path / name
    proc = subprocess.Popen([sys.executable, "-m", "nas_zoo.search.cli", "cdarts", "--config", str(config), "--out",
                             str(run_dir)], env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "ckpt" / "search.pt"
    target_epoch = {"warmup": 3, "joint": 4}[phase]  # plan: pretrain, warmup 0, joint 0, warmup 1, joint 1

    def position():
        try:
            loop = torch.load(ckpt, weights_only=True)["loop"]
        except Exception:  # not written yet
            return None
        return loop["epoch"], loop["phase_name"], loop["batch_in_phase"]

    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        p = position()
        if p is not None and p[0] == target_epoch and p[1] == phase and p[2] >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "entry.yaml").exists(), "the run finished before it could be killed"
    p = position()
    assert p[0] == target_epoch and p[1] == phase and p[2] >= 1, p
    return run_dir


def _same_result(ref, run_dir):
    out = cli("resume", run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (ref / "genotype_history.json").read_text() == (run_dir / "genotype_history.json").read_text()
    a = torch.load(ref / "search_state.pt", weights_only=True)
    b = torch.load(run_dir / "search_state.pt", weights_only=True)
    for part in ("net", "alphas"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["warmup", "joint"])
def test_sigkill_inside_an_epoch_then_resume_is_identical(tmp_path, reference_run, phase):
    _same_result(reference_run, _kill_when(tmp_path, f"killed_{phase}", phase))


@pytest.mark.slow
def test_torchrun_two_gloo_processes(tmp_path):
    config = write_config(tiny_cdarts_config(), tmp_path / "two.yaml")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                          "-m", "nas_zoo.search.cli", "cdarts", "--config", str(config), "--out", str(tmp_path / "two")],
                         env=env(), cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads((tmp_path / "two" / "genotype_history.json").read_text())
    assert len(history) == 2
    state = torch.load(tmp_path / "two" / "search_state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["alphas"].values())


@pytest.mark.parametrize("name", ["cdarts_demo", "cdarts_cifar10", "cdarts_imagenet"])
def test_shipped_configs_validate(name):
    cfg, source = load_config(REPO / "configs" / "search" / f"{name}.yaml", cdarts.SCHEMA, [])
    cdarts.check_config(cfg, source)


def test_space_cost_of_the_published_cifar_cell():
    """The space's cost is the darts_cell network's: 3,859,318 params and 590.07 M MACs for the CDARTS CIFAR cell
    at C=36, 20 cells (REPORT §1, official param_size / own MAC count)."""
    from nas_zoo.genotype import parse_genotype
    from nas_zoo.search.spaces.darts import DartsCellSpace
    facts = json.loads((REPO / "tests" / "fixtures" / "cdarts" / "cdarts_cifar" / "facts.json").read_text())
    space = DartsCellSpace("cifar", num_classes=10)
    arch = parse_genotype(facts["genotype"]).to_dict()
    space.check_arch(arch)
    assert space.cost(arch, "params") == facts["num_params"] == 3859318
    assert space.cost(arch, "macs") / 1e6 == pytest.approx(590.07, abs=0.01)


def test_space_sample_mutate_crossover_stay_in_the_space():
    from nas_zoo.search.spaces.darts import DartsCellSpace, SpaceError
    space = DartsCellSpace("cifar")
    rng = np.random.RandomState(0)
    for _ in range(20):
        a, b = space.sample(rng), space.sample(rng)
        for arch in (a, space.mutate(a, rng, 0.5), space.crossover(a, b, rng)):
            space.check_arch(arch)
    assert space.mutate(a, rng, 0.0) == a
    bad = json.loads(json.dumps(a))
    bad["normal"][1][0][0] = "none"
    with pytest.raises(SpaceError, match=r"normal\[1\]\[0\]"):
        space.check_arch(bad)
    bad["normal"][1] = [["sep_conv_3x3", 0], ["sep_conv_5x5", 0]]
    with pytest.raises(SpaceError, match="two different states"):
        space.check_arch(bad)
    entry = space.entry_arch(a)
    assert entry["init_channels"] == 36 and entry["cells_per_stage"] == [7, 7, 6]
