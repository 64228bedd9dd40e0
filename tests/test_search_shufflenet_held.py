"""A narrowed ShuffleNetV2 space (`space.fixed`: layers held at one op): every path holds those ops (sampling,
mutation, crossover, the same-cost baselines, the EA), the cost range is the range over its paths, bad values name
the key; DSNAS learns no alpha there and never early-fixes them."""
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from nas_zoo.search.baseline import same_cost_archs
from nas_zoo.search.config import ConfigError, load_config
from nas_zoo.search.dsnas_step import EarlyFix, force_gates
from nas_zoo.search.evolution import EvolutionSearch
from nas_zoo.search.methods import dsnas
from nas_zoo.search.spaces import SpaceError
from nas_zoo.search.spaces.shufflenet import ShuffleNetSpace

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(stage_repeats=(1, 2), stage_out_channels=(16, 32), stem_size=8, num_features=32, image_size=32,
             num_classes=4)


def paths(space):
    return [list(a) for a in itertools.product(range(4), repeat=space.num_layers)
            if all(a[layer] == op for layer, op in space.fixed.items())]


def test_held_layers_hold_in_every_path_and_the_cost_range_is_over_those_paths():
    space = ShuffleNetSpace(**SMALL, fixed={0: "xception_3x3", 1: 1})
    assert space.fixed == {0: 3, 1: 1} and space.reduction_layers == [0, 1]
    rng = np.random.RandomState(0)
    for _ in range(200):
        a = space.sample(rng)
        assert a[:2] == [3, 1]
        assert space.mutate(a, rng, 1.0)[:2] == [3, 1]
        assert space.crossover(a, space.sample(rng), rng)[:2] == [3, 1]
    all_paths = paths(space)
    assert len(all_paths) == 4
    costs = [space.cost(a) for a in all_paths]
    assert space.cost_range() == (min(costs), max(costs))
    assert space.cost_range() != ShuffleNetSpace(**SMALL).cost_range()
    blocks = [space.block_cost(a) for a in all_paths]
    assert space.block_cost_range() == (min(blocks), max(blocks))


def test_an_arch_off_a_held_op_is_refused_naming_the_layer():
    space = ShuffleNetSpace(**SMALL, fixed={1: 0})
    space.check_arch([2, 0, 3])
    with pytest.raises(SpaceError, match=r"\[1\].*fixed at op 0 \(shufflenet_3x3\).*got 2"):
        space.check_arch([2, 2, 3])


@pytest.mark.parametrize("fixed, key, problem", [
    ({9: 0}, "space.fixed.9", "layer index in 0..5"),
    ({1: 7}, "space.fixed.1", "op index in 0..3"),
    ({1: "shufflenet_9x9"}, "space.fixed.1", "shufflenet_3x3, shufflenet_5x5"),
])
def test_bad_held_layers_name_the_key(fixed, key, problem):
    cfg, source = load_config(REPO / "configs" / "search" / "dsnas_demo.yaml", dsnas.SCHEMA)
    cfg["space"]["fixed"] = fixed
    with pytest.raises(ConfigError) as err:
        dsnas.check_config(cfg, source)
    assert err.value.key == key and problem in err.value.problem


def test_baselines_and_the_evolution_stay_in_the_narrowed_space():
    space = ShuffleNetSpace(**SMALL, fixed={0: 0})
    found = [0, 1, 2]
    for a in same_cost_archs(space, found, n=3, rng=np.random.RandomState(1)):
        assert a[0] == 0 and a != found
    # a budgeted search's baselines get no more than its budget
    budget = space.cost(found)
    capped = same_cost_archs(space, found, n=3, rng=np.random.RandomState(1), max_cost=budget, allow_fewer=True)
    assert capped and all(space.cost(a) <= budget for a in capped)
    cheaper = [a for a in paths(space) if a != found and space.cost(a) <= budget]
    assert len(capped) == min(3, len(cheaper))
    cost = space.cost
    search = EvolutionSearch(space, cost, None, population=6, select=2, mutations=2, crossovers=2, generations=3,
                             seed=0)
    best, _ = search.run(lambda a: float(sum(a)))
    assert best[0] == 0 and all(a[0] == 0 for a in search.archs.values())
    assert best == [0, 3, 3]  # the best of the 16 paths of the narrowed space under this score


def test_held_layers_are_forced_and_never_early_fixed():
    gates = torch.eye(4)[[1, 2, 3]]
    forced = force_gates(gates, {0: 0, 2: 0})
    assert forced.argmax(-1).tolist() == [0, 2, 0] and gates.argmax(-1).tolist() == [1, 2, 3]
    alpha = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]])
    fix = EarlyFix(0.3, exempt=[0])
    assert fix.epoch_start(alpha) == [1, 2] and fix.choices() == {1: 1, 2: 2}


def test_dsnas_learns_no_alpha_on_held_layers_and_writes_same_cost_baselines(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", NAS_ZOO_NO_PROGRESS="1", PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "nas_zoo.search.cli", "dsnas", "--config",
                          str(REPO / "configs" / "search" / "dsnas_demo.yaml"), "--out", str(tmp_path / "run"),
                          "data.num_train=128", "data.num_val=32", "search.batch_size=32", "search.epochs=2",
                          "search.stop_epoch=2", "search.pretrain_epochs=0", "search.arch_lr=0.05",
                          "child.epochs=0"],
                         env=env, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    records = json.loads((run / "alpha_history.json").read_text())
    assert [r["epoch"] for r in records] == [0, 1]
    held = {int(k): v for k, v in records[0]["held"].items()}
    assert held == {0: 0, 2: 0, 4: 0}
    first, last = np.array(records[0]["probs"]), np.array(records[1]["probs"])
    assert np.array_equal(first[[0, 2, 4]], last[[0, 2, 4]])       # alpha frozen where the space holds the op
    assert not np.allclose(first[[1, 3, 5]], last[[1, 3, 5]])      # and learnt elsewhere
    entry = yaml.safe_load((run / "entry.yaml").read_text())
    choices = entry["arch"]["choices"]
    assert [choices[i] for i in (0, 2, 4)] == [0, 0, 0]
    space = dsnas.build_space(yaml.safe_load((run / "resolved.yaml").read_text())["space"], 32, num_classes=4)
    baselines = sorted((run / "baselines").glob("*.yaml"))
    assert len(baselines) == 3
    for b in baselines:
        arch = yaml.safe_load(b.read_text())["arch"]["choices"]
        assert arch != choices and [arch[i] for i in (0, 2, 4)] == [0, 0, 0]
        assert abs(space.cost(arch) - space.cost(choices)) <= 0.05 * space.cost(choices)
