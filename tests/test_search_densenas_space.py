"""DenseNAS dense spaces on small graphs: Viterbi = brute force, the chained estimate = exact cost of one-hot
architectures, the exact hard-ceiling derivation, and the child network = the supernet on its path."""
import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from nas_zoo.families.densenas import parse_net_config
from nas_zoo.registry import create_from_entry
from nas_zoo.entry import load_entry
from nas_zoo.search.spaces.densenas import (MBV2_SPACE, RESNET_SPACE, DenseArchParams, DenseNASSpace,
                                            DenseSpaceConfig, DenseSpaceError, Sample, build_cost_table,
                                            chained_cost, constrained_arch, derive_path, path_weights)

SMALL_MBV2 = DenseSpaceConfig(
    net_type="mbv2", chs=(8, 16, 16, 24, 24, 32, 40), fm_sizes=(16, 8, 8, 4, 4, 4, 4),
    stages=(0, 1, 1, 2, 2, 3, 3, 4), num_layers=(0, 1, 1, 2, 1, 1, 0), adjoin_connect_nums=(3,) * 5,
    last_dim=64, head_ops=MBV2_SPACE.head_ops[:3], stack_ops=MBV2_SPACE.head_ops[:2] + ("skip_connect",),
    input_size=32, num_classes=5)
SMALL_RES = RESNET_SPACE.narrowed([0, 1, 2, 4, 5, 7, 8, 18, 20], num_layers=(0, 0, 0, 2, 1, 2, 1, 1, 1),
                                  stages=(0, 1, 1, 2, 2, 3, 3, 4, 4, 5), fm_sizes=(16, 8, 8, 4, 4, 2, 2, 2, 2),
                                  adjoin_connect_nums=(3,) * 6, input_size=32, num_classes=5)


