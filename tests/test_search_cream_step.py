"""Cream's search step against the official code (tests/fixtures/cream/search_step, README there).

Each array of the fixture folder is reproduced at the README's tolerance: depth per FLOPs interval, path costs,
the sampler, the board rules, one training step with a given board and the meta-matching update (float64, the
second-order signal read through the post-step weights as torch 1.2 did).
"""
import copy
import json

import numpy as np
import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy

from nas_zoo.search.methods import cream_core as cc
from nas_zoo.search.spaces import cream as cs
from tests.reference import search_step_file, synth_input, synth_tensor

FAMILY = "cream"


def meta_json():
    return json.loads(search_step_file(FAMILY, "meta.json").read_text())


def arr(name):
    return np.load(search_step_file(FAMILY, f"{name}.npy"))


def strip(cand):
    """official cand [[0], 5 stages, [0]] -> our arch (the five searched stages)"""
    assert cand[0] == [0] and cand[-1] == [0]
    return [list(s) for s in cand[1:-1]]


M = meta_json()
FLOPS = M["flops_est"]


# ---------------------------------------------------------------------------------------------------------------
# depth per FLOPs interval, path costs, sampling


@pytest.mark.parametrize("case", M["search_for_layer"], ids=lambda c: f"{c['interval'][0]}-{c['interval'][1]}")
def test_search_for_layer(case):
    table = cs.official_flops_table(FLOPS["flops_dict_M"])
    sta_num, arch_def, resolution = cs.search_for_layer(table, *case["interval"])
    assert sta_num == case["sta_num"]
    assert resolution == case["resolution"]
    assert arch_def == case["arch_def"]


def test_search_for_layer_template_is_official():
    assert [list(s) for s in cs.TEMPLATE] == M["search_for_layer_template_arch_def"]
    assert cs.layer_counts([4, 4, 4, 4, 4]) == [4, 4, 5, 4, 4]


def test_search_for_layer_is_greedy_in_order():
    # a wrong order (stage 1 before stage 2) must give a different answer on a case of the fixture
    table = cs.official_flops_table(FLOPS["flops_dict_M"])
    saved = cs.ORDER
    try:
        cs.ORDER = (1, 3, 4, 2, 0, 2, 3, 4, 1, 0)
        assert cs.search_for_layer(table, 0, 300)[0] != [1, 2, 3, 3, 3]
    finally:
        cs.ORDER = saved


@pytest.mark.parametrize("i", range(len(FLOPS["paths"])))
def test_path_costs(i):
    p = FLOPS["paths"][i]
    arch = strip(p["path"])
    assert cs.path_cost(FLOPS["flops_dict_M"], FLOPS["flops_fixed_M"], arch) == pytest.approx(p["flops_M"], abs=1e-9)
    assert cs.path_cost(FLOPS["params_dict_M"], FLOPS["params_fixed_M"], arch) == pytest.approx(p["params_M"],
                                                                                                abs=1e-9)


def test_sampler_draws():
    d = M["get_cand_with_prob_np_seed"]
    rng = np.random.RandomState(d["np_random_seed"])
    for draw in d["draws"]:
        assert cs.sample_path(rng, [4] * 5, d["prob"], prob_as_replace=True) == draw
    for draw in d["even_draws"]:
        assert cs.sample_path(rng, [4] * 5, None) == draw
    # the paper's pre_prob (p=...) draws differently from the official call
    rng = np.random.RandomState(d["np_random_seed"])
    assert cs.sample_path(rng, [4] * 5, d["prob"]) != d["draws"][0]


def test_pre_prob_frequencies():
    rng = np.random.RandomState(0)
    prob = (0.05, 0.2, 0.05, 0.5, 0.05, 0.15)
    draws = np.concatenate([np.concatenate(cs.sample_path(rng, [4] * 5, prob)) for _ in range(2000)])
    freq = np.bincount(draws, minlength=6) / draws.size
    assert np.abs(freq - prob).max() < 0.01


# ---------------------------------------------------------------------------------------------------------------
# board rules


