"""Cost lookup tables (nas_zoo.search.cost): a child network priced by table lookup costs exactly what counting it
whole gives (MACs and parameters), for timm-block spaces (DNA, Cream) and module-factory spaces (SPOS)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from timm.models.efficientnet import EfficientNet

from nas_zoo.families.efficientnet import model_kwargs
from nas_zoo.search.cost import (ChoiceLayer, CostTable, CostTableError, FixedPart, chain_layers, count_macs,
                                 count_params, fixed_parts, measure_cost_tables, measure_op, timm_block)
from nas_zoo.search.methods.dna_select import StagePotentials, select

# A small DNA-style space: MBConv ops (expansion, kernel) with SE, stages (width, stride, layers)
PRIMS = [(6, 3), (3, 5), (6, 7)]
STAGES = [(24, 2, 2), (40, 2, 3), (48, 1, 2)]
STEM = ["ds_r1_k3_s1_c16_se0.25"]
INPUT = (3, 64, 64)


def op_strings():
    return [[[f"ir_r1_k{k}_s{stride if l == 0 else 1}_e{e}_c{c}_se0.25" for e, k in PRIMS] for l in range(n)]
            for c, stride, n in STAGES]


def child(choice, num_features=96):
    strings = op_strings()
    arch = {"model": "efficientnet", "stem_size": 16, "num_features": num_features, "act_layer": "swish",
            "block_args": [STEM] + [[strings[s][l][op] for l, op in enumerate(ops)] for s, ops in enumerate(choice)]}
    with torch.device("meta"):
        return EfficientNet(num_classes=10, **model_kwargs(arch))


FIXED = ["conv_stem", "bn1", "blocks.0", "conv_head", "bn2", "global_pool", "classifier"]


@pytest.fixture(scope="module")
def dna_tables():
    layers = chain_layers(op_strings(), (16, 32, 32))
    parts = fixed_parts(child([[0] * n for _, _, n in STAGES]), INPUT, FIXED)
    return measure_cost_tables(layers, ("macs", "params"), fixed=parts)


def random_choices(rng, count):
    return [[rng.integers(0, len(PRIMS), n).tolist() for _, _, n in STAGES] for _ in range(count)]


def test_table_price_equals_the_counted_child_network(dna_tables):
    macs, params = dna_tables["macs"], dna_tables["params"]
    rng = np.random.default_rng(0)
    choices = random_choices(rng, 6) + [[[2] * n for _, _, n in STAGES]]
    for choice in choices:
        net = child(choice)
        assert macs.price(choice) == count_macs(net, INPUT)
        assert params.price(choice) == count_params(net)
    # the tables distinguish the ops: a different choice has a different cost
    assert len({macs.price(c) for c in choices}) == len(choices)


def test_layer_inputs_follow_the_chain(dna_tables):
    layers = chain_layers(op_strings(), (16, 32, 32))
    assert [[l.input_size for l in stage] for stage in layers] == [
        [(16, 32, 32), (24, 16, 16)], [(24, 16, 16), (40, 8, 8), (40, 8, 8)], [(40, 8, 8), (48, 8, 8)]]
    table = dna_tables["macs"].to_dict()
    assert len(table["stages"]) == 3 and [len(s) for s in table["stages"]] == [2, 3, 2]
    assert table["stages"][1][1] == table["stages"][1][2]  # identical layers, measured once
    assert table["unit"] == "MACs" and isinstance(table["fixed"], int)


def test_price_batch_prices_millions_without_building(dna_tables):
    macs = dna_tables["macs"]
    rng = np.random.default_rng(1)
    ops = rng.integers(0, len(PRIMS), (200_000, sum(n for _, _, n in STAGES)))
    totals = macs.price_batch(ops)
    for i in (0, 1, 12345, 199_999):
        row, arch, start = ops[i].tolist(), [], 0
        for _, _, n in STAGES:
            arch.append(row[start:start + n])
            start += n
        assert totals[i] == macs.price(arch)
    with pytest.raises(CostTableError, match="op index 3 at layer 0 is out of range; that layer has 3 ops"):
        macs.price_batch(np.full((1, ops.shape[1]), 3))


def test_json_round_trip_is_the_cost_table_format(dna_tables, tmp_path):
    path = dna_tables["macs"].save(tmp_path / "cost-macs.json")
    data = json.loads(path.read_text())
    assert set(data) == {"stages", "fixed", "unit", "meta"}
    again = CostTable.from_json(path)
    assert again == dna_tables["macs"]
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file of the atomic write is gone


def test_measured_table_prices_the_dna_selection(dna_tables):
    """The whole chain: measured MACs table -> exact selection -> the selected child really fits the budget."""
    rng = np.random.default_rng(2)
    pots = []
    for s, (_, _, n) in enumerate(STAGES):
        ops = np.indices((len(PRIMS),) * n).reshape(n, -1).T
        pots.append(StagePotentials(stage=s, depth=n, ops=ops, metrics={"cl_loss": rng.uniform(0.2, 0.5, len(ops))}))
    macs = dna_tables["macs"]
    cheapest = macs.fixed + sum(min(row) for stage in macs.stages for row in stage)
    dearest = macs.fixed + sum(max(row) for stage in macs.stages for row in stage)
    budget = cheapest + 0.4 * (dearest - cheapest)
    sel = select(pots, macs, budget)
    assert count_macs(child(sel.stages), INPUT) == sel.cost <= budget


class ShuffleLike(nn.Module):
    """An SPOS-style choice op (a plain module, not a timm block): pointwise - depthwise kxk - pointwise."""

    def __init__(self, chs, kernel):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(chs, chs, 1, bias=False), nn.BatchNorm2d(chs), nn.ReLU(),
                                  nn.Conv2d(chs, chs, kernel, padding=kernel // 2, groups=chs, bias=False),
                                  nn.BatchNorm2d(chs), nn.Conv2d(chs, chs, 1, bias=False), nn.BatchNorm2d(chs))

    def forward(self, x):
        return x + self.body(x)


def test_module_factory_space_prices_exactly():
    chs = 8
    kernels = (3, 5, 7)
    ops = [[(lambda k=k: ShuffleLike(chs, k)) for k in kernels] + [nn.Identity] for _ in range(4)]
    layers = chain_layers([ops[:2], ops[2:]], (chs, 16, 16))
    stem = nn.Conv2d(3, chs, 3, stride=2, padding=1)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(chs, 5))
    tables = measure_cost_tables(layers, ("macs", "params"),
                                 fixed=[FixedPart(stem, (3, 32, 32)), FixedPart(head, (chs, 16, 16))])
    assert tables["macs"].stages[0][0][3] == 0  # the identity op (a skip) is free
    for choice in ([[0, 1], [2, 3]], [[3, 3], [3, 3]], [[2, 2], [1, 0]]):
        flat = [op for stage in choice for op in stage]
        net = nn.Sequential(stem, *[ops[i][op]() for i, op in enumerate(flat)], head)
        assert tables["macs"].price(choice) == count_macs(net, (3, 32, 32))
        assert tables["params"].price(choice) == count_params(net)


def test_latency_table_on_this_device():
    layers = [[ChoiceLayer(["ir_r1_k3_s1_e3_c16_se0.25", "ir_r1_k7_s1_e6_c16_se0.25"], (16, 16, 16))]]
    tables = measure_cost_tables(layers, ("latency",), fixed={"latency": 0.5}, min_run_time=0.01)
    lat = tables["latency"]
    values = lat.stages[0][0]
    assert len(values) == 2 and all(np.isfinite(v) and v > 0 for v in values)
    assert lat.unit == "ms" and lat.fixed == 0.5
    assert lat.meta["device"].startswith("cpu") and lat.meta["batch_size"] == 1 and "num_threads" in lat.meta


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_latency_on_cuda():
    cost = measure_op("ir_r1_k5_s1_e6_c32_se0.25", (32, 28, 28), ("latency", "macs"), device="cuda",
                      batch_size=8, min_run_time=0.05)
    assert cost["latency"] > 0 and cost["macs"] > 0


def test_measure_op_leaves_the_module_in_place():
    module = nn.Conv2d(4, 8, 3)
    assert measure_op(module, (4, 10, 10)) == {"macs": 8 * 4 * 9 * 64, "params": 8 * 4 * 9 + 8}
    assert module.weight.device.type == "cpu"


def test_bad_space_descriptions():
    with pytest.raises(ValueError, match="stage 0 layer 0: the ops produce different output sizes"):
        chain_layers([[["ir_r1_k3_s1_e6_c16_se0.25", "ir_r1_k3_s2_e6_c16_se0.25"]]], (16, 8, 8))
    with pytest.raises(ValueError, match="not a valid timm block string 'zz_r1'"):
        timm_block("zz_r1", 16)
    with pytest.raises(ValueError, match="repeats it 2 times"):
        timm_block("ir_r2_k3_s1_e6_c16", 16)
    with pytest.raises(ValueError, match="unknown cost metric 'flops'"):
        measure_op(nn.Identity(), (1,), ("flops",))
    with pytest.raises(TypeError, match="returned int, expected an nn.Module"):
        measure_op(lambda: 3, (1,))
    with pytest.raises(ValueError, match="has no submodule 'stem'"):
        fixed_parts(child([[0] * n for _, _, n in STAGES]), INPUT, ["stem"])


def test_depth_specific_rows():
    table = CostTable(stages=[{"1": [[1, 2]], "2": [[10, 20], [30, 40]]}], fixed=5)
    assert table.price([[1]]) == 7 and table.price([[1, 0]]) == 55
    with pytest.raises(CostTableError, match=r"defines depths \[1, 2\]; no rows for depth 3"):
        table.price([[0, 0, 0]])
    assert table.to_dict() == {"stages": [{"1": [[1, 2]], "2": [[10, 20], [30, 40]]}], "fixed": 5}


def test_dna_c_priced_from_the_dna_space_table():
    """DNA-c read off a MACs/params table of the official DNA search space (B0 widths, 2/4/4/4/4/1 layers, ops in
    PRIMITIVES order) costs what the reference measured on the released model (tests/fixtures/dna/dna_c)."""
    facts = json.loads((Path(__file__).parent / "fixtures" / "dna" / "dna_c" / "facts.json").read_text())
    prims = [(6, 3), (6, 5), (6, 7), (3, 3), (3, 5), (3, 7)]
    cfg = [(24, 2, 2), (40, 2, 4), (80, 2, 4), (112, 1, 4), (192, 2, 4), (320, 1, 1)]
    stages = [[[f"ir_r1_k{k}_s{s if l == 0 else 1}_e{e}_c{c}_se0.25" for e, k in prims] for l in range(n)]
              for c, s, n in cfg]
    arch = {"model": "efficientnet", "stem_size": 32, "num_features": 1280, "act_layer": "swish",
            "block_args": [["ds_r1_k3_s1_c16_se0.25"]] + [[l[0] for l in st] for st in stages]}
    with torch.device("meta"):
        any_child = EfficientNet(**model_kwargs(arch))
    tables = measure_cost_tables(chain_layers(stages, (16, 112, 112)), ("macs", "params"),
                                 fixed=fixed_parts(any_child, (3, 224, 224), FIXED))
    # DNA-c's layers as supernet op indices (reference meta.json: supernet_op_indices_per_searched_stage; the
    # 320-wide stage is MB6_3x3)
    dna_c = [[1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 4], [1, 4, 1, 1], [0]]
    assert tables["macs"].price(dna_c) == facts["macs_conv_linear"]["224"]
    assert tables["params"].price(dna_c) == facts["num_params"]