def _random_arch_params(graph, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    arch = DenseArchParams(graph, generator=g)
    with torch.no_grad():
        for p in arch.parameters():
            p.normal_(0, scale, generator=g)
    return arch


@pytest.mark.parametrize("cfg", [SMALL_MBV2, SMALL_RES], ids=["mbv2", "res"])
def test_viterbi_equals_brute_force(cfg):
    space = DenseNASSpace(cfg)
    paths = space.graph.paths()
    assert len(paths) > 5
    for seed in range(20):
        arch = _random_arch_params(space.graph, seed, scale=2.0)
        probs = [torch.softmax(b.detach().double(), -1).numpy() for b in arch.beta_weights]

        def score(path):
            return math.prod(probs[i][space.graph.outputs[i]["out_id"].index(j)] for i, j in zip(path, path[1:]))

        best = max(paths, key=score)
        assert derive_path(space.graph, [b.detach().numpy() for b in arch.beta_weights]) == best
    with pytest.raises(DenseSpaceError, match="cheapest child"):
        constrained_arch(space, arch, 0.5 * space.cost_range()[0])


def _all_archs(space):
    cfg, graph = space.cfg, space.graph
    for path in graph.paths():
        layers = [graph.inputs[n - 1]["num_stack_layers"] for n in path[1:-1]]
        for heads in itertools.product(cfg.head_ops, repeat=len(layers)):
            for stacks in itertools.product(*[list(itertools.product(cfg.stack_ops, repeat=k)) for k in layers]):
                yield {"path": path, "head": list(heads), "stack": [list(x) for x in stacks]}


BRUTE_MBV2 = dataclasses.replace(SMALL_MBV2, head_ops=SMALL_MBV2.head_ops[:2],
                                 stack_ops=(SMALL_MBV2.stack_ops[0], "skip_connect"))


@pytest.mark.parametrize("cfg", [BRUTE_MBV2, SMALL_RES], ids=["mbv2", "res"])
def test_ceiling_derivation_equals_brute_force(cfg):
    space = DenseNASSpace(cfg)
    graph = space.graph
    archs = list(_all_archs(space))
    assert 1000 < len(archs) < 100_000
    costs = [space.cost(a) for a in archs]
    for seed in range(2):
        params = _random_arch_params(graph, 100 + seed, scale=1.5)
        def table(plist):
            return [torch.log_softmax(p.detach().double(), -1).numpy() for p in plist]

        lb, lh, ls = table(params.beta_weights), table(params.alpha_head_weights), table(params.alpha_stack_weights)

        def score(a):
            total = 0.0
            for k, (i, j) in enumerate(zip(a["path"], a["path"][1:])):
                total += lb[i][graph.outputs[i]["out_id"].index(j)]
                if j == graph.num_nodes - 1:
                    continue
                branch = graph.inputs[j - 1]["in_block_idx"].index(i)
                total += lh[j - 1][branch][cfg.head_ops.index(a["head"][k])]
                for l, op in enumerate(a["stack"][k]):
                    total += ls[j - 1][l][cfg.stack_ops.index(op)]
            return total

        scores = [score(a) for a in archs]
        for q in (0.2, 0.5):
            ceiling = float(np.quantile(costs, q))
            best = max((s, i) for i, (s, c) in enumerate(zip(scores, costs)) if c <= ceiling)[1]
            found = constrained_arch(space, params, ceiling)
            assert found == archs[best] and space.cost(found) <= ceiling


@pytest.mark.parametrize("cfg", [SMALL_MBV2, SMALL_RES], ids=["mbv2", "res"])
def test_chained_estimate_equals_exact_cost_of_one_hot_archs(cfg):
    space = DenseNASSpace(cfg)
    graph = space.graph
    rng = np.random.RandomState(0)
    sample = Sample.all_ops(graph)
    for _ in range(10):
        arch = space.sample(rng)
        params = DenseArchParams(graph).double()
        with torch.no_grad():  # softmax of (0, -1e4, ...) is exactly one-hot in float64
            for p in params.parameters():
                p.fill_(-1e4)
            for i, j in zip(arch["path"], arch["path"][1:]):
                params.beta_weights[i][graph.outputs[i]["out_id"].index(j)] = 0
            for k, (prev, node) in enumerate(zip(arch["path"][:-2], arch["path"][1:-1])):
                branch = graph.inputs[node - 1]["in_block_idx"].index(prev)
                params.alpha_head_weights[node - 1][branch, cfg.head_ops.index(arch["head"][k])] = 0
                for l, op in enumerate(arch["stack"][k]):
                    params.alpha_stack_weights[node - 1][l, cfg.stack_ops.index(op)] = 0
            estimate = float(chained_cost(space.table, graph, path_weights(params, sample), sample))
        assert estimate == pytest.approx(space.cost(arch, skip_free=False), rel=1e-12)
        # the exact cost of the child drops skip layers; it never exceeds the estimate
        assert space.cost(arch) <= estimate + 1e-9


def test_cost_range_brackets_every_arch():
    space = DenseNASSpace(SMALL_MBV2)
    lo, hi = space.cost_range()
    rng = np.random.RandomState(1)
    costs = [space.cost(space.sample(rng)) for _ in range(200)]
    assert lo <= min(costs) and max(costs) <= hi and lo < hi


@pytest.mark.parametrize("cfg", [SMALL_MBV2, SMALL_RES], ids=["mbv2", "res"])
def test_child_equals_supernet_on_its_path(cfg):
    torch.manual_seed(0)
    space = DenseNASSpace(cfg)
    net = space.supernet(num_classes=5).eval()
    with torch.no_grad():  # non-trivial BN statistics
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    rng = np.random.RandomState(3)
    for _ in range(3):
        arch = space.sample(rng)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            expected = net.forward_arch(x, arch, head=cfg.net_type == "mbv2")
        entry = load_entry({"name": "densenas_space_child", "family": space.family, "arch": space.entry_arch(arch)})
        child = create_from_entry(entry, num_classes=5).eval()
        state = space.child_state_dict(net.state_dict(), arch)
        missing, unexpected = child.load_state_dict(state, strict=False)
        assert not unexpected
        if cfg.net_type == "mbv2":
            assert not missing
            with torch.no_grad():
                torch.testing.assert_close(child(x), expected, rtol=1e-5, atol=1e-5)
        else:
            assert sorted(missing) == ["fc.bias", "fc.weight"]  # RES_Net: no final conv1x1, a new classifier
            with torch.no_grad():
                torch.testing.assert_close(child.forward_features(x), expected, rtol=1e-5, atol=1e-5)
        # the official net_config round trip
        text = space.net_config(arch).to_text()
        assert parse_net_config(text).to_text() == text


def test_check_arch_names_the_field():
    space = DenseNASSpace(SMALL_MBV2)
    arch = space.sample(np.random.RandomState(0))
    bad = dict(arch, path=[0, 5] + arch["path"][1:])
    with pytest.raises(DenseSpaceError, match=r"arch\.path\[1\]': no edge 0 -> 5"):
        space.check_arch(bad)
    bad = dict(arch, head=["mbconv_k9_t9"] + arch["head"][1:])
    with pytest.raises(DenseSpaceError, match=r"arch\.head\[0\]"):
        space.check_arch(bad)
    rng = np.random.RandomState(2)
    for _ in range(20):
        space.check_arch(space.mutate(arch, rng, 0.5))
        space.check_arch(space.crossover(arch, space.sample(rng), rng))


def test_narrowed_space_keeps_the_official_untouched():
    before = RESNET_SPACE.chs
    assert len(SMALL_RES.chs) == 9 and RESNET_SPACE.chs == before
