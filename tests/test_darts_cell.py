"""The darts_cell entries follow the timm model contract (the checks of timm's tests/test_models.py), and the ops /
cell building blocks behave as the official DARTS / CDARTS ones."""
import math

import pytest
import timm
import torch
import torch.nn as nn

import nas_zoo
from nas_zoo.entry import EntryError, load_entry
from nas_zoo.families.darts_cell import (OPS, PRIMITIVES, DartsCellNet, FactorizedReduce, model_kwargs)

ENTRIES = ["cdarts_cifar", "cdarts_imagenet", "cdarts_cifar_arxiv_v1", "cdarts_imagenet_arxiv_v1", "darts_v1_cifar",
           "darts_v2_cifar", "pdarts_cifar", "pcdarts_cifar", "pcdarts_imagenet"]
TARGET_FFEAT_SIZE = 96  # timm's test sizes
TARGET_BWD_SIZE = 128

# every op of the space in both cells, 'none' included: the op coverage the per-layout tests below rely on
ALL_OPS = {
    "normal": [[["max_pool_3x3", 0], ["avg_pool_3x3", 1]], [["skip_connect", 0], ["sep_conv_3x3", 2]],
               [["sep_conv_5x5", 1], ["dil_conv_3x3", 3], ["none", 0]], [["dil_conv_5x5", 4], ["skip_connect", 1]]],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [[["skip_connect", 0], ["max_pool_3x3", 1]], [["avg_pool_3x3", 0], ["dil_conv_5x5", 2]],
               [["sep_conv_3x3", 1], ["none", 2]], [["sep_conv_5x5", 0], ["dil_conv_3x3", 4]]],
    "reduce_concat": [3, 4, 5],
}


def all_ops_entry(stem):
    return nas_zoo.register_entry({
        "name": f"test_darts_all_ops_{stem}", "family": "darts_cell",
        "arch": {"stem": stem, "init_channels": 8, "stem_multiplier": 3 if stem == "cifar" else 1,
                 "cells_per_stage": [2, 2, 2], "genotype": ALL_OPS, "drop_path_rate": 0.2},
        "pretrained": {"cifar10" if stem == "cifar" else "in1k": {
            "input_size": [3, 32, 32] if stem == "cifar" else [3, 224, 224],
            "num_classes": 10 if stem == "cifar" else 1000}},
    }, replace=True)


def input_size(model, target=None):
    size = tuple(model.pretrained_cfg["input_size"])
    return size if target is None else tuple(min(s, target) for s in size)


def native_size(name):
    return tuple(nas_zoo.get_entry(name).pretrained[nas_zoo.get_entry(name).default_tag]["input_size"])


# --------------------------------------------------------------------------------------------------------------
# the timm contract, for every entry


@pytest.mark.parametrize("name", ENTRIES)
def test_default_cfg_forward_features_and_heads(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    size = input_size(model)
    x = torch.randn(1, *size)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, cfg["num_classes"]) and not torch.isnan(out).any()
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features and feats.shape[-2:] == tuple(cfg["pool_size"])
        assert model.forward_head(feats, pre_logits=True).shape == (1, model.num_features)
        assert torch.equal(model.forward_head(feats), out)
        model.reset_classifier(0)
        assert model(x).shape == (1, model.num_features)
        model.reset_classifier(0, "")
        assert model(x).shape[-2:] == tuple(cfg["pool_size"]) and model(x).dim() == 4
        bare = timm.create_model(name, num_classes=0, global_pool="").eval()
        assert bare(x).dim() == 4
    state = timm.create_model(name).state_dict()
    assert cfg["classifier"] + ".weight" in state and cfg["first_conv"] + ".weight" in state
    assert isinstance(model.get_classifier(), nn.Identity)


