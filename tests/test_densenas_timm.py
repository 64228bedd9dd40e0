"""timm conventions for the ResNet-based DenseNAS family (no built-in entry has it, so tests/test_timm_contract.py,
which covers every registered entry including densenas_a/b/c, does not reach it)."""
import pytest
import timm
import torch
from timm.layers import create_feature_extractor, get_graph_node_names

import nas_zoo
from nas_zoo.families.densenas import parse_net_config

RES_NETS = {
    # the ResNet-space example of the fixtures (basic blocks, width changes at stride 1)
    "densenas_res_basic_test": "[[32, 56], 'basic_block', [], 0, 2]|[[56, 96], 'basic_block', [], 0, 2]|"
                               "[[96, 176], 'basic_block', [], 0, 2]|"
                               "[[176, 208], 'basic_block', ['basic_block'], 1, 1]|"
                               "[[208, 272], 'basic_block', [], 0, 2]|[[272, 512], 'basic_block', [], 0, 1]",
    # bottlenecks, a stride-1 first block (stem and block 0 share a reduction) and an identity stack layer
    "densenas_res_bottle_test": "[[32, 40], 'bottle_neck', ['bottle_neck', 'skip_connect'], 2, 1]|"
                                "[[40, 48], 'bottle_neck', [], 0, 2]|[[48, 64], 'bottle_neck', [], 0, 2]|"
                                "[[64, 64], 'bottle_neck', [], 0, 2]|[[64, 96], 'bottle_neck', [], 0, 2]",
}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", autouse=True)
def res_entries():
    for name, text in RES_NETS.items():
        family, arch = parse_net_config(text, net_type="res").to_family_arch()
        nas_zoo.register_entry({"name": name, "family": family, "arch": arch})


@pytest.fixture(params=list(RES_NETS))
def name(request):
    return request.param


def test_forward_backward_reaches_every_parameter(name):
    model = timm.create_model(name, num_classes=42).train()
    out = model(X)
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"


def test_features_head_and_classifier_reset(name):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        features = model.forward_features(X)
        assert features.shape == (2, model.num_features, 2, 2)
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
        assert torch.allclose(model.forward_head(features), model(X))
        assert model.get_classifier().out_features == 1000
        model.reset_classifier(0)
        assert model(X).shape == (2, model.num_features)
        model.reset_classifier(0, "")
        assert model(X).shape == (2, model.num_features, 2, 2)
        model.reset_classifier(7)  # keeps the pooling
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features, 2, 2)
        model.reset_classifier(7, "avg")
        assert model(X).shape == (2, 7)


@pytest.mark.parametrize("feature_cls", [None, "getter"])
def test_features_only_matches_feature_info(name, feature_cls):
    kwargs = {} if feature_cls is None else {"feature_cls": feature_cls}
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    with torch.no_grad():
        features = model(X)
    info = model.feature_info
    assert len(features) == len(info.channels()) >= 4
    for f, chs, red in zip(features, info.channels(), info.reduction()):
        assert f.shape == (2, chs, 64 // red, 64 // red)
    assert info.reduction()[-1] == 32 and len(set(info.reduction())) == len(info.reduction())
    picked = timm.create_model(name, features_only=True, out_indices=(1, 3), **kwargs).eval()
    with torch.no_grad():
        assert [f.shape[1] for f in picked(X)] == picked.feature_info.channels() == info.channels()[1:4:2]


def test_forward_intermediates(name):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(X)
        assert torch.allclose(final, model.forward_features(X))
        reductions = [i["reduction"] for i in model.feature_info]
        assert [t.shape[-1] for t in intermediates] == [64 // r for r in reductions]
        last_two = model.forward_intermediates(X, indices=2, intermediates_only=True)
        assert [t.shape for t in last_two] == [t.shape for t in intermediates[-2:]]


def test_grad_checkpointing_gives_the_same_result(name):
    model = timm.create_model(name).train()
    torch.manual_seed(0)
    reference = model(X)
    model.set_grad_checkpointing(True)
    out = model(X)
    out.sum().backward()
    assert torch.allclose(out, reference, atol=1e-5)


def test_torchscript_and_fx(name):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        reference = model(X)
        assert torch.allclose(torch.jit.script(model)(X), reference, atol=1e-5)
        _, eval_nodes = get_graph_node_names(model)
        fx_model = create_feature_extractor(model, return_nodes=[eval_nodes[-1]]).eval()
        assert torch.allclose(next(iter(fx_model(X).values())), reference, atol=1e-5)


def test_group_matcher_covers_every_parameter(name):
    from timm.models import group_parameters
    model = timm.create_model(name)
    grouped = group_parameters(model, model.group_matcher())
    assert sum(len(g) for g in grouped.values()) == len(list(model.parameters()))
    groups = list(grouped.values())  # stem, one group per layer, the classifier
    assert len(groups) == 2 + sum(len(s) for s in model.stages)
    assert groups[0][0].startswith("stem.") and groups[-1] == ["fc.weight", "fc.bias"]


def test_pool_size_matches_features(name):
    model = timm.create_model(name).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, *model.pretrained_cfg["input_size"]))
    assert tuple(features.shape[-2:]) == tuple(model.pretrained_cfg["pool_size"]) == (7, 7)
