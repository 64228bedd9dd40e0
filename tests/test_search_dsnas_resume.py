"""kill -9 and `nas-zoo-search resume`: DSNAS killed in the supernet phase and in the early-fixed child phase, SPOS
killed in supernet training and in the evolutionary search; every resumed run ends with the uninterrupted run's
architecture and bit-identical child weights."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "search"
TINY_DATA = ["data.num_train=256", "data.num_val=64"]
DSNAS = TINY_DATA + ["search.epochs=4", "search.stop_epoch=2", "search.pretrain_epochs=0", "search.arch_lr=0.2",
                     "search.early_fix_threshold=0.02", "child.epochs=2", "engine.ckpt_every=3"]
SPOS = TINY_DATA + ["supernet.iterations=8", "engine.ckpt_every=3", "search.generations=2", "search.population=6",
                    "search.select=2", "search.mutations=2", "search.crossovers=2", "search.recal_batches=1",
                    "search.score_batches=1", "search.score_batch_size=32"]


def cli(*args, **env):
    e = dict(os.environ, OMP_NUM_THREADS="1", NAS_ZOO_NO_PROGRESS="1", PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, str(REPO / "tests" / "die_at.py"), *map(str, args)], env=e, cwd=REPO,
                          capture_output=True, text=True)


def result(run_dir):
    entry = yaml.safe_load((run_dir / "entry.yaml").read_text())
    return entry["arch"], load_file(run_dir / "child.safetensors")


def assert_same(a, b):
    (arch_a, w_a), (arch_b, w_b) = result(a), result(b)
    assert arch_a == arch_b
    assert w_a.keys() == w_b.keys()
    for k in w_a:
        assert w_a[k].equal(w_b[k]), k


@pytest.mark.slow
def test_dsnas_killed_in_search_and_in_child_training_resumes_identically(tmp_path):
    config = CONFIGS / "dsnas_demo.yaml"
    full = cli("dsnas", "--config", config, "--out", tmp_path / "full", *DSNAS)
    assert full.returncode == 0, full.stderr[-2000:]
    log = (tmp_path / "full" / "log.jsonl").read_text()
    assert '"phase": "switch"' in log and '"fixed": {' in log  # early fix fixed layers before the child phase

    killed = cli("dsnas", "--config", config, "--out", tmp_path / "killed", *DSNAS, DIE_AT_STEP="6")  # epoch 1
    assert killed.returncode == 9, killed.stderr[-2000:]
    again = cli("resume", tmp_path / "killed", DIE_AT_STEP="14")  # epoch 3: the early-fixed child
    assert again.returncode == 9, again.stderr[-2000:]
    assert (tmp_path / "killed" / "supernet.pt").exists()  # the switch had happened
    done = cli("resume", tmp_path / "killed")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same(tmp_path / "full", tmp_path / "killed")


@pytest.mark.slow
def test_spos_killed_in_supernet_training_and_in_the_search_resumes_identically(tmp_path):
    config = CONFIGS / "spos_demo.yaml"
    full = cli("spos", "--config", config, "--out", tmp_path / "full", *SPOS)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = cli("spos", "--config", config, "--out", tmp_path / "killed", *SPOS, DIE_AT_STEP="5")
    assert killed.returncode == 9, killed.stderr[-2000:]
    again = cli("resume", tmp_path / "killed", DIE_AT_SCORE="8")  # generation 1 of the evolutionary search
    assert again.returncode == 9, again.stderr[-2000:]
    done = cli("resume", tmp_path / "killed")
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same(tmp_path / "full", tmp_path / "killed")
    a, b = ((tmp_path / d / "population.json").read_text() for d in ("full", "killed"))
    assert a == b
