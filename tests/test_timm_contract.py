"""Every registered zoo model behaves as a timm model: the API checks of timm's own tests/test_models.py.

Parametrized over the whole registry, so each new entry and family is covered when it lands.
"""
import pytest
import timm
import torch
from timm.models._features_fx import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import nas_zoo

# one representative per distinct family/model class keeps the slow checks (jit, fx) affordable
NAMES = sorted(e.name for e in nas_zoo.list_entries())


def _representatives():
    seen, reps = set(), []
    for name in NAMES:
        entry = nas_zoo.get_entry(name)
        key = (entry.family, entry.arch.get("model", entry.arch.get("layout", "")))
        if key not in seen:
            seen.add(key)
            reps.append(name)
    return reps


REPS = _representatives()


def small_input(model, batch=2):
    """A small input the model accepts: 64 px for ImageNet models, their own size for 32 px models."""
    _, h, w = model.pretrained_cfg["input_size"]
    side = min(h, 64) if h > 32 else h
    return torch.randn(batch, 3, side, side)


def _as_tensor(out):
    return torch.cat([o.flatten(1) for o in out], 1) if isinstance(out, (tuple, list)) else out


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_all_params_get_grads(name):
    model = timm.create_model(name, num_classes=42)
    model.train()
    x = small_input(model)
    out = model(x)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    assert logits.shape == (2, 42)
    _as_tensor(out).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_features_head_and_reset_classifier(name):
    model = timm.create_model(name).eval()
    x = small_input(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, getattr(model, "head_hidden_size", model.num_features))
        assert model.forward_head(feats).shape == (2, model.num_classes)
        assert model.get_classifier() is not None
        model.reset_classifier(0)
        assert model.num_classes == 0
        assert model(x).shape == (2, getattr(model, "head_hidden_size", model.num_features))
        model.reset_classifier(0, "")
        unpooled = model(x)
        # MobileNetV3-style heads keep their conv head: head_hidden_size channels, unpooled
        assert unpooled.dim() == 4
        assert unpooled.shape[1] in (model.num_features, getattr(model, "head_hidden_size", model.num_features))
    cfg = model.pretrained_cfg
    assert cfg["first_conv"] and cfg["classifier"]
    full = timm.create_model(name)
    names = dict(full.named_modules())
    assert cfg["first_conv"] in names and cfg["classifier"] in names


@pytest.mark.parametrize("name", NAMES)
def test_pool_size_matches_features(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, *cfg["input_size"]))
    assert tuple(feats.shape[-2:]) == tuple(cfg["pool_size"])


@pytest.mark.parametrize("feature_cls", [None, "getter"])
@pytest.mark.parametrize("name", NAMES)
def test_features_only(name, feature_cls):
    kwargs = {"feature_cls": feature_cls} if feature_cls else {}
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    x = small_input(model)
    with torch.no_grad():
        outs = model(x)
    info = model.feature_info
    assert len(outs) == len(info.channels())
    for out, chs, red in zip(outs, info.channels(), info.reduction()):
        assert out.shape[1] == chs
        assert out.shape[-1] == x.shape[-1] // red or out.shape[-1] == -(-x.shape[-1] // red)


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates(name):
    model = timm.create_model(name).eval()
    x = small_input(model)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.allclose(final, model.forward_features(x), atol=1e-5)
        info = model.feature_info
        assert [t.shape[1] for t in inter] == [f["num_chs"] for f in info]
        only = model.forward_intermediates(x, intermediates_only=True)
        assert [t.shape for t in only] == [t.shape for t in inter]


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_same_result(name):
    """Train-mode outputs and gradients are the same with and without activation checkpointing
    (same seed, so dropout / drop-path draw the same masks; BN statistics frozen)."""
    model = timm.create_model(name).train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    x = small_input(model)
    results = []
    for checkpointing in (False, True):
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        torch.manual_seed(0)
        out = _as_tensor(model(x))
        out.sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((out.detach(), grads))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", REPS)
def test_torchscript(name):
    model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = small_input(model)
    with torch.no_grad():
        assert torch.allclose(scripted(x), model(x), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", REPS)
def test_fx_trace(name):
    model = timm.create_model(name).eval()
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx_model = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                        eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs).eval()
    x = small_input(model)
    with torch.no_grad():
        out = tuple(fx_model(x).values())[0]
        assert torch.allclose(out, model(x), atol=1e-5)