@pytest.mark.parametrize("name", ENTRIES)
def test_backward_reaches_every_param_including_the_aux_head(name):
    """timm's test_model_backward, with the auxiliary head on (train mode returns (logits, aux_logits))."""
    model = timm.create_model(name, num_classes=42, auxiliary=True).train()
    num_params = sum(p.numel() for p in model.parameters())
    outputs = model(torch.randn(2, *native_size(name)))
    assert isinstance(outputs, tuple) and len(outputs) == 2
    outputs = torch.cat(outputs)
    outputs.mean().backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {n}"
    assert sum(p.grad.numel() for p in model.parameters()) == num_params
    assert outputs.shape[-1] == 42 and not torch.isnan(outputs).any()
    model.eval()  # eval: logits only
    with torch.no_grad():
        assert model(torch.randn(1, *native_size(name))).shape == (1, 42)


@pytest.mark.parametrize("name", ["cdarts_cifar", "cdarts_imagenet"])
def test_features_only_and_forward_intermediates(name):
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    info = timm.models.FeatureInfo(model.feature_info, list(range(len(model.feature_info))))
    size = input_size(model, TARGET_FFEAT_SIZE)
    x = torch.randn(1, *size)

    def check(outs, channels, reductions):
        assert len(outs) == len(channels) >= 4
        for c, r, o in zip(channels, reductions, outs):
            assert o.shape[1] == c and not torch.isnan(o).any()
            assert o.shape[-2] <= math.ceil(size[-2] / r) + 1 and o.shape[-1] <= math.ceil(size[-1] / r) + 1

    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        check(inter, info.channels(), info.reduction())
        assert torch.equal(final, model.forward_features(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True, stop_early=True)
        assert [t.shape for t in last_two] == [t.shape for t in inter[-2:]]
        for feature_cls in (None, "getter"):
            kwargs = {} if feature_cls is None else {"feature_cls": feature_cls}
            torch.manual_seed(0)  # the same weights as `model`
            fm = timm.create_model(name, features_only=True, **kwargs).eval()
            outs = fm(x)
            check(outs, fm.feature_info.channels(), fm.feature_info.reduction())
            assert fm.feature_info.channels() == info.channels()
            for a, b in zip(outs, inter):
                assert torch.allclose(a, b, atol=1e-5)
        fm = timm.create_model(name, features_only=True, out_indices=(1, 2))
        assert fm.feature_info.channels() == info.channels()[1:3]


# --------------------------------------------------------------------------------------------------------------
# TorchScript and FX: one CIFAR entry, one ImageNet entry, and small nets that hold every op of the space


def fx_model(model, train=False):
    """timm's test helper `_create_fx_model`: trace, return the final node(s) in train and eval mode."""
    from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names
    from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    tracer_kwargs = {"leaf_modules": get_notrace_modules(), "autowrap_functions": get_notrace_functions()}
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    train_return = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        graph_nodes = list(reversed(graph.nodes))
        output_names = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        graph_names = [n.name for n in graph_nodes]
        train_return = [train_nodes[-graph_names.index(n)] for n in output_names]
    return create_feature_extractor(model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]],
                                    tracer_kwargs=tracer_kwargs)


# scripting / tracing a 20-cell net takes 10-20 s (tests/test_timm_contract.py does it for cdarts_cifar); these
# small nets hold every op of the space, in both cells, with both stems
ALL_OPS_NETS = ["all_ops_cifar", "all_ops_imagenet"]


def resolve(name):
    return all_ops_entry(name.rsplit("_", 1)[1]) if name.startswith("all_ops") else name


@pytest.mark.parametrize("name", ALL_OPS_NETS)
def test_torchscript(name):
    name = resolve(name)
    model = timm.create_model(name).eval()
    x = torch.randn(1, *input_size(model, 128))
    scripted = torch.jit.script(model)
    with torch.no_grad():
        assert torch.equal(scripted(x), model(x))


@pytest.mark.parametrize("name", ALL_OPS_NETS)
def test_torchscript_with_aux_head_returns_logits(name):
    name = resolve(name)
    scripted = torch.jit.script(timm.create_model(name, num_classes=5, auxiliary=True).train())
    assert scripted(torch.randn(2, *native_size(name))).shape == (2, 5)


