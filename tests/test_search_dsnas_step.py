"""The DSNAS search step against single steps of the official code (tests/fixtures/dsnas/search_step, README there).

The supernet is `nas_zoo.search.spaces.shufflenet` (blocks from the shufflenet_spos family) loaded with the
official supernet's synthetic weights; the step is `nas_zoo.search.dsnas_step`. Tolerances are the README's:
gradients in float64 (rtol 1e-9, atol 1e-11), float32 only for logits (3e-5), losses (1e-5) and discrete outputs.
"""
import json

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy

import nas_zoo
from nas_zoo.search.dsnas_step import ArchParameters, EarlyFix, dsnas_step, flops_table_mmacs, max_child
from nas_zoo.search.spaces.shufflenet import ShuffleNetSpace, official_key
from reference import Fixture, search_step_file, synth_input, synth_tensor

FAMILY = "dsnas"
RTOL, ATOL = 1e-9, 1e-11
LOGITS_ATOL, LOSS_ATOL = 3e-5, 1e-5
DTYPES = {"": torch.float32, "_f64": torch.float64}


def meta():
    return json.loads(search_step_file(FAMILY, "meta.json").read_text())


def ref(name, suffix=""):
    return np.load(search_step_file(FAMILY, f"{name}{suffix}.npy"))


def onehot(index, dtype, num_ops=4):
    return F.one_hot(torch.tensor(index), num_ops).to(dtype)


def assert_close(name, got, want, rtol=RTOL, atol=ATOL):
    got = got.detach().numpy() if torch.is_tensor(got) else np.asarray(got)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)


@pytest.fixture(scope="module")
def space():
    return ShuffleNetSpace()


@pytest.fixture(scope="module")
def official_weights():
    keys = json.loads(search_step_file(FAMILY, "supernet_state_keys.json").read_text())
    return keys, {k: torch.from_numpy(synth_tensor(k, s, d)) for k, s, d in keys}


@pytest.fixture(scope="module")
def supernet(space, official_weights):
    """Factory: the supernet with the official synthetic weights, in a dtype, grads cleared, train mode."""
    _, weights = official_weights
    net = space.supernet(1000)
    net.load_state_dict({official_key(k): v for k, v in weights.items() if k != "log_alpha"}, strict=True)

    def make(dtype):
        net.load_state_dict({official_key(k): v for k, v in weights.items() if k != "log_alpha"}, strict=True)
        net.to(dtype).train()
        net.zero_grad(set_to_none=True)
        return net
    return make


def run_step(supernet, dtype, log_alpha_file, z_index, **flops):
    net = supernet(dtype)
    log_alpha = torch.nn.Parameter(torch.from_numpy(ref(log_alpha_file)).to(dtype))
    x = synth_input(2, 224, 224, seed=meta()["seed"]).to(dtype)
    y = torch.tensor(meta()["inputs"]["labels"])
    result = dsnas_step(net, log_alpha, x, y, LabelSmoothingCrossEntropy(0.1), onehot(z_index, dtype), **flops)
    return net, log_alpha, result


def check_losses(result, case):
    assert abs(result.error_loss.item() - case["error_loss"]) <= LOSS_ATOL
    assert abs(result.loss_alpha.item() - case["loss_alpha"]) <= LOSS_ATOL


# ------------------------------------------------------------------------------------------ the space

def test_block_macs_equal_the_reference_lut(space):
    lut = np.array(Fixture("dsnas", "supernet_reference").facts["block_macs_lut_224"])
    table, _ = space.cost_table("macs", 224)
    assert table.shape == (20, 4)
    np.testing.assert_array_equal(table, lut)


@pytest.mark.parametrize("name", ["dsnas_search240", "spos_retrain240"])
def test_cost_equals_the_zoo_child_count(space, name):
    from nas_zoo.cost import count_macs, count_params
    arch = nas_zoo.get_entry(name).arch["choices"]
    assert space.cost(arch, "macs") == count_macs(timm.create_model(name))
    assert space.cost(arch, "params") == count_params(timm.create_model(name))


