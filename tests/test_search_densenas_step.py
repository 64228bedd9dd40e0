"""DenseNAS search steps against the official code (tests/fixtures/densenas/search_step, see its README).

The MBV2 supernet is built from the official search config, loaded with the synthetic weights of the official key
list and the given alpha/beta; the forced op samples replace the official multinomial. Scalars and logits are
compared in float32, gradients and the Adam / rescale results in float64 (the README's advice: float32 gradients
of this train-mode, batch-2 supernet are noisy at the percent level).
"""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nas_zoo.families.densenas import parse_net_config
from nas_zoo.search.methods.densenas import (OFFICIAL_QUIRKS, DenseQuirks, arch_backward, arch_step,
                                             make_arch_optimizer, rescale_arch_params, weight_forward)
from nas_zoo.search.spaces.densenas import (MBV2_SPACE, RESNET_SPACE, CostTableFormatError, DenseArchParams,
                                            DenseGraph, DenseSupernet, Sample, build_cost_table, chained_cost,
                                            check_cost_table, derive_net_config, derive_path, format_cost_table,
                                            official_supernet_to_ours, path_weights, read_cost_table)
from reference import search_step_dir, search_step_file, synth_input, synth_tensor

FAMILY = "densenas"
ARCH_PREFIXES = ("beta_weights", "alpha_head_weights", "alpha_stack_weights")
MBV2 = dict(cost_lambda=0.15, log_base=15.0, temperature=1.0)
RES = dict(cost_lambda=0.2, log_base=3500.0, temperature=0.9)


def _meta():
    return json.loads(search_step_file(FAMILY, "meta.json").read_text())


def _reference_file(name):
    path = search_step_dir(FAMILY).parent / "search_reference" / name
    assert path.is_file(), f"search-reference fixture missing: {path}"
    return path


def _arch(graph, npz_name, dtype=torch.float32):
    arch = DenseArchParams(graph)
    init = np.load(search_step_file(FAMILY, npz_name))
    arch.load_state_dict({k: torch.from_numpy(init[k]) for k in init.files})
    return arch.to(dtype)


def _supernet(dtype):
    keys = json.loads(search_step_file(FAMILY, "state_keys.json").read_text())
    net = DenseSupernet(MBV2_SPACE, num_classes=100, final_double_softmax=True)
    official = {k: torch.from_numpy(synth_tensor(k, s, d)) for k, s, d in keys if not k.startswith(ARCH_PREFIXES)}
    net.load_state_dict(official_supernet_to_ours(official))
    return net.to(dtype).train()


@pytest.fixture(scope="module")
def meta():
    return _meta()


@pytest.fixture(scope="module")
def table():
    return read_cost_table(search_step_file(FAMILY, "lat_list_densenas_mbv2_xp32"))


@pytest.fixture(scope="module")
def nets():
    net32 = _supernet(torch.float32)
    return {"f32": net32, "f64": _supernet(torch.float64)}


def _inputs(meta, dtype):
    x = synth_input(2, 224, 224, seed=0).to(dtype)
    return x, torch.tensor(meta["mbv2"]["inputs"]["labels"])


def _samples(meta, kind):
    inputs = meta["mbv2"]["inputs"]
    return Sample(head=inputs[f"{kind}_step_head_idx"], stack=inputs[f"{kind}_step_stack_idx"])


def _npz(name):
    data = np.load(search_step_file(FAMILY, name))
    return {k: data[k] for k in data.files}


def _max_diff(ours, ref):
    return max(float(np.abs(np.asarray(ours[k], np.float64) - ref[k]).max()) if ref[k].size else 0.0 for k in ref)


# ------------------------------------------------------------------------------------------------------------------
# graphs and tables

@pytest.mark.parametrize("name,cfg", [("mbv2", MBV2_SPACE), ("resnet", RESNET_SPACE)])
def test_supernet_graph_equals_official(name, cfg):
    official = json.loads(_reference_file(f"supernet_graph_{name}.json").read_text())
    assert DenseGraph(cfg).to_json() == official
    # a changed connection count gives a different graph (the comparison can fail)
    narrower = type(cfg)(**{**cfg.__dict__, "adjoin_connect_nums": (3,) * len(cfg.adjoin_connect_nums)})
    assert DenseGraph(narrower).to_json() != official