@pytest.mark.parametrize("name", ALL_OPS_NETS)
def test_fx_trace_forward(name):
    name = resolve(name)
    model = timm.create_model(name).eval()
    x = torch.randn(1, *input_size(model, 128))
    with torch.no_grad():
        ref = model(x)
        out = tuple(fx_model(model)(x).values())[0]
    assert torch.equal(out, ref)


@pytest.mark.parametrize("name", ALL_OPS_NETS)
def test_fx_trace_backward_with_aux_head(name):
    name = resolve(name)
    model = timm.create_model(name, num_classes=42, auxiliary=True).train()
    num_params = sum(p.numel() for p in model.parameters())
    traced = fx_model(model, train=True)
    outputs = torch.cat(tuple(traced(torch.randn(2, *native_size(name))).values()))
    outputs.mean().backward()
    assert sum(p.grad.numel() for p in traced.parameters() if p.grad is not None) == num_params
    assert outputs.shape[-1] == 42


# --------------------------------------------------------------------------------------------------------------
# ops, cell and family behaviour


def test_ops_are_the_eight_darts_candidates_and_keep_shapes():
    assert PRIMITIVES == ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                          "dil_conv_3x3", "dil_conv_5x5", "none")
    x = torch.randn(2, 8, 10, 10)
    for name in PRIMITIVES:
        for stride in (1, 2):
            op = OPS[name](8, stride, True).eval()
            assert op(x).shape == (2, 8, 10 // stride, 10 // stride), (name, stride)


def test_factorized_reduce_is_the_official_one_and_handles_odd_sizes():
    fr = FactorizedReduce(6, 8).eval()
    x = torch.randn(2, 6, 12, 12)
    relu = torch.relu(x)
    official = fr.bn(torch.cat([fr.conv1(relu), fr.conv2(relu[:, :, 1:, 1:])], dim=1))
    assert torch.equal(fr(x), official)
    assert fr(torch.randn(2, 6, 7, 7)).shape == (2, 8, 4, 4)


def test_drop_path_applies_to_non_identity_ops_in_training_only():
    model = timm.create_model(all_ops_entry("cifar"), drop_path_rate=0.0).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        model.set_drop_path_rate(0.5)
        assert torch.equal(model(x), ref)  # eval: no drop
        model.train()
        torch.manual_seed(0)
        a = model.forward_features(x)
        torch.manual_seed(1)
        b = model.forward_features(x)
    assert not torch.equal(a, b)
    cell = model.cells[0]
    assert [type(op).__name__ for op, d in zip(cell.ops, cell.droppable) if not d] == ["Identity", "Identity"]


def test_stage_genotypes_build_one_cell_type_per_stage():
    cifar = nas_zoo.get_entry("cdarts_cifar").arch["genotype"]
    feb = nas_zoo.get_entry("darts_v2_cifar").arch["genotype"]
    entry = load_entry({"name": "x", "family": "darts_cell",
                        "arch": {"stem": "cifar", "init_channels": 8, "stem_multiplier": 3, "cells_per_stage": [2, 2],
                                 "stage_genotypes": [cifar, feb]}})
    model = DartsCellNet(**model_kwargs(entry.arch), num_classes=10)
    # stage 1's cells are darts_v2 cells: its normal cell ends with dil_conv_3x3 from node 2
    assert type(model.cells[2].ops[-1]).__name__ == "DwSepConv" and type(model.cells[0].ops[-1]).__name__ == "Identity"


@pytest.mark.parametrize("change, field, message", [
    ({"cells_per_stage": []}, "arch.cells_per_stage", "at least one stage"),
    ({"cells_per_stage": [7, 0, 6]}, r"arch.cells_per_stage\[1\]", "integer >= 1"),
    ({"stem": "resnet"}, "arch.stem", "expected one of"),
    ({"stem": "imagenet", "init_channels": 7}, "arch.init_channels", "even number"),
    ({"stage_genotypes": []}, "arch.genotype", "exactly one of"),
    ({"genotype": None, "stage_genotypes": [ALL_OPS]}, "arch.stage_genotypes", "expected 3 genotypes"),
    ({"genotype": {**ALL_OPS, "normal_concat": [2, 9]}}, r"arch.genotype.normal_concat\[1\]", "state index"),
    ({"genotype": "Genotype(normal=x)"}, "arch.genotype", "the name 'x' is not allowed"),
    ({"width": 3}, "arch.width", "unknown field"),
    ({"drop_path_rate": 1.5}, "arch.drop_path_rate", r"number in \[0, 0.99\]"),
])
def test_bad_arch_is_one_clear_entry_error(change, field, message):
    arch = {"stem": "cifar", "init_channels": 36, "stem_multiplier": 3, "cells_per_stage": [7, 7, 6],
            "genotype": ALL_OPS, **change}
    arch = {k: v for k, v in arch.items() if v is not None}
    with pytest.raises(EntryError, match=rf"field '{field}': .*{message}"):
        load_entry({"name": "bad", "family": "darts_cell", "arch": arch}, source="bad.yaml")


def test_aux_head_below_its_minimum_size_is_one_clear_error():
    model = timm.create_model(all_ops_entry("imagenet"), auxiliary=True).train()
    with pytest.raises(AssertionError, match="auxiliary head needs a larger feature map"):
        model(torch.randn(2, 3, 128, 128))
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 128)).shape == (1, 1000)  # eval never runs the aux head