def test_argmax_child_gives_the_official_logits_and_loads_into_the_zoo_entry(space, official_weights):
    """Official supernet, gen_max_child (eval, argmax path); the sliced child in the shufflenet_spos family."""
    fx = Fixture("dsnas", "supernet_reference")
    keys = fx.keys
    sd = {k: torch.from_numpy(synth_tensor(k, s, d)) for k, s, d in keys}
    stats = np.load(fx.dir / "bn_stats.npz")
    for k in stats.files:
        sd[k] = torch.from_numpy(stats[k])
    arch = max_child(sd.pop("log_alpha"))
    assert arch == fx.facts["argmax_arch"]
    net = space.supernet(1000)
    net.load_state_dict({official_key(k): v for k, v in sd.items()}, strict=True)
    net.eval()
    x = synth_input(2, 224, 224, seed=0)
    with torch.no_grad():
        out = net(x, arch)
    assert (out - fx.logits()).abs().max().item() <= fx.facts["atol"]

    entry = {"name": "dsnas_search_test_child", "family": space.family, "arch": space.entry_arch(arch)}
    name = nas_zoo.register_entry(entry)
    child = timm.create_model(name).eval()
    child.load_state_dict(space.child_state_dict(net.state_dict(), arch), strict=True)
    with torch.no_grad():
        assert (child(x) - out).abs().max().item() <= 1e-6
    # another path's slice is a different network: the comparison can fail
    other = [(c + 1) % 4 for c in arch]
    with torch.no_grad():
        assert (net(x, other) - out).abs().max().item() > 1e-2