def test_official_latency_table_read_safely(table, tmp_path):
    check_cost_table(table, DenseGraph(MBV2_SPACE))
    assert format_cost_table(table) == search_step_file(FAMILY, "lat_list_densenas_mbv2_xp32").read_text()
    evil = tmp_path / "lat_list"
    evil.write_text("__import__('os').system('echo hacked')")
    with pytest.raises(CostTableFormatError, match="never run"):
        read_cost_table(evil)
    short = tmp_path / "short"
    short.write_text(str(table[:3]))
    with pytest.raises(CostTableFormatError, match="4 elements"):
        read_cost_table(short)


def test_resnet_mac_table_equals_official():
    ours = build_cost_table(RESNET_SPACE, "macs", num_classes=100)
    text = search_step_file(FAMILY, "res_flops_list.txt").read_text()
    official = read_cost_table(search_step_file(FAMILY, "res_flops_list.txt"))

    def flat(t):
        return [v for x in t for v in flat(x)] if isinstance(t, list) else [t]

    np.testing.assert_allclose(flat(ours), flat(official), rtol=1e-9, atol=0)
    assert format_cost_table(ours) == text
    without_reg = build_cost_table(RESNET_SPACE, "macs", num_classes=100, skip_reg=False)
    assert format_cost_table(without_reg) != text


def test_chained_cost_reference_case():
    facts = json.loads(_reference_file("chained_cost_mbv2.json").read_text())
    params = np.load(_reference_file("chained_cost_mbv2_arch_params.npz"))
    graph = DenseGraph(MBV2_SPACE)
    arch = DenseArchParams(graph)
    with torch.no_grad():
        for name, plist in (("beta", arch.beta_weights), ("alpha_head", arch.alpha_head_weights),
                            ("alpha_stack", arch.alpha_stack_weights)):
            for i, p in enumerate(plist):
                p.copy_(torch.from_numpy(params[f"{name}_{i}"]))
    table = read_cost_table(search_step_file(FAMILY, "lat_list_densenas_mbv2_xp32"))
    sample = Sample.all_ops(graph)
    cost = chained_cost(table, graph, path_weights(arch, sample), sample)
    assert abs(cost.item() - facts["official_chained_latency_ms"]) <= 1e-5
    assert derive_net_config(graph, arch).to_text() == facts["derived_net_config"] + "\nnet_type: mbv2\n"


# ------------------------------------------------------------------------------------------------------------------
# the architecture step

def test_arch_step_float32_scalars_and_logits(meta, nets, table):
    net, ref = nets["f32"], meta["mbv2"]["arch_step"]
    arch = _arch(net.graph, "arch_params_init_mbv2.npz")
    x, y = _inputs(meta, torch.float32)
    out = arch_backward(net, arch, table, x, y, _samples(meta, "arch"), quirks=OFFICIAL_QUIRKS, **MBV2)
    logits_ref = np.load(search_step_file(FAMILY, "arch_step_logits.npy"))
    assert np.abs(out["logits"].numpy() - logits_ref).max() <= 1e-4
    assert abs(float(out["ce"]) - ref["ce"]) <= 1e-4
    assert abs(float(out["cost"]) - ref["chained_cost_ms"]) <= 1e-5
    assert abs(float(out["cost_term"]) - ref["sub_loss_term"]) <= 1e-6
    assert abs(float(out["loss"]) - ref["total_loss"]) <= 1e-4
    assert [n for n, p in arch.named_parameters() if p.grad is None] == ref["params_with_grad_None"]
    # float32 grads: only a loose check makes sense (README)
    grads = _npz("arch_step_grads.npz")
    for name, p in arch.named_parameters():
        if grads[name].size and np.abs(grads[name]).max() > 1e-3:
            g = p.grad.numpy().ravel()
            cos = g @ grads[name].ravel() / (np.linalg.norm(g) * np.linalg.norm(grads[name]))
            assert cos > 0.99, name


