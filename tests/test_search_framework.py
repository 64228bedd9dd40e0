"""The framework's contracts end to end: a method written in a test file runs through the CLI, resumes after a
kill, writes an entry timm builds with the inherited weights; the budget is checked before any training."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from search_helpers import REPO, tiny_dna_config, write_config

HERE = Path(__file__).parent


def _env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", NAS_ZOO_NO_PROGRESS="1", NAS_ZOO_SEARCH_METHODS="toy_method",
                PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]), **extra)


def _cli(*args, **env):
    return subprocess.run([sys.executable, "-m", "nas_zoo.search.cli", *map(str, args)], env=_env(**env), cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def _toy_config(tmp_path):
    return write_config({"name": "toy_found", "data": {"kind": "embedded", "image_size": 32, "num_train": 128,
                                                        "num_val": 64, "classes": 2},
                         "engine": {"device": "cpu", "tensorboard": False}}, tmp_path / "toy.yaml")


def test_a_sixth_method_runs_resumes_and_writes_a_timm_model(tmp_path):
    config = _toy_config(tmp_path)
    help_ = _cli("--help")
    assert "toy" in help_.stdout and "dna" in help_.stdout
    full = _cli("toy", "--config", config, "--out", tmp_path / "full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = _cli("toy", "--config", config, "--out", tmp_path / "killed", TOY_DIE_AT="7")
    assert killed.returncode != 0
    assert json.loads((tmp_path / "killed" / "run.json").read_text()) == {"command": "toy"}
    resumed = _cli("resume", tmp_path / "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    entries = [yaml.safe_load((tmp_path / d / "entry.yaml").read_text()) for d in ("full", "killed")]
    assert entries[0]["arch"] == entries[1]["arch"]
    assert entries[0]["provenance"]["score"] == entries[1]["provenance"]["score"]
    from safetensors.torch import load_file
    a, b = (load_file(tmp_path / d / "child.safetensors") for d in ("full", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the honest baseline: the found entry and its same-cost random ones trained with one recipe
    train = write_config({"data": {"kind": "embedded", "image_size": 32, "num_train": 64, "num_val": 32, "classes": 2},
                          "train": {"epochs": 1, "batch_size": 32}, "engine": {"device": "cpu", "tensorboard": False}},
                         tmp_path / "train.yaml")
    compared = _cli("compare", tmp_path / "full", "--config", train)
    assert compared.returncode == 0, compared.stderr[-2000:]
    result = json.loads((tmp_path / "full" / "compare" / "compare.json").read_text())
    assert [r["model"] for r in result["random"]] == ["toy_found_random0", "toy_found_random1"]
    assert result["random_mean_top1"] == pytest.approx(sum(r["top1"] for r in result["random"]) / 2)
    first, second = (r["top1"] for r in result["random"])
    assert result["random_std_top1"] == pytest.approx(abs(first - second) / 2)
    assert "random mean (n=2)" in compared.stdout and "toy_found (found)" in compared.stdout
    baseline = yaml.safe_load((tmp_path / "full" / "baselines" / "random0.yaml").read_text())
    assert baseline["arch"] != entries[0]["arch"] and baseline["provenance"]["baseline"]["of"] == "toy_found"

    import timm
    import nas_zoo
    name = nas_zoo.register_entry(tmp_path / "full" / "entry.yaml", replace=True)
    model = timm.create_model(name, num_classes=2, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(tmp_path / "full" / "child.safetensors")))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in a.items())

    # the same in one command: `METHOD --compare TRAIN.yaml`
    both = _cli("toy", "--config", config, "--out", tmp_path / "both", "--compare", train)
    assert both.returncode == 0, both.stderr[-2000:]
    assert json.loads((tmp_path / "both" / "compare" / "compare.json").read_text())["random_mean_top1"] == \
        pytest.approx(result["random_mean_top1"])
    assert "random mean (n=2)" in both.stdout


def test_a_bad_compare_recipe_fails_before_the_search(tmp_path):
    config = _toy_config(tmp_path)
    train = write_config({"data": {"kind": "embedded", "image_size": 32}, "train": {"epochs": -1},
                          "engine": {"device": "cpu"}}, tmp_path / "train.yaml")
    out = _cli("toy", "--config", config, "--out", tmp_path / "run", "--compare", train)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "train.yaml" in lines[0] and "train.epochs" in lines[0]
    assert not (tmp_path / "run").exists()


def test_an_infeasible_budget_fails_in_seconds_before_training(tmp_path):
    config = write_config(tiny_dna_config(**{"search.budget": "0.001 MMACs"}), tmp_path / "c.yaml")
    t0 = time.perf_counter()
    out = _cli("dna", "--config", config, "--out", tmp_path / "run")
    took = time.perf_counter() - t0
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "key 'search.budget': 0.001 MMACs (macs) is below the cheapest architecture" in lines[0]
    assert "MMACs; the most expensive costs" in lines[0]
    assert not (tmp_path / "run" / "stages").exists()  # nothing trained
    # a run directory whose config has an infeasible budget says the same on resume
    (tmp_path / "run").mkdir(exist_ok=True)
    cfg = yaml.safe_load(config.read_text())
    from nas_zoo.search.config import load_config
    from nas_zoo.search.methods import dna
    resolved, _ = load_config(cfg, dna.SCHEMA)
    (tmp_path / "run" / "resolved.yaml").write_text(yaml.safe_dump(resolved))
    (tmp_path / "run" / "run.json").write_text('{"command": "dna"}')
    again = _cli("resume", tmp_path / "run")
    assert again.returncode == 2 and "is below the cheapest architecture" in again.stderr
    assert took < 120  # generous: no training happened (the search itself takes minutes)


@pytest.mark.parametrize("budget, expected", [("6", "expected a number with its unit"),
                                              ("6 furlongs", "unknown unit 'furlongs'"),
                                              ("-3 MMACs", "expected a number > 0 with its unit")])
def test_budgets_are_written_with_their_unit(budget, expected):
    from nas_zoo.search.config import ConfigError
    from nas_zoo.search.cost import Budget
    with pytest.raises(ConfigError, match=expected):
        Budget.parse(budget, "c.yaml", "search.budget")
    assert Budget.parse("394000 KMACs").in_unit("MMACs") == pytest.approx(394.0)
    assert Budget.parse("3.4 M params").value == 3.4e6 and Budget.parse("12 ms").metric == "latency"
