"""Cream end to end: the space's child entries, the CLI run, the entry timm builds, resume after a kill."""
import copy
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nas_zoo.search.methods import cream as cream_method
from nas_zoo.search.methods import cream_core as cc
from nas_zoo.search.spaces import cream as cs
from search_helpers import REPO, cli, env, with_changes, write_config


def tiny_cream_config(**changes) -> dict:
    cfg = {
        "name": "cream_test_found",
        "seed": 3,
        "data": {"kind": "embedded", "image_size": 32, "classes": 4, "num_train": 64, "num_val": 32},
        "space": {"flops": [0, 3.0]},
        "search": {"epochs": 3, "batch_size": 16, "lr": 0.1, "meta_start_epoch": 0, "update_iter": 2,
                   "pool_size": 3, "slice": 4},
        "select": {"bn_batches": 1, "batch_size": 16, "eval_batches": 1},
        "export": {"drop_rate": 0.0},
        "engine": {"device": "cpu", "tensorboard": False},
    }
    return with_changes(cfg, changes)


def test_child_entry_gives_the_supernet_path_logits():
    import timm
    import nas_zoo
    from nas_zoo.entry import load_entry

    torch.manual_seed(0)
    space = cs.cream_space([2, 1, 5, 1, 2], image_size=64)
    net = cs.twice_differentiable_gates(space.supernet(7))
    for m in net.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    net.eval()
    arch = [[5, 0], [2], [1, 3, 4, 0, 5], [3], [4, 1]]
    space.check_arch(arch)
    entry = load_entry({"name": "cream_child_probe", "family": "efficientnet", "arch": space.entry_arch(arch)},
                       source="<test>")
    assert entry.arch["block_args"][2] == [cs.choice_block_string(1, 0, 2)] == ["ir_r1_k5_s2_e4_c40_se0.25"]
    nas_zoo.register_entry(entry, replace=True)
    child = timm.create_model("cream_child_probe", num_classes=7).eval()
    child.load_state_dict(space.child_state_dict(net.state_dict(), arch), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = net(x, arch), child(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
    with torch.no_grad():  # another path of the same supernet does not give these logits
        assert (net(x, [[0, 0], [0], [0, 0, 0, 0, 0], [0], [0, 0]]) - b).abs().max() > 1e-3


def test_cream_space_is_the_zoo_family_configuration():
    # the family settings of configs/models/cream_14.yaml
    zoo = yaml.safe_load((REPO / "configs" / "models" / "cream_14.yaml").read_text())["arch"]
    space = cs.cream_space([1, 2, 2, 1, 1])
    arch = space.entry_arch([[3], [3, 3], [3, 3], [1], [3]])
    for key in ("model", "stem_size", "num_features", "act_layer", "bn_eps", "se_layer", "se_from_exp", "head_bias"):
        assert arch[key] == zoo[key], key
    assert arch["block_args"][0] == zoo["block_args"][0] and arch["block_args"][-1] == zoo["block_args"][-1]
    # timm's builder gives a stage's later blocks stride 1 whatever their string says (the zoo keeps the official
    # template's s2 there)
    def later_s1(stages):
        return [[b if j == 0 else b.replace("_s2_", "_s1_") for j, b in enumerate(st)] for st in stages]
    assert later_s1(arch["block_args"][2:4]) == later_s1(zoo["block_args"][2:4])


def test_own_cost_tables_price_the_built_child_exactly():
    from nas_zoo.cost import count_macs
    from nas_zoo.entry import load_entry
    from nas_zoo.families.efficientnet import FAMILY

    space = cs.cream_space([1, 2, 1, 1, 1], image_size=64)
    tables = cs.space_flops_table(space, 64, 10)
    arch = [[3], [5, 0], [1], [4], [2]]
    entry = load_entry({"name": "cream_cost_probe", "family": "efficientnet", "arch": space.entry_arch(arch)},
                       source="<test>")
    child = FAMILY.build(entry, num_classes=10)
    classifier = 1280 * 10 / 1e6  # FlopsEst leaves the classifier out
    assert cs.path_cost(tables["flops_dict"], tables["fixed"], arch) == pytest.approx(
        count_macs(child, (3, 64, 64)) / 1e6 - classifier, rel=1e-9)


@pytest.mark.parametrize("name,sta_num,layers", [("cream_demo.yaml", [1, 1, 3, 1, 1], [1, 1, 3, 1, 1]),
                                                 ("cream_imagenet.yaml", [4, 4, 4, 4, 4], [4, 4, 5, 4, 4])])
def test_shipped_configs_pass_the_checks_and_plan_their_depths(name, sta_num, layers):
    from nas_zoo.search.config import load_config
    cfg, source = load_config(REPO / "configs" / "search" / name, cream_method.SCHEMA, [])
    cream_method.check_config(cfg, source)
    plan = cream_method.plan_space(cfg, 10, source)
    assert plan["sta_num"] == sta_num and plan["layers"] == layers
    assert plan["train_size"] == cfg["data"]["image_size"]


def test_demo_space_has_no_se_total_stride_8_and_same_cost_baselines():
    """The demo's space (sized for 32 px): its entries build with no SE module and 4x4 final maps, and the random
    baselines cost what the found path costs (the paper config keeps the official SE blocks and strides)."""
    from timm.layers import SqueezeExcite
    from timm.models._efficientnet_blocks import SqueezeExcite as BlockSE

    from nas_zoo.entry import load_entry
    from nas_zoo.families.efficientnet import FAMILY
    from nas_zoo.search.baseline import same_cost_archs
    from nas_zoo.search.config import load_config

    cfg, source = load_config(REPO / "configs" / "search" / "cream_demo.yaml", cream_method.SCHEMA, [])
    plan = cream_method.plan_space(cfg, 4, source)
    space = plan["space"]
    assert plan["strides"] == [2, 2, 1, 1, 1] and plan["se"] is False
    arch = cs.sample_path(np.random.RandomState(0), space.depths)
    entry = load_entry({"name": "cream_demo_probe", "family": "efficientnet", "arch": space.entry_arch(arch)},
                       source="<test>")
    child = FAMILY.build(entry, num_classes=4).eval()
    assert not any(isinstance(m, (SqueezeExcite, BlockSE)) for m in child.modules())
    with torch.no_grad():
        assert child.forward_features(torch.randn(1, 3, 32, 32)).shape[-2:] == (4, 4)
        assert child(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    target = space.cost(arch, "macs")
    rand = same_cost_archs(space, arch, n=3, rng=np.random.RandomState(1))
    assert len(rand) == 3 and arch not in rand
    assert all(abs(space.cost(a, "macs") - target) <= 0.05 * target for a in rand)

    paper, psource = load_config(REPO / "configs" / "search" / "cream_imagenet.yaml", cream_method.SCHEMA, [])
    pspace = cream_method.plan_space(paper, 1000, psource)["space"]
    assert [st for _, st, _ in pspace.stages] == list(cs.STRIDES) and pspace.ops == cs.OPS


def test_linear_decay_is_a_function_of_the_step():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 1.0}, {"params": [], "lr": 1e-4}], lr=1.0)
    sched = cream_method.LinearDecay(opt, 100)
    sched.step_update(25)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.75, 0.75e-4])
    other = cream_method.LinearDecay(torch.optim.SGD([{"params": [p], "lr": 1.0}, {"params": [], "lr": 1e-4}],
                                                     lr=1.0), 100)
    other.load_state_dict(sched.state_dict())
    assert [g["lr"] for g in other.optimizer.param_groups] == pytest.approx([0.75, 0.75e-4])


