"""CDARTS' single search step against the official code (tests/fixtures/cdarts/search_step, see its README).

The official controller state (synthetic weights for every key of state_keys.json, the given alphas, the step's
genotype, the pool copy with the official `break`) is loaded into our CdartsNetwork through
`from_official_state_dict`, then one joint step runs: (a) on the held-out batch, (b) on the training batch.
float64 is compared against the `_f64` files tightly, float32 at the README's tolerances."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

import nas_zoo  # noqa: F401  (registers the families)
from nas_zoo.genotype import parse_genotype
from nas_zoo.search.methods.cdarts_steps import StepConfig, joint_step, make_optimizers, step_b_loss
from nas_zoo.search.spaces.darts import (INTERACTIVE_TYPES, PRIMITIVES, Alphas, CdartsNetwork, alpha_l1,
                                         derive_genotype, from_official_state_dict, interactive_loss,
                                         regulariser_decay)
from reference import search_step_file, synth_input, synth_tensor

FAMILY = "cdarts"
TYPE_NAMES = {"0": "kl", "1": "cosine", "2": "mse", "3": "smooth_l1"}
F64 = dict(atol=1e-9, rtol=1e-9)


def npz(name):
    return np.load(search_step_file(FAMILY, name))


@pytest.fixture(scope="module")
def meta():
    return json.loads(search_step_file(FAMILY, "meta.json").read_text())


@pytest.fixture(scope="module")
def official_state(meta):
    keys = json.loads(search_step_file(FAMILY, "state_keys.json").read_text())
    sd = {k: torch.from_numpy(synth_tensor(k, s, d)) for k, s, d in keys}
    alphas = npz("alphas_init.npz")
    for i in range(4):
        sd[f"super_layers_arch.0.0.{i}"] = torch.from_numpy(alphas[f"alpha_normal.{i}"])
        sd[f"super_layers_arch.0.1.{i}"] = torch.from_numpy(alphas[f"alpha_reduce.{i}"])
    return sd


def build(meta, official_state, dtype, official_break=True):
    """The controller of the fixture: step genotype, official weights, pool copy; returns (net, alphas, log)."""
    net = CdartsNetwork(10, init_channels=16, stem="cifar", stem_multiplier=3)
    alphas = Alphas()
    net.build_eval(parse_genotype(meta["genotype_step"]))
    net.fix_heads()
    net_state, alpha_state = from_official_state_dict(official_state, net)
    net.load_state_dict(net_state, strict=True)
    alphas.load_state_dict(alpha_state, strict=True)
    log = net.inherit_from_pool(official_break=official_break)
    net.to(dtype).train()
    alphas.to(dtype)
    return net, alphas, log


def official_names(names, net):
    """Our parameter names of the official ones."""
    mapped, _ = from_official_state_dict({n: torch.zeros(()) for n in names}, net)
    return list(mapped)


def inputs(meta, dtype):
    val = (synth_input(2, 32, 32, seed=0).to(dtype), torch.tensor(meta["inputs"]["val_y"]))
    trn = (synth_input(2, 32, 32, seed=1).to(dtype), torch.tensor(meta["inputs"]["trn_y"]))
    return val, trn


def step_config(meta):
    argv = meta["config_argv"]
    arg = lambda name: argv[argv.index(name) + 1]  # noqa: E731
    return StepConfig(interactive=TYPE_NAMES[arg("--interactive_type")], temperature=float(arg("--loss_T")),
                      loss_alpha=float(arg("--loss_alpha")), reg_count=3), dict(
        w_lr=float(arg("--w_lr")), eval_lr=float(arg("--nasnet_lr")), alpha_lr=float(arg("--alpha_lr")),
        w_weight_decay=float(arg("--w_weight_decay")), alpha_weight_decay=float(arg("--alpha_weight_decay")))


def run_step(meta, official_state, dtype):
    net, alphas, _ = build(meta, official_state, dtype)
    cfg, opt_args = step_config(meta)
    optimizers = make_optimizers(net, alphas, **opt_args)
    named = dict(net.named_parameters())
    grad_a_names = meta["float32"]["step_a"]["named_weight_grads"]
    grad_b_names = meta["float32"]["step_b_in_loop"]["named_weight_grads"]
    seen = {}

    def observe(name, value):
        if name == "a":
            seen["a"] = {k: v.detach().clone() for k, v in value.items()}
        elif name == "a_grads":
            seen["a_weight_grads"] = {o: named[n].grad.clone() for o, n in
                                      zip(grad_a_names, official_names(grad_a_names, net))}
            seen["a_alpha_grads"] = {f"alpha_{kind}.{i}": a.grad.clone() for kind in ("normal", "reduce")
                                     for i, a in enumerate(getattr(alphas, kind))}
            seen["a_norm"] = torch.norm(torch.stack([p.grad.norm() for p in list(net.parameters())
                                                     + list(alphas.parameters()) if p.grad is not None]))
        elif name == "b":
            seen["b_logits"] = value["logits"].detach().clone()
            seen["b_loss"] = value["loss"].detach().clone()
            seen["alphas_after_adam"] = {f"alpha_{kind}.{i}": a.detach().clone() for kind in ("normal", "reduce")
                                         for i, a in enumerate(getattr(alphas, kind))}
        elif name == "b_grads":
            seen["b_weight_grads"] = {o: named[n].grad.clone() for o, n in
                                      zip(grad_b_names, official_names(grad_b_names, net))}

    epoch = meta["epoch"]
    argv = meta["config_argv"]
    arg = lambda name: float(argv[argv.index(name) + 1])  # noqa: E731
    decay = regulariser_decay(epoch, arg("--regular_coeff"), int(arg("--pretrain_epochs")), int(arg("--search_iter")),
                              int(arg("--search_iter_epochs")), arg("--regular_ratio"))
    seen["decay"] = decay
    val, trn = inputs(meta, dtype)
    joint_step(net, alphas, optimizers, val, trn, decay, cfg, observe)
    return seen


@pytest.fixture(scope="module")
def step64(meta, official_state):
    return run_step(meta, official_state, torch.float64)


@pytest.fixture(scope="module")
def step32(meta, official_state):
    return run_step(meta, official_state, torch.float32)


def cases():
    return [("f64", "float64", "_f64"), ("f32", "float32", "")]


def scalar_tol(label):
    return 1e-9 if label == "f64" else 1e-4


@pytest.mark.parametrize("label,block,suffix", cases())
def test_step_a_losses_and_regulariser(request, meta, label, block, suffix):
    seen = request.getfixturevalue("step64" if label == "f64" else "step32")
    ref = meta[block]["step_a"]
    a = seen["a"]
    tol = scalar_tol(label)
    assert seen["decay"] == pytest.approx(ref["reg_decay"], abs=1e-12)
    for ours, theirs in [("ce_search", "ce_search"), ("ce_eval", "ce_eval"), ("loss_cls", "loss_cls"),
                         ("loss_interactive", "loss_interactive_used"), ("reg_normal", "reg_normal_call"),
                         ("reg_reduce", "reg_reduce_call"), ("loss", "total_loss")]:
        assert float(a[ours]) == pytest.approx(ref[theirs], abs=tol, rel=0), ours
    assert float(a["reg_normal"] + a["reg_reduce"]) == pytest.approx(ref["reg_total"], abs=tol, rel=0)
    rel = 1e-9 if label == "f64" else 0.02
    assert float(seen["a_norm"]) == pytest.approx(ref["grad_total_norm_before_clip"], rel=rel)


@pytest.mark.parametrize("label,block,suffix", cases())
def test_step_a_outputs_and_gradients(request, label, block, suffix):
    seen = request.getfixturevalue("step64" if label == "f64" else "step32")
    outputs = npz(f"step_a_outputs{suffix}.npz")
    ours = {"logits_search": seen["a"]["logits_search"], "em_search": seen["a"]["em_search"],
            "logits_eval": seen["a"]["logits_eval"], "em_eval": seen["a"]["em_eval"],
            "logits_search_train_in_loop": seen["b_logits"]}
    assert sorted(ours) == sorted(outputs.files)
    for k, v in ours.items():
        np.testing.assert_allclose(v.numpy(), outputs[k], **(F64 if label == "f64" else dict(atol=3e-3, rtol=0)),
                                   err_msg=k)
    alpha_grads = npz(f"step_a_alpha_grads{suffix}.npz")
    assert sorted(alpha_grads.files) == sorted(seen["a_alpha_grads"])
    for k in alpha_grads.files:
        np.testing.assert_allclose(seen["a_alpha_grads"][k].numpy(), alpha_grads[k],
                                   **(F64 if label == "f64" else dict(atol=1e-3, rtol=0)), err_msg=k)
    after = npz(f"step_a_alphas_after_adam{suffix}.npz")
    assert sorted(after.files) == sorted(seen["alphas_after_adam"])
    for k in after.files:
        np.testing.assert_allclose(seen["alphas_after_adam"][k].numpy(), after[k],
                                   **(F64 if label == "f64" else dict(atol=1e-6, rtol=0)), err_msg=k)


def _compare_grads(ours, ref, label, f32_rel_l2=0.1):
    assert sorted(ours) == sorted(ref.files)
    for k in ref.files:
        if label == "f64":
            np.testing.assert_allclose(ours[k].numpy(), ref[k], atol=1e-8, rtol=1e-8, err_msg=k)
        else:  # float32: loosely (README: the cell networks amplify float32 rounding)
            r = ref[k]
            rel_l2 = np.linalg.norm(ours[k].numpy() - r) / max(np.linalg.norm(r), 1e-12)
            assert rel_l2 < f32_rel_l2, (k, rel_l2)


@pytest.mark.parametrize("label,block,suffix", cases())
def test_step_a_weight_grads(request, label, block, suffix):
    seen = request.getfixturevalue("step64" if label == "f64" else "step32")
    _compare_grads(seen["a_weight_grads"], npz(f"step_a_weight_grads{suffix}.npz"), label)


@pytest.mark.parametrize("label,block,suffix", cases())
def test_step_b_in_loop(request, meta, label, block, suffix):
    seen = request.getfixturevalue("step64" if label == "f64" else "step32")
    tol = 1e-9 if label == "f64" else 1e-3
    assert float(seen["b_loss"]) == pytest.approx(meta[block]["step_b_in_loop"]["ce_search_train"], abs=tol, rel=0)
    # float32: step (a)'s SGD update (lr 0.08) amplifies the rounding further; the official float32 and float64 runs
    # differ by up to 34 % of the maximum here (README), ours by about 14 %. float64 is the exact check.
    _compare_grads(seen["b_weight_grads"], npz(f"step_b_in_loop_grads{suffix}.npz"), label, f32_rel_l2=0.35)


@pytest.mark.parametrize("label,block,suffix", cases())
def test_step_b_isolated(meta, official_state, label, block, suffix):
    dtype = torch.float64 if label == "f64" else torch.float32
    net, alphas, _ = build(meta, official_state, dtype)
    _, (trn_x, trn_y) = inputs(meta, dtype)
    b = step_b_loss(net, alphas, trn_x, trn_y)
    b["loss"].backward()
    ref = meta[block]["step_b_isolated"]
    tol = 1e-9 if label == "f64" else 1e-5
    assert float(b["loss"]) == pytest.approx(ref["ce_search_train"], abs=tol, rel=0)
    np.testing.assert_allclose(b["logits"].detach().numpy(), np.load(search_step_file(
        FAMILY, f"step_b_isolated_logits{suffix}.npy")), **(F64 if label == "f64" else dict(atol=1e-5, rtol=0)))
    names = ref["named_weight_grads"]
    named = dict(net.named_parameters())
    ours = {o: named[n].grad for o, n in zip(names, official_names(names, net))}
    ours.update({f"alpha_{kind}.{i}": a.grad for kind in ("normal", "reduce")
                 for i, a in enumerate(getattr(alphas, kind))})
    ref_grads = npz(f"step_b_isolated_grads{suffix}.npz")
    assert sorted(ours) == sorted(ref_grads.files)
    for k in ref_grads.files:
        tol = F64 if label == "f64" else dict(atol=0.02 * np.abs(ref_grads[k]).max() + 1e-7, rtol=0)
        np.testing.assert_allclose(ours[k].numpy(), ref_grads[k], **tol, err_msg=k)
    total = torch.norm(torch.stack([p.grad.norm() for p in list(net.parameters()) + list(alphas.parameters())
                                    if p.grad is not None]))
    assert float(total) == pytest.approx(ref["grad_total_norm"], rel=1e-9 if label == "f64" else 0.01)


# -- the interactive losses, the regulariser ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype,block", [(torch.float64, "float64"), (torch.float32, "float32")])
def test_every_interactive_type_on_the_official_ensemble_outputs(meta, dtype, block):
    suffix = "_f64" if block == "float64" else ""
    out = npz(f"step_a_outputs{suffix}.npz")
    em_search, em_eval = torch.from_numpy(out["em_search"]), torch.from_numpy(out["em_eval"])
    ref = meta[block]["step_a"]["loss_interactive_by_type"]
    tol = 1e-12 if block == "float64" else 1e-6
    for key, kind in TYPE_NAMES.items():
        assert float(interactive_loss(em_search, em_eval, 2.0, kind)) == pytest.approx(ref[key], abs=tol), kind
    # a wrong pairing (teacher and student swapped) changes KL: the comparison can fail
    assert abs(float(interactive_loss(em_eval, em_search, 2.0, "kl")) - ref["0"]) > 1e-7


def test_interactive_losses_match_their_formulas():
    rng = np.random.default_rng(3)
    s, t = rng.standard_normal((6, 10)) * 2, rng.standard_normal((6, 10)) * 2
    T = 3.0

    def log_softmax(z):
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    p_t = np.exp(log_softmax(t / T))
    kl = (p_t * (np.log(p_t) - log_softmax(s / T))).mean() * T * T
    cos = -(np.sum(s * t, 1) / np.maximum(np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1), 1e-6)).mean() * T * T
    mse = ((s - t) ** 2).mean() * T * T
    d = np.abs(s - t)
    smooth = np.where(d < 1, 0.5 * d * d, d - 0.5).mean() * T * T
    expected = {"kl": kl, "cosine": cos, "mse": mse, "smooth_l1": smooth}
    for kind in INTERACTIVE_TYPES:
        got = float(interactive_loss(torch.from_numpy(s), torch.from_numpy(t), T, kind))
        assert got == pytest.approx(expected[kind], rel=1e-12), kind
    with pytest.raises(ValueError, match="interactive loss"):
        interactive_loss(torch.zeros(1, 2), torch.zeros(1, 2), T, "l3")


def test_regulariser_is_the_l1_of_pool_and_skip_alphas_with_linear_decay():
    alphas = [torch.arange(16.).reshape(2, 8) - 5, torch.ones(3, 8)]
    # |max_pool| + |avg_pool| + |skip| over every edge: edge rows (-5,-4,-3), (3,4,5), three rows of 1s
    assert float(alpha_l1(alphas, 2.0)) == pytest.approx(2.0 * (12 + 12 + 9))
    assert float(alpha_l1(alphas, 2.0, count=3)) == pytest.approx(3 * 2.0 * 33)
    # decay: coeff at the first search epoch, linear to 0 after `ratio` of the search epochs, then 0
    assert regulariser_decay(2, 5, 2, 32, 1, 0.5) == 5
    assert regulariser_decay(2 + 15 // 2, 5, 2, 32, 1, 0.5) == pytest.approx(5 * (1 - 7 / 15))
    assert regulariser_decay(2 + 15, 5, 2, 32, 1, 0.5) == 0
    assert regulariser_decay(31, 5, 2, 32, 1, 0.5) == 0


def test_regulariser_counted_once_is_the_official_third(meta, official_state):
    """Default (paper intent) counts the shared alphas once; the official code adds them once per stage."""
    net, alphas, _ = build(meta, official_state, torch.float64)
    ref = meta["float64"]["step_a"]
    decay = ref["reg_decay"]
    assert float(alpha_l1(alphas.normal, decay)) * 3 == pytest.approx(ref["reg_normal_call"], rel=1e-12)
    assert float(alpha_l1(alphas.normal, decay)) != pytest.approx(ref["reg_normal_call"], rel=1e-3)


# -- genotype derivation -------------------------------------------------------------------------------------------


def _alphas_from(arrays):
    alphas = Alphas()
    with torch.no_grad():
        for kind in ("normal", "reduce"):
            for i, a in enumerate(getattr(alphas, kind)):
                a.copy_(torch.from_numpy(arrays[f"alpha_{kind}.{i}"]))
    return alphas


def _connect(c):
    return {k: [[list(e) for e in node] for node in v] for k, v in c.items()}


@pytest.mark.parametrize("case", ["random", "ties", "none_dominated"])
def test_derivations_equal_the_official_parse(meta, case):
    genotype, connect = derive_genotype(_alphas_from(npz(f"derive_{case}_alphas.npz")))
    ref = meta["derivation"][case]
    assert genotype == parse_genotype(ref["genotype"])
    assert _connect(connect) == ref["connect"]


def test_derivation_of_the_step_alphas(meta):
    genotype, connect = derive_genotype(_alphas_from(npz("alphas_init.npz")))
    assert genotype == parse_genotype(meta["genotype_step"])
    assert _connect(connect) == meta["connect_step"]


def test_derivation_rule_on_hand_made_alphas():
    alphas = Alphas()
    with torch.no_grad():
        for a in list(alphas.normal) + list(alphas.reduce):
            a.zero_()
        none = PRIMITIVES.index("none")
        sep3, dil5, skip = (PRIMITIVES.index(p) for p in ("sep_conv_3x3", "dil_conv_5x5", "skip_connect"))
        # node 0: `none` dominates both edges; the best non-none op still decides (sep on edge 1, skip on edge 0)
        alphas.normal[0][:, none] = 10.
        alphas.normal[0][1, sep3] = 2.
        alphas.normal[0][0, skip] = 1.
        # node 2 (4 edges): edge scores 3 (edge 3) > 2 (edge 0) > 1 (edges 1, 2); `none` on edge 2 is ignored
        alphas.normal[2][3, dil5] = 3.
        alphas.normal[2][0, sep3] = 2.
        alphas.normal[2][1, skip] = 1.
        alphas.normal[2][2, none] = 50.
    genotype, connect = derive_genotype(alphas)
    assert genotype.normal[0] == (("sep_conv_3x3", 1), ("skip_connect", 0))
    assert genotype.normal[2] == (("dil_conv_5x5", 3), ("sep_conv_3x3", 0))
    assert connect["normal"][2] == [(3, dil5), (0, sep3)]
    assert genotype.normal_concat == genotype.reduce_concat == (2, 3, 4, 5)
    for node in genotype.normal + genotype.reduce:  # two distinct sources, never `none`
        assert len({src for _, src in node}) == 2 and all(op != "none" for op, _ in node)


# -- the parameter pool ------------------------------------------------------------------------------------------


def test_pool_inheritance_with_the_official_break_reproduces_the_copy_log(meta, official_state):
    net, _, log = build(meta, official_state, torch.float32, official_break=True)
    ref = meta["copy_params_from_super_layer"]
    assert len(log) == len(ref["calls"])
    offsets = [0, 7, 14]

    def official_module(name):
        parts = name.split(".")
        i = int(parts[1])
        stage = max(s for s in range(3) if offsets[s] <= i)
        return stage, i - offsets[stage], parts[2:]

    genotype = parse_genotype(meta["genotype_step"])
    for (ours_dst, ours_src, ours_params), (their_dst, their_src, their_params) in zip(log, ref["calls"]):
        s, c, rest = official_module(ours_dst)
        if rest[0] == "ops":  # ops.<k> of the eval cell == dag.<k // 2>.<k % 2>.0 of the official one
            k = int(rest[1])
            assert their_dst == f"nas_layers.{s}.{c}.dag.{k // 2}.{k % 2}.0"
            s2, c2, pool_rest = official_module(ours_src)
            _, n, src, _, op = pool_rest
            assert their_src == f"super_layers_pool.{s2}.{c2}.dag.{n}.{src}._ops.{op}"
        else:
            assert their_dst == f"nas_layers.{s}.{c}.{rest[0]}"
            assert their_src == f"super_layers_pool.{s}.{c}.{rest[0]}"
        assert len(ours_params) == len(their_params)
    # what was and was not copied: the official lists, in our names, against the weights themselves
    copied = official_names(ref["nas_params_copied"], net)
    not_copied = official_names(ref["nas_params_not_copied"], net)
    assert len(not_copied) == 72 and genotype.normal[1][0] == ("skip_connect", 2)
    pool_state, _ = from_official_state_dict(official_state, net)
    params = dict(net.named_parameters())
    synth = {n: v for n, v in pool_state.items()}
    for name in not_copied:  # kept its own synthetic values
        assert torch.equal(params[name], synth[name]), name
    for name in copied:
        assert not torch.equal(params[name], synth[name]), name


def test_pool_inheritance_without_the_break_copies_every_selected_op(meta, official_state):
    net, _, log = build(meta, official_state, torch.float32, official_break=False)
    ref = meta["copy_params_from_super_layer"]
    assert len(log) == len(ref["calls"]) + 18  # the 18 normal cells' second edge of node 1 as well
    not_copied = official_names(ref["nas_params_not_copied"], net)
    pool_state, _ = from_official_state_dict(official_state, net)
    params = dict(net.named_parameters())
    for name in not_copied:
        assert not torch.equal(params[name], pool_state[name]), name
    # every eval parameter now equals its pool counterpart
    pool = dict(net.pool_cells.named_parameters(prefix="pool_cells"))
    for dst, src, names in log:
        for n in names:
            assert torch.equal(params[f"{dst}.{n}"], pool[f"{src}.{n}"])


def test_write_back_moves_parameters_only(meta, official_state):
    net, _, _ = build(meta, official_state, torch.float32, official_break=False)
    with torch.no_grad():
        for p in net.eval_cells.parameters():
            p.add_(1.0)
        for m in net.eval_cells.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(7.0)
    pool_buffers = {k: v.clone() for k, v in net.pool_cells.named_buffers()}
    log = net.write_back_to_pool()
    pool = dict(net.pool_cells.named_parameters(prefix="pool_cells"))
    params = dict(net.named_parameters())
    moved = 0
    for dst, src, names in log:
        for n in names:
            assert torch.equal(pool[f"{src}.{n}"], params[f"{dst}.{n}"])
            moved += 1
    assert moved == sum(1 for _ in net.eval_cells.parameters())
    for k, v in net.pool_cells.named_buffers():
        assert torch.equal(v, pool_buffers[k]), k
