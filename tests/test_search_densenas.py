"""`nas-zoo-search densenas` end to end on tiny dense spaces: entry + net_config, resume after SIGKILL inside an
architecture pass and inside a weight pass, the hard ceiling, config errors, the latency-table command."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from nas_zoo.families.densenas import parse_net_config
from nas_zoo.search.methods.densenas import kendall_tau, pearson
from search_helpers import REPO, cli, env, write_config, with_changes

TINY_MBV2 = {
    "base": "mbv2", "chs": [8, 16, 16, 24, 24, 32], "fm_sizes": [16, 8, 8, 4, 4, 4],
    "stages": [0, 1, 2, 2, 3, 3, 4], "num_layers": [0, 1, 1, 1, 1, 0], "adjoin_connect_nums": [3, 3, 3, 3, 3],
    "last_dim": 64, "head_ops": ["mbconv_k3_t3", "mbconv_k5_t3"], "stack_ops": ["mbconv_k3_t3", "skip_connect"],
    "input_size": 32}
TINY_RES = {
    "base": "resnet", "chs": [16, 16, 24, 24, 32, 32], "fm_sizes": [16, 8, 8, 4, 4, 4],
    "stages": [0, 1, 2, 2, 3, 3, 4], "num_layers": [0, 0, 1, 1, 1, 1], "adjoin_connect_nums": [3, 3, 3, 3, 3],
    "last_dim": 32, "input_size": 32}


def tiny_config(space=TINY_MBV2, **changes):
    cfg = {
        "name": "densenas_test_found", "seed": 0,
        "data": {"kind": "embedded", "image_size": 32, "classes": 2, "num_train": 256, "num_val": 128},
        "space": dict(space),
        "search": {"epochs": 2, "warmup_epochs": 1, "batch_size": 32, "weight_lr": 0.05},
        "cost": {"metric": "macs"},
        "export": {"recalibrate_batches": 2},
        "engine": {"device": "cpu", "tensorboard": False},
    }
    return with_changes(cfg, changes)


def _run(tmp_path, name, cfg, extra_env=None):
    config = write_config(cfg, tmp_path / f"{name}.yaml")
    e = dict(env(), **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "nas_zoo.search.cli", "densenas", "--config", str(config), "--out",
                           str(tmp_path / name)], env=e, cwd=REPO, capture_output=True, text=True)


def _arch_state(run_dir):
    return torch.load(run_dir / "supernet.pt", weights_only=True)


def test_search_writes_entry_and_official_net_config(tmp_path):
    out = _run(tmp_path, "run", tiny_config())
    assert out.returncode == 0, out.stderr[-3000:]
    run_dir = tmp_path / "run"
    text = (run_dir / "net_config").read_text()
    net_cfg = parse_net_config(text)  # the official reader's format
    entry = yaml.safe_load((run_dir / "entry.yaml").read_text())
    assert entry["family"] == "efficientnet" and entry["provenance"]["net_config"] == text
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["arch_steps"] for r in history] == [0, 4] and [r["weight_steps"] for r in history] == [8, 16]
    code = ("import nas_zoo, timm, torch; n = nas_zoo.register_entry(r'%s'); m = timm.create_model(n, "
            "pretrained=True).eval(); print(tuple(m(torch.randn(2, 3, 32, 32)).shape))" % (run_dir / "entry.yaml"))
    probe = subprocess.run([sys.executable, "-c", code], env=env(), cwd=REPO, capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.strip() == "(2, 2)"
    assert len(net_cfg.blocks) == len(entry["provenance"]["arch"]["path"]) - 1  # + the fixed MBConv t1


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", ["arch:2", "weights:11"])
def test_sigkill_inside_a_pass_then_resume_is_identical(tmp_path, kill_at):
    cfg = tiny_config(**{"engine.ckpt_every": 1})
    ref = _run(tmp_path, "ref", cfg)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _run(tmp_path, "killed", cfg, {"NAS_ZOO_TEST_KILL": kill_at})
    assert killed.returncode == -9, (killed.returncode, killed.stderr[-2000:])
    assert not (tmp_path / "killed" / "entry.yaml").exists()
    out = cli("resume", tmp_path / "killed")
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = _arch_state(tmp_path / "ref"), _arch_state(tmp_path / "killed")
    for part in ("arch", "supernet"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert (tmp_path / "ref" / "net_config").read_text() == (tmp_path / "killed" / "net_config").read_text()
    ha = json.loads((tmp_path / "ref" / "history.json").read_text())
    hb = json.loads((tmp_path / "killed" / "history.json").read_text())
    for ra, rb in zip(ha, hb):
        ra.pop("time"), rb.pop("time")
    assert ha == hb


@pytest.mark.slow
def test_resnet_space_with_a_hard_ceiling(tmp_path):
    free = _run(tmp_path, "free", tiny_config(TINY_RES, **{"search.temperature": 0.9, "search.cost_lambda": 0.2,
                                                          "search.log_base": 3500.0}))
    assert free.returncode == 0, free.stderr[-3000:]
    entry = yaml.safe_load((tmp_path / "free" / "entry.yaml").read_text())
    assert entry["family"] == "densenas_resnet"
    cost = entry["provenance"]["cost"]["value"]
    capped = _run(tmp_path, "capped", tiny_config(TINY_RES, **{"search.temperature": 0.9,
                                                              "search.ceiling": 0.9 * cost}))
    assert capped.returncode == 0, capped.stderr[-3000:]
    capped_entry = yaml.safe_load((tmp_path / "capped" / "entry.yaml").read_text())
    assert capped_entry["provenance"]["cost"]["value"] <= 0.9 * cost
    impossible = _run(tmp_path, "impossible", tiny_config(TINY_RES, **{"search.ceiling": 0.1}))
    assert impossible.returncode == 2 and "below the cheapest child" in impossible.stderr


@pytest.mark.parametrize("key,value,message", [
    ("space.stages", [0, 1, 2], "stages: expected 7 entries"),
    ("space.stack_ops", ["skip_connect"], "at least 2"),
    ("search.warmup_epochs", 5, "warmup_epochs"),
    ("cost.table", "/no/such/table", "no such file"),
    ("space.base", "vit", "expected one of"),
])
def test_config_errors_are_one_line(tmp_path, key, value, message):
    out = _run(tmp_path, "bad", tiny_config(**{key: value}))
    assert out.returncode == 2
    lines = [l for l in out.stderr.strip().splitlines() if not l.startswith("W1")]
    assert len(lines) == 1 and "error" in lines[0] and message in lines[0], out.stderr


def test_latency_table_command_and_report(tmp_path):
    config = write_config(tiny_config(), tmp_path / "c.yaml")
    table = tmp_path / "lat"
    out = cli("densenas", "latency-table", "--config", config, "--batch", "2", "--min-run-time", "0.002",
              "--validate", "4", "--out", table)
    assert out.returncode == 0, out.stderr[-3000:]
    text = table.read_text()
    assert "\n" not in text and text.startswith("[") and len(eval_free(text)) == 4
    report = json.loads((tmp_path / "lat_validation.json").read_text())
    assert report["n"] == 4 and -1 <= report["pearson"] <= 1 and "Kendall tau" in out.stdout
    top = cli("latency-table", "--help")  # the top-level name of the same command
    assert top.returncode == 0 and "densenas latency-table" in top.stdout


def eval_free(text):
    import ast
    return ast.literal_eval(text)


def test_correlation_helpers():
    rng = np.random.RandomState(0)
    a = rng.rand(30)
    b = 2 * a + 0.01 * rng.rand(30)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], rel=1e-12)
    assert kendall_tau(a, b) > 0.9 and kendall_tau(a, -a) == pytest.approx(-1.0)
    x = [1, 2, 3, 4]
    assert kendall_tau(x, [1, 3, 2, 4]) == pytest.approx(2 / 3)


@pytest.mark.slow
def test_torchrun_two_gloo_ranks(tmp_path):
    config = write_config(tiny_config(), tmp_path / "ddp.yaml")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m",
                          "nas_zoo.search.cli", "densenas", "--config", str(config), "--out", str(tmp_path / "two")],
                         env=env(), cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    history = json.loads((tmp_path / "two" / "history.json").read_text())
    # the global batch is split over the ranks: the same number of steps as one process
    assert [r["arch_steps"] for r in history] == [0, 4] and [r["weight_steps"] for r in history] == [8, 16]
    parse_net_config((tmp_path / "two" / "net_config").read_text())