def board_from(rows, opts_epoch=20, pool=10):
    b = cc.PrioritizedBoard(pool, 5.0, opts_epoch)
    dummy = torch.zeros(4, 3, 2, 2)
    for prec1, _, flops, cand in rows:
        b.entries.append(cc.BoardEntry(float(prec1), float(flops), strip(cand), dummy, torch.zeros(4, 10)))
    return b


def rows_of(board):
    return [[e.prec1, e.prec1, e.cost, [[0]] + e.arch + [[0]]] for e in board.entries]


@pytest.mark.parametrize("case", M["board_update"]["cases"], ids=lambda c: c["case"])
def test_board_cases(case):
    board = board_from(M["board_update"]["board_before"])
    t_out = torch.from_numpy(arr("board_update_teacher_output"))
    s_out = torch.from_numpy(arr("board_update_student_output"))
    arch = strip(case["cand"])
    assert board.is_update(case["epoch"], case["prec1"], case["flops"]) == case["isUpdate"]
    inserted = board.update(case["epoch"], case["prec1"], case["flops"], arch, torch.zeros(4, 3, 2, 2), t_out[:4])
    assert inserted == case["inserted"]
    assert rows_of(board) == case["board_after"]
    del s_out


def test_board_sequential_from_empty():
    seq = M["board_update"]["sequential_from_empty"]
    board = cc.PrioritizedBoard(10, 5.0, 20)
    x = torch.zeros(8, 3, 2, 2)
    for step in seq:
        t = step["t"]
        s_out = torch.from_numpy(arr(f"board_seq_student_out_{t:02d}"))
        t_out = torch.from_numpy(arr(f"board_seq_teacher_out_{t:02d}"))
        # official quirk: after the first entry a new entry stores the teacher's output (board_soft_label=teacher)
        soft = s_out[:4] if len(board) == 0 else t_out[:4]
        board.update(21, step["prec1"], step["flops"], strip(step["cand"]), x[:4], soft)
        assert rows_of(board) == step["board_after"], t
        if t == 0:
            np.testing.assert_allclose(board.entries[0].soft.numpy(), arr("board_seq_entry0_softlabel"),
                                       atol=1e-7, rtol=0)
        if t == 1:
            got = np.stack([e.soft.numpy() for e in board.entries])
            np.testing.assert_allclose(got, arr("board_seq_after_t1_softlabels"), atol=1e-7, rtol=0)


def test_board_ties_keep_official_order_and_trim():
    board = cc.PrioritizedBoard(pool_size=3, acc_gap=5.0, meta_start_epoch=0)
    img = torch.zeros(1, 3, 2, 2)
    soft = torch.zeros(1, 10)
    for prec1, cost, arch in [(50, 300, [[1]]), (50, 200, [[2]]), (50, 300, [[0]]), (40, 100, [[3]])]:
        board.update(1, prec1, cost, arch, img, soft)
    # full board: ties on prec1 rank the costlier path first (official tuple sort), then the larger arch
    assert [(e.prec1, e.cost, e.arch) for e in board.entries] == [(50, 300, [[1]]), (50, 300, [[0]]),
                                                                   (50, 200, [[2]])]
    assert not board.update(1, 50, 150, [[4]], img, soft)            # tie with the worst: strict rules
    assert not board.update(1, 55, 250, [[4]], img, soft)            # gap of exactly 5 is not enough
    assert board.update(1, 51, 150, [[4]], img, soft)                # better and cheaper than the worst
    assert [e.arch for e in board.entries] == [[[4]], [[1]], [[0]]]
    assert board.update(1, 56.5, 999, [[5]], img, soft)              # > 5 over the worst, whatever the cost
    assert len(board) == 3 and board.entries[0].arch == [[5]]
    assert not board.update(0, 99, 1, [[5]], img, soft)              # not before meta_start_epoch
    state = copy.deepcopy(board.state_dict())
    other = cc.PrioritizedBoard()
    other.load_state_dict(state)
    assert other.summary() == board.summary()