def test_infeasible_interval_is_one_config_error(tmp_path):
    config = write_config(tiny_cream_config(**{"space.flops": [0, 0.01]}), tmp_path / "bad.yaml")
    out = cli("cream", "--config", config, "--out", tmp_path / "run")
    assert out.returncode != 0
    assert "space.flops" in out.stderr and "Traceback" not in out.stderr, out.stderr[-2000:]


def _run(tmp_path, name, *overrides, cfg=None):
    config = write_config(cfg or tiny_cream_config(), tmp_path / f"{name}.yaml")
    out = cli("cream", "--config", config, "--out", tmp_path / name, *overrides)
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp_path / name


def test_cli_run_writes_an_entry_timm_builds_with_inherited_weights(tmp_path):
    import timm
    import nas_zoo

    run = _run(tmp_path, "run")
    entry = yaml.safe_load((run / "entry.yaml").read_text())
    board = json.loads((run / "board.json").read_text())
    assert 1 <= len(board["paths"]) <= 3
    assert all({"arch", "cost_mmacs", "score", "inside"} <= set(r) for r in board["paths"])
    base = board["baseline_same_cost"]
    assert len(base["scores"]) == 3 and best_arch_not_in(base["archs"], entry)
    # the same random paths as entries for `compare`, at the found path's cost
    randoms = [yaml.safe_load((run / "baselines" / f"random{i}.yaml").read_text()) for i in range(3)]
    assert [r["provenance"]["arch"] for r in randoms] == base["archs"]
    found_cost = randoms[0]["provenance"]["baseline"]["found_cost"]
    assert all(abs(r["provenance"]["baseline"]["cost"] - found_cost) <= 0.05 * found_cost for r in randoms)
    inside = [r for r in board["paths"] if r["inside"]] or board["paths"]
    best = max(inside, key=lambda r: (r["score"], -r["cost_mmacs"]))
    assert entry["provenance"]["arch_list"] == [[0]] + best["arch"] + [[0]]
    hist = [json.loads(l) for l in (run / "board_history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [2, 3]     # the board fills from epoch 1 (meta_start_epoch 0)
    name = nas_zoo.register_entry(run / "entry.yaml", replace=True)
    model = timm.create_model(name, pretrained=True, num_classes=4,
                              pretrained_cfg_overlay=dict(file=str(run / "child.safetensors"))).eval()
    plan = json.loads((run / "space.json").read_text())
    space = cs.cream_space(plan["layers"], plan["train_size"])
    net = space.supernet(4)
    ckpt = torch.load(run / "ckpt" / "search.pt", weights_only=True)
    net.load_state_dict(ckpt["modules"]["supernet"])
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the exported weights are the supernet's (running BN statistics of training)
        assert torch.allclose(model(x), net(x, best["arch"]), atol=1e-5)


def best_arch_not_in(archs, entry):
    return entry["provenance"]["arch_list"][1:-1] not in archs


def _interrupt_at(monkeypatch, where: str, count: int):
    """Raise inside the run (nothing is saved on the way out, like kill -9) at the count-th call of `where`."""
    calls = {"n": 0}
    real = getattr(cc, where)

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == count:
            if where == "meta_update":  # half-way: after the student step, before the meta step
                real_step = cc.sgd_step_
                state = {"k": 0}

                def dying_step(*a, **k):
                    state["k"] += 1
                    if state["k"] == 2:
                        raise KeyboardInterrupt("killed during the meta update")
                    return real_step(*a, **k)
                monkeypatch.setattr(cc, "sgd_step_", dying_step)
                return real(*args, **kwargs)
            raise KeyboardInterrupt(f"killed at {where} #{count}")
        return real(*args, **kwargs)
    monkeypatch.setattr(cc, where, wrapped)


def _in_process(run_dir, cfg):
    from nas_zoo.search.engine import setup_distributed
    ctx = setup_distributed("cpu")
    run_dir.mkdir(parents=True, exist_ok=True)
    res = cream_method.run_cream(copy.deepcopy(cfg), run_dir, ctx)
    return res


@pytest.mark.slow
@pytest.mark.parametrize("where,count", [("meta_update", 2), ("update_board", 9)],
                         ids=["during_meta_update", "board_full"])
def test_interrupted_then_resumed_gives_the_identical_board_and_result(tmp_path, monkeypatch, where, count):
    from nas_zoo.search.config import load_config
    cfg, _ = load_config(tiny_cream_config(**{"engine.ckpt_every": 1}), cream_method.SCHEMA, [])
    ref = _in_process(tmp_path / "ref", cfg)
    with monkeypatch.context() as m:
        _interrupt_at(m, where, count)
        with pytest.raises(KeyboardInterrupt):
            _in_process(tmp_path / "killed", cfg)
    ckpt = torch.load(tmp_path / "killed" / "ckpt" / "search.pt", weights_only=True)
    if where == "update_board":
        assert len(ckpt["state"]["board"]["entries"]) == 3   # the checkpoint holds a full board
    assert not (tmp_path / "killed" / "entry.yaml").exists()
    res = _in_process(tmp_path / "killed", cfg)
    assert res["board"] == ref["board"]
    assert res["arch"] == ref["arch"] and res["score"] == ref["score"]
    a = torch.load(tmp_path / "ref" / "ckpt" / "search.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "ckpt" / "search.pt", weights_only=True)
    for name in ("supernet", "meta"):
        for k in a["modules"][name]:
            assert torch.equal(a["modules"][name][k], b["modules"][name][k]), k
    for ea, eb in zip(a["state"]["board"]["entries"], b["state"]["board"]["entries"]):
        assert torch.equal(ea["images"], eb["images"]) and torch.equal(ea["soft"], eb["soft"])


@pytest.mark.slow
def test_sigkill_with_a_full_board_then_resume(tmp_path):
    ref = _run(tmp_path, "ref", "engine.ckpt_every=1")
    config = write_config(tiny_cream_config(**{"engine.ckpt_every": 1}), tmp_path / "kill.yaml")
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "nas_zoo.search.cli", "cream", "--config", str(config), "--out",
                             str(run_dir)], env=env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run_dir / "ckpt" / "search.pt"
    deadline = time.time() + 300
    full = False
    while time.time() < deadline and proc.poll() is None and not full:
        time.sleep(0.05)
        try:
            state = torch.load(ckpt, weights_only=True)
            full = len(state["state"]["board"]["entries"]) == 3 and state["loop"]["epoch"] == 1
        except Exception:
            continue
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert full and not (run_dir / "entry.yaml").exists(), "the run finished before it could be killed"
    out = cli("resume", run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((ref / "board.json").read_text()) == json.loads((run_dir / "board.json").read_text())
    ea, eb = (yaml.safe_load((d / "entry.yaml").read_text()) for d in (ref, run_dir))
    assert ea["arch"] == eb["arch"]


@pytest.mark.slow
def test_torchrun_two_gloo_processes_keep_one_board(tmp_path):
    # every rank checks at the end that its board (prec1, cost, arch, images, soft labels) is rank 0's
    config = write_config(tiny_cream_config(), tmp_path / "ddp.yaml")
    run_dir = tmp_path / "ddp"
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m",
                          "nas_zoo.search.cli", "cream", "--config", str(config), "--out", str(run_dir)],
                         env=env(), cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    board = json.loads((run_dir / "board.json").read_text())
    assert board["processes"] == 2 and len(board["paths"]) == 3
    assert (run_dir / "entry.yaml").exists() and (run_dir / "child.safetensors").exists()
