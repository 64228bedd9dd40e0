"""The timm model contract for every shufflenet_spos entry (what timm's own tests/test_models.py checks)."""
from pathlib import Path

import pytest
import timm
import torch
from timm.layers import get_notrace_functions, get_notrace_modules
from timm.models._manipulate import group_parameters
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import nas_zoo
from nas_zoo.registry import builtin_entry_dir

MODELS = sorted(e.name for e in nas_zoo.list_entries("shufflenet_spos") if Path(e.source).parent == builtin_entry_dir())
SIZE = 96  # final map 3x3: small and fast; the adaptive pool does not care


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_every_released_entry_is_covered():
    assert {"dsnas_search240", "dsnas_retrain240", "spos_retrain240"} <= set(MODELS)


def _x(batch=2, size=SIZE):
    return torch.randn(batch, 3, size, size)


def _fx_model(model, train=False):
    """As timm's tests/test_models.py `_create_fx_model`: trace with timm's no-trace leaves, return the output node."""
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    train_return_nodes = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        graph_nodes = list(reversed(graph.nodes))
        output_names = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        names = [n.name for n in graph_nodes]
        train_return_nodes = [train_nodes[-names.index(n)] for n in output_names]
    return create_feature_extractor(model, train_return_nodes=train_return_nodes,
                                    eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_reaches_every_parameter(name):
    model = timm.create_model(name, num_classes=42).train()
    out = model(_x())
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("name", MODELS)
def test_features_head_and_classifier_reset(name):
    model = timm.create_model(name).eval()
    x = _x()
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, model.num_features, SIZE // 32, SIZE // 32)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        logits = model.forward_head(feats)
        assert logits.shape == (2, 1000)
        assert torch.equal(model(x), logits)
        assert model.get_classifier() is model.fc and model.fc.bias is None
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
        model.reset_classifier(0, "")
        assert model(x).shape == feats.shape
        model.reset_classifier(7, "avg")
        assert model(x).shape == (2, 7)


@pytest.mark.parametrize("name", MODELS)
def test_features_only_native_and_getter(name):
    x = _x(1, 128)
    outs = {}
    for cls in ("list", "getter", "fx"):
        torch.manual_seed(0)  # the same weights in each wrapper
        model = timm.create_model(name, features_only=True, feature_cls=cls).eval()
        with torch.no_grad():
            outs[cls] = model(x)
        info = model.feature_info
        assert info.channels() == [16, 64, 160, 320, 640]
        assert info.reduction() == [2, 4, 8, 16, 32]
        assert [o.shape[1] for o in outs[cls]] == info.channels()
        assert [o.shape[-1] for o in outs[cls]] == [128 // r for r in info.reduction()]
    for cls in ("getter", "fx"):
        assert all(torch.equal(a, b) for a, b in zip(outs["list"], outs[cls])), cls
    model = timm.create_model(name, features_only=True, out_indices=(1, 3))
    assert model.feature_info.channels() == [64, 320]
    assert [o.shape[1] for o in model(x)] == [64, 320]


@pytest.mark.parametrize("name", MODELS)
def test_forward_intermediates(name):
    model = timm.create_model(name).eval()
    x = _x()
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert [t.shape[1] for t in inter] == [f["num_chs"] for f in model.feature_info]
        assert [t.shape[-1] for t in inter] == [-(-SIZE // f["reduction"]) for f in model.feature_info]
        assert torch.equal(final, model.forward_features(x))
        last2 = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [t.shape[1] for t in last2] == [320, 640] and torch.equal(last2[-1], inter[-1])
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        assert torch.equal(early[0], inter[1])
        kept = model.prune_intermediate_layers([0, 2])
        assert kept == [0, 2] and len(model.stages) == 2
        pruned = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
        assert torch.equal(pruned[1], inter[2])


@pytest.mark.parametrize("name", MODELS)
def test_grad_checkpointing_gives_the_same_output_and_grads(name):
    model = timm.create_model(name, drop_rate=0.0).eval()
    x = _x()
    ref = model(x)
    ref.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    assert torch.allclose(out, ref, atol=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], atol=1e-5), n
    final, _ = model.forward_intermediates(x)
    assert torch.allclose(final, model.forward_features(x), atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_group_matcher_covers_every_parameter(name):
    model = timm.create_model(name)
    for coarse in (False, True):
        groups = group_parameters(model, model.group_matcher(coarse=coarse))
        grouped = [n for names in groups.values() for n in names]
        assert sorted(grouped) == sorted(n for n, _ in model.named_parameters())
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert len(coarse) == 1 + 4 + 1  # stem, 4 stages (final_conv joins the last), fc
    assert coarse[4][-1].startswith("final_conv") and coarse[5] == ["fc.weight"]
    assert len(group_parameters(model, model.group_matcher())) == 1 + 20 + 1


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", MODELS)
def test_torchscript(name):
    model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = _x(1)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_fx_forward_and_backward(name):
    model = timm.create_model(name).eval()
    x = _x(1)
    with torch.inference_mode():
        out = model(x)
        fx_out = torch.cat(tuple(_fx_model(model)(x).values()))
    assert torch.equal(fx_out, out)

    model = timm.create_model(name, num_classes=42).train()
    fx_model = _fx_model(model, train=True)
    outputs = torch.cat(tuple(fx_model(_x()).values()))
    outputs.mean().backward()
    assert outputs.shape[-1] == 42
    missing = [n for n, p in fx_model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