def test_paper_final_softmax_differs(meta, nets, table):
    """The official second softmax in the final block changes the logits (so the quirk switch is needed)."""
    net = nets["f32"]
    arch = _arch(net.graph, "arch_params_init_mbv2.npz")
    x, y = _inputs(meta, torch.float32)
    out = arch_backward(net, arch, table, x, y, _samples(meta, "arch"), quirks=DenseQuirks(), **MBV2)
    logits_ref = np.load(search_step_file(FAMILY, "arch_step_logits.npy"))
    assert np.abs(out["logits"].numpy() - logits_ref).max() > 1e-2
    assert abs(float(out["cost"]) - meta["mbv2"]["arch_step"]["chained_cost_ms"]) <= 1e-5  # cost: one softmax


def test_arch_step_float64_grads_adam_rescale(meta, nets, table):
    net, ref = nets["f64"], meta["mbv2_float64"]["arch_step"]
    arch = _arch(net.graph, "arch_params_init_mbv2.npz", torch.float64)
    x, y = _inputs(meta, torch.float64)
    sample = _samples(meta, "arch")
    opt = make_arch_optimizer(arch)
    captured = {}

    def keep_grads(params):  # the official snapshot point: just before arch_optimizer.step()
        captured.update({n: p.grad.detach().clone() for n, p in arch.named_parameters() if p.grad is not None})

    old = [p.detach().clone() for p in arch.alphas()]
    out = arch_step(net, arch, opt, table, x, y, sample, quirks=OFFICIAL_QUIRKS, all_reduce=keep_grads, **MBV2)
    assert abs(float(out["ce"]) - ref["ce"]) <= 1e-9
    assert abs(float(out["cost"]) - ref["chained_cost_ms"]) <= 1e-9
    assert abs(float(out["loss"]) - ref["total_loss"]) <= 1e-9
    logits_ref = np.load(search_step_file(FAMILY, "arch_step_logits_f64.npy"))
    assert np.abs(out["logits"].numpy() - logits_ref).max() <= 1e-9

    grads = _npz("arch_step_grads_f64.npz")
    ours = {n: captured[n].numpy() if n in captured else np.zeros((0, 7)) for n in grads}
    assert _max_diff(ours, grads) <= 1e-8
    rescaled = _npz("arch_after_rescale_f64.npz")
    assert _max_diff({n: p.detach().numpy() for n, p in arch.named_parameters()}, rescaled) <= 1e-10

    # after Adam, before the rescale: undo the rescale offsets from the reference's point of view
    after_adam = _npz("arch_after_adam_f64.npz")
    probe = _arch(net.graph, "arch_params_init_mbv2.npz", torch.float64)
    with torch.no_grad():
        for name, p in probe.named_parameters():
            p.copy_(torch.from_numpy(after_adam[name]))
    rescale_arch_params(probe, old, sample)
    assert _max_diff({n: p.detach().numpy() for n, p in probe.named_parameters()}, rescaled) <= 1e-10
    # and the paper-intent Adam (unsampled entries kept) differs from the official one
    assert _max_diff(
        {n: (p.detach().numpy()) for n, p in arch.named_parameters()},
        {n: np.load(search_step_file(FAMILY, "arch_params_init_mbv2.npz"))[n] for n in rescaled}) > 1e-4


def test_paper_adam_keeps_unsampled_entries(meta, nets, table):
    net = nets["f64"]
    arch = _arch(net.graph, "arch_params_init_mbv2.npz", torch.float64)
    init = {n: p.detach().clone() for n, p in arch.named_parameters()}
    x, y = _inputs(meta, torch.float64)
    sample = _samples(meta, "arch")
    opt = make_arch_optimizer(arch)
    arch_step(net, arch, opt, table, x, y, sample, quirks=DenseQuirks(final_double_softmax=True), **MBV2)
    official = _npz("arch_after_rescale_f64.npz")
    moved_official = moved_ours = 0
    for (name, p), rows in zip(list(arch.named_parameters())[len(arch.beta_weights):],
                               sample.head + sample.stack):
        for r in range(p.shape[0]):
            unsampled = [i for i in range(p.shape[1]) if i not in rows[r]]
            moved_ours += int((p[r, unsampled] != init[name][r, unsampled]).sum())
            moved_official += int((official[name][r, unsampled] != init[name][r, unsampled].numpy()).sum())
    assert moved_ours == 0 and moved_official > 0