def test_op_prob_counts_board_ops():
    board = board_from([[1, 1, 100, [[0], [0, 0], [1, 3], [0]]]])
    assert cc.op_prob(board, 6) == [0.5, 0.25, 0, 0.25, 0, 0]
    assert cc.op_prob(cc.PrioritizedBoard(), 6) is None


# ---------------------------------------------------------------------------------------------------------------
# one training step with a given board, and the meta update


def build(dtype):
    keys = json.loads(search_step_file(FAMILY, "supernet_state_keys.json").read_text())
    sd = {k: torch.from_numpy(synth_tensor(k, s, d)) for k, s, d in keys}
    # sta_num 4/4/4/4/4: the official supernet builds a 5th c80 layer (the r2 string) that no path runs; the space
    # is built without it and its keys are left out
    net = cs.twice_differentiable_gates(cs.cream_space(M["supernet"]["sta_num"]).supernet(M["supernet"]["num_classes"]))
    net.load_state_dict({cs.official_key(k): v for k, v in sd.items()
                         if cs.official_key(k) is not None and not k.startswith("blocks.3.4.")}, strict=True)
    meta = torch.nn.Linear(M["supernet"]["num_classes"] * 4, 1)
    meta.load_state_dict({"weight": sd["meta_layer.weight"], "bias": sd["meta_layer.bias"]})
    net.to(dtype).train()
    meta.to(dtype)
    groups = cc.param_groups(net, meta, lr=1.0, meta_lr=1e-4, weight_decay=1e-4)
    opt = torch.optim.SGD(groups, lr=1.0, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cc.linear_decay(120 * 1_280_000 // 128))
    board = cc.PrioritizedBoard(10, 5.0, 20)
    for j, e in enumerate(M["inputs"]["board"]):
        img = synth_input(4, 224, 224, seed=M["seed"] + 1 + j).to(dtype)
        soft = torch.from_numpy(arr(f"input_board{j}_softlabel")).to(dtype)
        board.entries.append(cc.BoardEntry(e["prec1"], e["flops"], strip(e["cand"]), img, soft))
    x = synth_input(8, 224, 224, seed=M["seed"]).to(dtype)
    y = torch.tensor(M["inputs"]["labels"])
    return net, meta, opt, sched, board, x, y


OFFICIAL = cc.Options(meta_value_from="last", second_order="conv_stem", simulate_lr="meta",
                      board_soft_label="teacher")


def run_step(dtype):
    net, meta, opt, sched, board, x, y = build(dtype)
    arch = strip(M["inputs"]["step_path"])
    before = {"conv_stem": net.net.conv_stem.weight.detach().clone(), "meta_w": meta.weight.detach().clone(),
              "meta_b": meta.bias.detach().clone()}
    cost = cs.path_cost(FLOPS["flops_dict_M"], FLOPS["flops_fixed_M"], arch)
    rec = cc.train_step(net, meta, opt, board, x, y, arch, cost, M["inputs"]["epoch"],
                        LabelSmoothingCrossEntropy(0.1), OFFICIAL)
    sched.step()
    g = rec["grads"]
    rec["grad"] = {"conv_stem": g[id(net.net.conv_stem.weight)], "classifier": g[id(net.net.classifier.weight)],
                   "meta_w": g[id(meta.weight)], "meta_b": g[id(meta.bias)]}
    rec["delta"] = {"conv_stem": net.net.conv_stem.weight.detach() - before["conv_stem"],
                    "meta_w": meta.weight.detach() - before["meta_w"], "meta_b": meta.bias.detach() - before["meta_b"]}
    rec["board"] = board
    rec["cost"] = cost
    rec["lr"] = [grp["lr"] for grp in opt.param_groups]
    return rec


@pytest.fixture(scope="module")
def step32():
    torch.manual_seed(0)
    return run_step(torch.float32)


@pytest.fixture(scope="module")
def step64():
    torch.manual_seed(0)
    return run_step(torch.float64)


def close(got, name, atol=0.0, rtol=0.0):
    ref = arr(name)
    got = got.detach().numpy() if torch.is_tensor(got) else np.asarray(got)
    assert got.shape == ref.shape, name
    np.testing.assert_allclose(got, ref, atol=atol, rtol=rtol, err_msg=name)
    return float(np.abs(got - ref).max())


@pytest.mark.parametrize("dt", ["32", "64"])
def test_step_scalars_and_board(dt, request):
    rec = request.getfixturevalue(f"step{dt}")
    ref = M["step"] if dt == "32" else M["step_f64"]
    assert rec["teacher_idx"] == ref["teacher_idx"] == ref["argmax_meta_outputs"]
    assert [[0]] + rec["teacher_arch"] + [[0]] == ref["teacher_cand"]
    np.testing.assert_allclose([float(w.detach()) for w in rec["meta_outputs"]], ref["meta_outputs"], atol=1e-6, rtol=0)
    assert float(rec["meta_value"]) == pytest.approx(ref["meta_value"], abs=1e-6)
    for k, rk in (("kd", "kd_loss"), ("ce", "ce_loss"), ("loss", "total_loss")):
        assert float(rec[k]) == pytest.approx(ref[rk], abs=1e-6), k
    assert rec["prec1"] == ref["batch_prec1"]
    assert rec["cost"] == pytest.approx(ref["step_path_flops"], abs=1e-9)
    assert rows_of(rec["board"]) == ref["board_after"]
    np.testing.assert_allclose(rec["lr"], ref["lr_after_scheduler_step"], rtol=1e-12)


def test_step_arrays_f32(step32):
    board = step32["board"]
    new = [e for e in board.entries if e.prec1 == 0.0][0]
    close(torch.stack(step32["board_logits"]), "step_student_logits_on_board", atol=1e-5)
    close(step32["output"], "step_student_logits", atol=1e-5)
    close(step32["teacher_output"], "step_teacher_logits", atol=1e-5)
    close(new.soft, "step_board_new_entry_softlabel", atol=1e-6)
    close(step32["grad"]["conv_stem"], "step_grad_conv_stem_weight", atol=1e-6, rtol=1e-4)
    close(step32["grad"]["classifier"], "step_grad_classifier_weight", atol=1e-7, rtol=1e-4)
    close(step32["grad"]["meta_w"].reshape(1, -1), "step_grad_meta_layer_weight", atol=1e-8, rtol=1e-4)
    close(step32["grad"]["meta_b"], "step_grad_meta_layer_bias", atol=1e-8, rtol=1e-4)
    close(step32["delta"]["conv_stem"], "step_delta_conv_stem_weight", atol=2e-6, rtol=1e-4)


def test_step_arrays_f64(step64):
    board = step64["board"]
    new = [e for e in board.entries if e.prec1 == 0.0][0]
    close(torch.stack(step64["board_logits"]), "step_student_logits_on_board_f64", atol=1e-10)
    close(step64["output"], "step_student_logits_f64", atol=1e-10)
    close(step64["teacher_output"], "step_teacher_logits_f64", atol=1e-10)
    close(new.soft, "step_board_new_entry_softlabel_f64", atol=1e-10)
    for key, name in (("conv_stem", "step_grad_conv_stem_weight_f64"), ("classifier", "step_grad_classifier_weight_f64"),
                      ("meta_w", "step_grad_meta_layer_weight_f64"), ("meta_b", "step_grad_meta_layer_bias_f64")):
        close(step64["grad"][key], name, atol=1e-12, rtol=1e-7)
    for key, name in (("conv_stem", "step_delta_conv_stem_weight_f64"), ("meta_w", "step_delta_meta_layer_weight_f64"),
                      ("meta_b", "step_delta_meta_layer_bias_f64")):
        close(step64["delta"][key], name, atol=1e-12, rtol=1e-7)


def test_meta_value_is_the_winners_by_default(step64):
    # paper intent: sigmoid(-output of the chosen teacher); the fixture gives both values
    w = [float(v.detach()) for v in step64["meta_outputs"]]
    assert float(torch.sigmoid(torch.tensor(-max(w), dtype=torch.float64))) == pytest.approx(
        M["step_f64"]["sigmoid_minus_max"], abs=1e-12)
    assert float(step64["meta_value"]) == pytest.approx(M["step_f64"]["sigmoid_minus_last"], abs=1e-12)


def run_metaupd(dtype, opts=OFFICIAL):
    net, meta, opt, sched, board, x, y = build(dtype)
    arch = strip(M["inputs"]["step_path"])
    unused = net.net.blocks[1][0].ops[0].conv_pw.weight   # the path takes choice 1 there
    before = {"conv_stem": net.net.conv_stem.weight.detach().clone(), "meta_w": meta.weight.detach().clone(),
              "meta_b": meta.bias.detach().clone(), "unused": unused.detach().clone()}
    rec = cc.meta_update(net, meta, opt, board, x, y, arch, LabelSmoothingCrossEntropy(0.1), opts)
    rec["delta"] = {"conv_stem": net.net.conv_stem.weight.detach() - before["conv_stem"],
                    "meta_w": meta.weight.detach() - before["meta_w"], "meta_b": meta.bias.detach() - before["meta_b"],
                    "unused": unused.detach() - before["unused"]}
    return rec


@pytest.fixture(scope="module")
def metaupd64():
    torch.manual_seed(0)
    return run_metaupd(torch.float64)


def test_meta_update_f64(metaupd64):
    r, ref = metaupd64, M["metaupd_f64"]
    assert r["teacher_idx"] == ref["select"]["teacher_idx"]
    assert float(r["meta_value"]) == pytest.approx(ref["select"]["meta_value"], abs=1e-12)
    assert float(r["kd_times_meta_value"]) == pytest.approx(ref["kd_loss_times_meta_value"], abs=1e-10)
    assert float(r["validation_loss"]) == pytest.approx(ref["validation_loss"], abs=1e-10)
    assert r["n_grad1"] == ref["n_grad1"]
    assert r["grad_teacher_norm"] == pytest.approx(ref["grad_teacher_norm"], rel=1e-7)
    close(r["grad1"][0], "metaupd_grad1_conv_stem_f64", atol=1e-14, rtol=1e-7)
    close(r["grad_teacher"][0], "metaupd_grad_teacher_meta_layer_weight_f64", atol=1e-16, rtol=1e-7)
    close(r["grad_teacher"][1], "metaupd_grad_teacher_meta_layer_bias_f64", atol=1e-16, rtol=1e-7)
    close(r["delta"]["meta_w"], "metaupd_delta_meta_layer_weight_f64", atol=1e-18, rtol=1e-7)
    close(r["delta"]["meta_b"], "metaupd_delta_meta_layer_bias_f64", atol=1e-18, rtol=1e-7)
    close(r["delta"]["conv_stem"], "metaupd_delta_conv_stem_weight_f64", atol=1e-14, rtol=1e-7)
    # the meta update moves only the path's parameters and the meta network
    assert float(r["delta"]["unused"].abs().max()) == 0.0


def test_meta_update_f32(request):
    # README: float32 vs float64 of the same case differ by <= 2.9e-7 (grad1) and ~3% (grad_teacher)
    r = run_metaupd(torch.float32)
    close(r["grad1"][0], "metaupd_grad1_conv_stem", atol=4e-7, rtol=1e-4)
    close(r["delta"]["conv_stem"], "metaupd_delta_conv_stem_weight", atol=2e-6, rtol=1e-4)
    close(r["grad_teacher"][0], "metaupd_grad_teacher_meta_layer_weight", atol=3e-10, rtol=0.1)


@pytest.mark.slow
def test_meta_update_paper_variant_differs():
    # every parameter's second-order signal (the default) is not the official conv_stem-only gradient
    r = run_metaupd(torch.float64, cc.Options())
    ref = arr("metaupd_grad_teacher_meta_layer_weight_f64")
    assert np.abs(r["grad_teacher"][0].numpy() - ref).max() > 1e-3 * np.abs(ref).max()