def test_non_affine_supernet_child_gets_identity_affine(space):
    flat = ShuffleNetSpace(bn_affine=False)
    net = flat.supernet(10).eval()
    arch = flat.sample(np.random.RandomState(0))
    child = timm.create_model(nas_zoo.register_entry({"name": "spos_test_child", "family": flat.family,
                                                     "arch": flat.entry_arch(arch)}), num_classes=10).eval()
    child.load_state_dict(flat.child_state_dict(net.state_dict(), arch), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(child(x), net(x, arch), atol=1e-5)


# ------------------------------------------------------------------------------------------ A. the step

@pytest.mark.parametrize("suffix", ["", "_f64"])
def test_plain_step_logits_and_losses(supernet, suffix):
    _, _, result = run_step(supernet, DTYPES[suffix], "input_log_alpha", meta()["inputs"]["Z_pass_index"])
    check_losses(result, meta()["step" + suffix])
    assert_close("logits", result.logits, ref("step_logits", suffix), rtol=0, atol=LOGITS_ATOL)


def test_plain_step_gradients_float64(supernet):
    m = meta()
    net, log_alpha, result = run_step(supernet, torch.float64, "input_log_alpha", m["inputs"]["Z_pass_index"])
    s = "_f64"
    assert_close("score part", result.score, ref("step_log_alpha_grad_score_part", s))
    assert_close("Z.grad", result.gates_grad, ref("step_Z_grad", s))
    assert_close("block reward", result.reward, ref("step_block_reward", s))
    assert_close("log_alpha.grad", log_alpha.grad, ref("step_log_alpha_grad", s))
    # a deliberately wrong estimator (no reward multiplication) fails the same comparison
    with pytest.raises(AssertionError):
        assert_close("score only", result.score, ref("step_log_alpha_grad", s))

    params = dict(net.named_parameters())
    for name in ["first_conv.0.weight", "first_conv.1.weight", "first_conv.1.bias",
                 "features.0.2.branch_main.0.weight", "features.0.2.branch_proj.0.weight",
                 "features.10.1.branch_main.0.weight", "features.19.2.branch_main.0.weight"]:
        assert_close(name, params[official_key(name)].grad, ref(f"step_grad__{name}", s))
    rows = m["step"]["classifier_grad_rows"]
    assert_close("classifier rows", params["fc.weight"].grad[rows], ref("step_grad__classifier.0.weight_rows", s))

    stats = ref("step_param_grad_stats", s)
    assert len(m["param_names"]) == stats.shape[0]
    for name, want in zip(m["param_names"], stats):
        if name == "log_alpha":
            g = log_alpha.grad
        else:
            g = params[official_key(name)].grad
            g = torch.zeros_like(params[official_key(name)]) if g is None else g
        got = [g.sum().item(), g.norm().item(), g.abs().max().item()]
        assert_close(f"grad stats {name}", got, want)

    # one step of the official arch optimizer on this gradient
    torch.optim.Adam([log_alpha], lr=1e-3, betas=(0.5, 0.999), weight_decay=0).step()
    assert_close("after Adam", log_alpha, ref("step_log_alpha_after_adam", s))


def test_plain_step_float32_discrete_and_adam(supernet):
    """float32: the sampled positions of Z.grad, the unsampled zeros, and the Adam step (sign-dominated)."""
    _, log_alpha, result = run_step(supernet, torch.float32, "input_log_alpha", meta()["inputs"]["Z_pass_index"])
    assert np.array_equal(result.gates_grad.numpy() != 0, ref("step_Z_grad") != 0)
    assert_close("score part f32", result.score, ref("step_log_alpha_grad_score_part"), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------ B. FLOPs term

@pytest.mark.parametrize("case", ["flops_pass", "flops_pass_coef1e-5", "flops_fail"])
def test_flops_term_float64(supernet, space, case):
    s = "_f64"
    c = meta()[case + s]
    table = flops_table_mmacs(space.cost_table("macs", 224)[0])
    _, log_alpha, result = run_step(supernet, torch.float64, "input_log_alpha", c["Z_index"],
                                    flops_table=table, flops_coef=c["coef"], flops_gate=290.0)
    check_losses(result, c)
    assert abs(result.block_mmacs - c["total_flops_blocks_MMACs"]) <= 1e-4
    assert (result.flops_grad is not None) == c["gate_passed"]
    assert_close("reward", result.reward, ref(f"{case}_block_reward", s))
    assert_close("log_alpha.grad", log_alpha.grad, ref(f"{case}_log_alpha_grad", s))
    if c["gate_passed"]:
        assert abs(result.flops_loss.item() - c["flops_loss_value"]) <= 1e-9 * c["flops_loss_value"]
        assert_close("flops part", result.flops_grad, ref(f"{case}_log_alpha_grad_flops_part", s), atol=1e-16)
        # the gradient of the log-probability (coef * MMACs * score) instead of the probability fails
        p_chosen = torch.gather(F.softmax(log_alpha.detach(), -1), 1, torch.tensor(c["Z_index"])[:, None])
        with pytest.raises(AssertionError):
            assert_close("log-prob flops part", result.flops_grad / p_chosen,
                         ref(f"{case}_log_alpha_grad_flops_part", s), atol=1e-16)


def test_flops_fail_logits_float32(supernet, space):
    c = meta()["flops_fail"]
    table = flops_table_mmacs(space.cost_table("macs", 224)[0])
    _, _, result = run_step(supernet, torch.float32, "input_log_alpha", c["Z_index"],
                            flops_table=table, flops_coef=c["coef"])
    check_losses(result, c)
    assert result.flops_grad is None
    assert_close("logits", result.logits, ref("flops_fail_logits"), rtol=0, atol=LOGITS_ATOL)


# ------------------------------------------------------------------------------------------ C. early fix

def early_fix_epochs(dtype):
    log_alpha = torch.nn.Parameter(torch.from_numpy(ref("input_earlyfix_log_alpha_epoch0")).to(dtype))
    fix = EarlyFix(threshold=0.3)
    fix.epoch_start(log_alpha.data)
    after0 = fix.choices()
    with torch.no_grad():  # alpha moved during epoch 0
        log_alpha.copy_(torch.from_numpy(ref("input_earlyfix_log_alpha_epoch1")).to(dtype))
    fix.epoch_start(log_alpha.data)
    return log_alpha, fix, after0


@pytest.mark.parametrize("suffix", ["", "_f64"])
def test_early_fix_decisions(suffix):
    m = meta()["earlyfix" + suffix]
    log_alpha, fix, after0 = early_fix_epochs(DTYPES[suffix])
    assert after0 == {int(k): v for k, v in m["fixed_after_epoch0_start"].items()}
    assert fix.choices() == {int(k): v for k, v in m["fixed_after_epoch1_start"].items()}
    np.testing.assert_array_equal(log_alpha.detach().numpy(), ref("earlyfix_log_alpha_after_epoch1_start", suffix))
    forced = fix.force(onehot(meta()["inputs"]["earlyfix_sampled_Z_index"], DTYPES[suffix]))
    np.testing.assert_array_equal(forced.numpy(), ref("earlyfix_Z", suffix))
    assert forced.argmax(-1).tolist() == m["forced_Z_index"]
    # the state survives a checkpoint round trip
    again = EarlyFix()
    again.load_state_dict(fix.state_dict())
    assert again.choices() == fix.choices() and again.threshold == 0.3


@pytest.mark.parametrize("suffix", ["", "_f64"])
def test_early_fix_step(supernet, suffix):
    dtype = DTYPES[suffix]
    log_alpha, fix, _ = early_fix_epochs(dtype)
    net = supernet(dtype)
    gates = fix.force(onehot(meta()["inputs"]["earlyfix_sampled_Z_index"], dtype))
    x = synth_input(2, 224, 224, seed=meta()["seed"]).to(dtype)
    y = torch.tensor(meta()["inputs"]["labels"])
    result = dsnas_step(net, log_alpha, x, y, LabelSmoothingCrossEntropy(0.1), gates)
    check_losses(result, meta()["earlyfix" + suffix])
    assert_close("logits", result.logits, ref("earlyfix_logits", suffix), rtol=0, atol=LOGITS_ATOL)
    if suffix == "_f64":
        assert_close("reward", result.reward, ref("earlyfix_block_reward", suffix))
        assert_close("log_alpha.grad", log_alpha.grad, ref("earlyfix_log_alpha_grad", suffix))


# ------------------------------------------------------------------------------------------ D. gen_max_child

@pytest.mark.parametrize("suffix", ["", "_f64"])
def test_gen_max_child(supernet, suffix):
    dtype = DTYPES[suffix]
    net = supernet(dtype)
    stats = np.load(search_step_file(FAMILY, f"maxchild_bn_stats{suffix}.npz"))
    with torch.no_grad():
        state = net.state_dict()
        for k in stats.files:
            state[official_key(k)].copy_(torch.from_numpy(stats[k]))
    arch = max_child(torch.from_numpy(ref("input_log_alpha")))
    assert arch == meta()["maxchild"]["argmax_arch"]
    np.testing.assert_array_equal(onehot(arch, dtype).numpy(), ref("maxchild_Z", suffix))
    net.eval()
    with torch.no_grad():
        out = net(synth_input(2, 224, 224, seed=meta()["seed"]).to(dtype), arch, onehot(arch, dtype))
    atol = LOGITS_ATOL if suffix == "" else 1e-9
    assert_close("logits", out, ref("maxchild_logits", suffix), rtol=0, atol=atol)


# ------------------------------------------------------------------------------------------ estimator

def test_estimator_closed_form_on_a_tiny_space():
    """alpha.grad_i == (dL/dZ_i,pos) * (onehot_i - softmax(alpha_i)), dL/dZ by central finite differences."""
    torch.manual_seed(0)

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(
                torch.nn.ModuleList(torch.nn.Linear(5, 5).double() for _ in range(3)) for _ in range(3))
            self.head = torch.nn.Linear(5, 4).double()

        def forward(self, x, path, gates=None):
            for i, (layer, c) in enumerate(zip(self.layers, path)):
                x = torch.tanh(layer[c](x))
                x = x * (gates[i, c] if gates is not None else 1.0)
            return self.head(x)

    net = Tiny()
    arch = ArchParameters(3, 3, loc_mean=0.0, loc_std=1.0, generator=torch.Generator().manual_seed(3)).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.randint(0, 4, (6,))
    path = [2, 0, 1]
    gates = onehot(path, torch.float64, num_ops=3)
    result = dsnas_step(net, arch.log_alpha, x, y, torch.nn.functional.cross_entropy, gates)

    eps = 1e-6
    for i, c in enumerate(path):
        plus, minus = gates.clone(), gates.clone()
        plus[i, c] += eps
        minus[i, c] -= eps
        with torch.no_grad():
            d = (F.cross_entropy(net(x, path, plus), y) - F.cross_entropy(net(x, path, minus), y)) / (2 * eps)
        expected = d * (gates[i] - F.softmax(arch.log_alpha.detach()[i], -1))
        np.testing.assert_allclose(arch.log_alpha.grad[i].numpy(), expected.numpy(), rtol=1e-7, atol=1e-10)


def test_supernet_slice_loads_into_the_dsnas_search240_entry(space):
    """A supernet holding the official weights: the slice on dsnas_search240's path, loaded into that zoo entry,
    gives the official dsnas_search240 logits (synthetic tensors depend on the key only)."""
    fx = Fixture("dsnas", "dsnas_search240")
    ref_keys = Fixture("dsnas", "supernet_reference").keys
    sd = {official_key(k): torch.from_numpy(synth_tensor(k, s, d)) for k, s, d in ref_keys if k != "log_alpha"}
    stats = np.load(fx.dir / "bn_stats.npz")
    for k in stats.files:
        sd[official_key(k)] = torch.from_numpy(stats[k])
    net = space.supernet(1000)
    net.load_state_dict(sd, strict=True)
    arch = fx.facts["arch"]
    child = timm.create_model("dsnas_search240").eval()
    child.load_state_dict(space.child_state_dict(net.state_dict(), arch), strict=True)
    with torch.no_grad():
        out = child(synth_input(2, 224, 224, seed=0))
        assert (out - fx.logits()).abs().max().item() <= fx.facts["atol"]
        assert (net.eval()(synth_input(2, 224, 224, seed=0), arch) - out).abs().max().item() <= 1e-6


def test_estimator_moves_alpha_towards_the_better_op():
    """Sign check: one op keeps the signal, the other scales it to nearly zero; Adam on the DSNAS gradient raises
    the good op's probability in every layer."""
    torch.manual_seed(0)

    class Scale(torch.nn.Module):
        def __init__(self, s):
            super().__init__()
            self.s = s

        def forward(self, x):
            return x * self.s

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(torch.nn.ModuleList([Scale(1.0), Scale(0.05)]) for _ in range(3))
            self.head = torch.nn.Linear(4, 3)

        def forward(self, x, path, gates=None):
            for i, (layer, c) in enumerate(zip(self.layers, path)):
                x = layer[c](x) * (gates[i, c] if gates is not None else 1.0)
            return self.head(x)

    net = Toy()
    with torch.no_grad():
        net.head.weight.copy_(torch.eye(3, 4) * 3)
        net.head.bias.zero_()
    alpha = ArchParameters(3, 2, loc_mean=0.0, loc_std=0.0)
    opt = torch.optim.Adam(alpha.parameters(), lr=0.05, betas=(0.5, 0.999))
    gen = torch.Generator().manual_seed(0)
    from nas_zoo.search.dsnas_step import sample_gates
    for _ in range(150):
        x = torch.randn(16, 4)
        y = x[:, :3].argmax(-1)
        opt.zero_grad(set_to_none=True)
        net.zero_grad(set_to_none=True)
        dsnas_step(net, alpha.log_alpha, x, y, torch.nn.functional.cross_entropy, sample_gates(alpha.log_alpha, gen))
        opt.step()
    assert (alpha.probs()[:, 0] > 0.7).all(), alpha.probs()