# ------------------------------------------------------------------------------------------------------------------
# the weight step

def test_weight_step_logits_float32(meta, nets):
    net, ref = nets["f32"], meta["mbv2"]["weight_step"]
    arch = _arch(net.graph, "arch_params_init_mbv2.npz")
    x, y = _inputs(meta, torch.float32)
    with torch.no_grad():
        logits = weight_forward(net, arch, x, _samples(meta, "weight"), quirks=OFFICIAL_QUIRKS)
    logits_ref = np.load(search_step_file(FAMILY, "weight_step_logits.npy"))
    assert np.abs(logits.numpy() - logits_ref).max() <= 1e-4
    assert abs(float(F.cross_entropy(logits, y)) - ref["ce"]) <= 1e-4


def test_weight_step_grads_float64(meta, nets, table):
    net, ref = nets["f64"], meta["mbv2_float64"]["weight_step"]
    arch = _arch(net.graph, "arch_params_init_mbv2.npz", torch.float64)
    x, y = _inputs(meta, torch.float64)
    sample = _samples(meta, "weight")
    net.zero_grad(set_to_none=True)
    logits = weight_forward(net, arch, x, sample, quirks=OFFICIAL_QUIRKS)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    assert abs(loss.item() - ref["ce"]) <= 1e-9
    assert np.abs(logits.detach().numpy() - np.load(search_step_file(FAMILY, "weight_step_logits_f64.npy"))).max() \
        <= 1e-9
    # official name -> ours
    names = {official: ours for official, ours in
             zip([k for k, _, _ in json.loads(search_step_file(FAMILY, "state_keys.json").read_text())
                  if not k.startswith(ARCH_PREFIXES)],
                 official_supernet_to_ours({k: k for k, _, _ in
                                            json.loads(search_step_file(FAMILY, "state_keys.json").read_text())
                                            if not k.startswith(ARCH_PREFIXES)}))}
    params = dict(net.named_parameters())
    with_grad = [k for k in ref["params_with_grad"]]
    assert sorted(names[k] for k in with_grad) == sorted(n for n, p in params.items() if p.grad is not None)
    abs_sum = np.load(search_step_file(FAMILY, "weight_step_grad_abs_sum_f64.npy"))
    ours_sum = np.array([float(params[names[k]].grad.abs().sum()) for k in with_grad])
    np.testing.assert_allclose(ours_sum, abs_sum, rtol=1e-7, atol=1e-9)
    grads = _npz("weight_step_grads_f64.npz")
    assert _max_diff({k: params[names[k]].grad.numpy() for k in grads}, grads) <= 1e-8
    # the chained cost of the weight step's sample (logged, not in the loss)
    cost = chained_cost(table, net.graph, path_weights(arch, sample), sample)
    assert abs(float(cost) - ref["chained_cost_ms"]) <= 1e-9


# ------------------------------------------------------------------------------------------------------------------
# derivation and the ResNet space

def test_mbv2_derivation_and_net_config(meta):
    graph = DenseGraph(MBV2_SPACE)
    arch = _arch(graph, "arch_params_init_mbv2.npz")
    facts = meta["mbv2"]["derivation"]
    path = derive_path(graph, [b.detach().numpy() for b in arch.beta_weights])
    assert path == facts["ch_path"]
    assert [MBV2_SPACE.widths[i] for i in path] == facts["derived_chs"]
    text = derive_net_config(graph, arch).to_text()
    assert text == search_step_file(FAMILY, "net_config_mbv2").read_text()
    assert text.split("\nnet_type")[0] == facts["net_config"]
    cfg = parse_net_config(text)  # the zoo reads it back
    assert cfg.to_text() == text