RELEASED = {"cdarts_cifar": "cifar10", "cdarts_imagenet": "in1k"}


@pytest.mark.parametrize("name", ENTRIES)
def test_pretrained_cfg_carries_the_official_eval_and_provenance(name):
    entry = nas_zoo.get_entry(name)
    cifar = entry.arch["stem"] == "cifar"
    assert entry.default_tag == ("cifar10" if cifar else "in1k")
    cfg = entry.pretrained[entry.default_tag]
    for key in ("license", "origin_url", "paper_ids", "official_note", "num_classes"):
        assert cfg.get(key), key
    if name in RELEASED:
        assert cfg["hf_hub_id"] == f"nas-zoo/{name}.{RELEASED[name]}"
        assert cfg["official_weights"] == "state_dict" and cfg["official_download"].startswith("https://")
    else:  # architecture only: no weight source, and timm does not list it as pretrained
        assert not any(cfg.get(k) for k in ("hf_hub_id", "url", "file"))
        assert f"{name}.{entry.default_tag}" not in timm.list_models(pretrained=True)
        assert cfg["official_note"].startswith("Architecture only")
    model = timm.create_model(name)
    data = timm.data.resolve_data_config({}, model=model)
    if cifar:
        assert data["input_size"] == (3, 32, 32) and data["crop_pct"] == 1.0 and model.num_classes == 10
        assert data["mean"] == (0.49139968, 0.48215827, 0.44653124)
    else:
        assert data["input_size"] == (3, 224, 224) and data["crop_pct"] == 0.875 and model.num_classes == 1000
        assert data["interpolation"] == "bilinear" and data["mean"] == (0.485, 0.456, 0.406)
    assert entry.paper.get("top1") and entry.paper.get("arxiv")


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_pruning_to_each_tap_ends_the_features_there(stem):
    """timm's prune contract: after prune_intermediate_layers([i]) the features end at tap i, every param is used."""
    import copy
    model = timm.create_model(all_ops_entry(stem), drop_path_rate=0.0).eval()
    x = torch.randn(2, *input_size(model, 64))
    with torch.no_grad():
        taps = model.forward_intermediates(x, intermediates_only=True)
    for i in range(len(taps)):
        pruned = copy.deepcopy(model)
        take = pruned.prune_intermediate_layers([i])
        with torch.no_grad():
            assert torch.equal(pruned.forward_features(x), taps[i])
            assert torch.equal(pruned.forward_intermediates(x, indices=take, intermediates_only=True)[0], taps[i])
        assert pruned.num_features == taps[i].shape[1] and pruned(x).shape == (2, taps[i].shape[1], *taps[i].shape[2:])
        pruned.train()
        pruned.forward_features(x).sum().backward()
        assert not [n for n, p in pruned.named_parameters() if p.grad is None]