def test_resnet_chained_cost_and_derivation(meta):
    graph = DenseGraph(RESNET_SPACE)
    arch = _arch(graph, "arch_params_init_res.npz")
    table = build_cost_table(RESNET_SPACE, "macs", num_classes=100)
    sample = Sample.all_ops(graph)
    with torch.no_grad():
        cost = chained_cost(table, graph, path_weights(arch, sample, RES["temperature"]), sample)
    facts = meta["res"]
    assert abs(float(cost) - facts["all_ops_chained_cost_MMACs"]) <= 1e-3
    term = RES["cost_lambda"] * np.log(float(cost)) / np.log(RES["log_base"])
    assert abs(term - facts["sub_loss_term"]) <= 1e-6
    wrong_t = chained_cost(table, graph, path_weights(arch, sample, 1.0), sample)
    assert abs(float(wrong_t) - facts["all_ops_chained_cost_MMACs"]) > 1.0
    path = derive_path(graph, [b.detach().numpy() for b in arch.beta_weights])
    assert path == facts["derivation"]["ch_path"]
    assert [RESNET_SPACE.widths[i] for i in path] == facts["derivation"]["derived_chs"]
    text = derive_net_config(graph, arch).to_text()
    assert text == search_step_file(FAMILY, "net_config_res").read_text()
    assert parse_net_config(text).to_text() == text


def test_float32_step_results_at_the_readme_tolerance(meta, nets, table):
    """The float32 files: alpha after Adam / rescale within 2 lr (a near-zero Adam update may flip sign) and within
    1e-6 almost everywhere; weight-step gradients loosely (cosine), their sums |grad| within 1 %."""
    net = nets["f32"]
    arch = _arch(net.graph, "arch_params_init_mbv2.npz")
    x, y = _inputs(meta, torch.float32)
    sample = _samples(meta, "arch")
    opt = make_arch_optimizer(arch)
    old = [p.detach().clone() for p in arch.alphas()]
    arch_step(net, arch, opt, table, x, y, sample, quirks=OFFICIAL_QUIRKS, **MBV2)
    ours = {n: p.detach().numpy() for n, p in arch.named_parameters()}
    ref = _npz("arch_after_rescale.npz")
    assert _max_diff(ours, ref) <= 6.1e-4
    diffs = np.concatenate([np.abs(ours[k] - ref[k]).ravel() for k in ref])
    assert (diffs <= 1e-6).mean() > 0.95
    # after Adam = after rescale minus the rescale offsets, which only touch sampled entries
    adam_ref = _npz("arch_after_adam.npz")
    probe = _arch(net.graph, "arch_params_init_mbv2.npz")
    with torch.no_grad():
        for name, p in probe.named_parameters():
            p.copy_(torch.from_numpy(adam_ref[name]))
    rescale_arch_params(probe, old, sample)
    assert _max_diff({n: p.detach().numpy() for n, p in probe.named_parameters()}, _npz("arch_after_rescale.npz")) \
        <= 1e-6

    keys = json.loads(search_step_file(FAMILY, "state_keys.json").read_text())
    official = [k for k, _, _ in keys if not k.startswith(ARCH_PREFIXES)]
    names = dict(zip(official, official_supernet_to_ours({k: k for k in official})))
    net.zero_grad(set_to_none=True)
    wsample = _samples(meta, "weight")
    F.cross_entropy(weight_forward(net, _arch(net.graph, "arch_params_init_mbv2.npz"), x, wsample,
                                   quirks=OFFICIAL_QUIRKS), y).backward()
    params = dict(net.named_parameters())
    grads = _npz("weight_step_grads.npz")
    for k, ref in grads.items():
        g = params[names[k]].grad.numpy().ravel()
        if np.abs(ref).max() > 1e-3:
            assert g @ ref.ravel() / (np.linalg.norm(g) * np.linalg.norm(ref)) > 0.99, k
    with_grad = meta["mbv2"]["weight_step"]["params_with_grad"]
    abs_sum = np.load(search_step_file(FAMILY, "weight_step_grad_abs_sum.npy"))
    ours_sum = np.array([float(params[names[k]].grad.abs().sum()) for k in with_grad])
    np.testing.assert_allclose(ours_sum, abs_sum, rtol=1e-2, atol=1e-3)
    net.zero_grad(set_to_none=True)
