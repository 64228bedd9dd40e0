"""Loop: phases, manual steps, two networks, two-stage restore, schedulers, AMP, clipping, NaN checks, EMA, DDP."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from nas_zoo.search.engine import (DistContext, Loop, NonFiniteLossError, Phase, RunError, TrainLoop,
                                   load_checkpoint)

from loop_helpers import Stop, loop_result, two_phase_loop

HERE = Path(__file__).parent


def _equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_killed_inside_the_second_phase_resumes_to_the_same_result(tmp_path):
    full = two_phase_loop(tmp_path / "a.pt")
    history = full.run()
    expected = loop_result(full)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert "arch_loss" not in history[0] and "arch_loss" in history[1]  # the arch phase starts at epoch 1
    assert history[0]["lr_weights"] == pytest.approx(0.05 * 0.5 ** 5)  # torch scheduler stepped per step

    # epoch 1: 4 arch steps then 5 weight steps (6 vs 5 batches in lock-step); die in the weight phase
    with pytest.raises(Stop):
        two_phase_loop(tmp_path / "b.pt", die_at=5 + 4 + 3).run()
    ckpt = load_checkpoint(tmp_path / "b.pt")
    assert (ckpt["loop"]["epoch"], ckpt["loop"]["phase_name"], ckpt["loop"]["batch_in_phase"]) == (1, "weights", 2)
    torch.manual_seed(123)  # a fresh process would not share the old RNG state
    resumed = two_phase_loop(tmp_path / "b.pt")
    resumed.run()
    _equal(loop_result(resumed), expected)

    with pytest.raises(Stop):  # and inside the first (manual) phase
        two_phase_loop(tmp_path / "c.pt", die_at=5 + 3).run()
    resumed = two_phase_loop(tmp_path / "c.pt")
    resumed.run()
    _equal(loop_result(resumed), expected)


def test_two_stage_restore_rebuilds_the_network_from_method_state(tmp_path):
    with pytest.raises(Stop):
        two_phase_loop(tmp_path / "a.pt", die_at=3).run()
    saved = Loop.peek(tmp_path / "a.pt", "width")
    assert saved == {"value": 6}
    loop = two_phase_loop(tmp_path / "a.pt")
    loop.resume()
    assert loop.modules["net"][0].out_features == 6  # built from the restored state, then its weights loaded
    wrong = two_phase_loop(tmp_path / "a.pt")
    wrong.build = lambda lp: None  # same phases, but the network is never built: another set of modules
    with pytest.raises(RunError, match="holds modules"):
        wrong.resume()


def test_nan_every_n_steps_keeps_the_last_good_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    data = [(torch.randn(8, 4), torch.randn(8, 1)) for _ in range(6)]
    n = {"i": 0}

    def step(batch):
        n["i"] += 1
        loss = nn.functional.mse_loss(model(batch[0]), batch[1])
        return loss * float("inf") if n["i"] == 8 else loss

    loop = TrainLoop(ctx=DistContext(), ckpt_path=tmp_path / "l.pt", model=model,
                     optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=3, make_loader=lambda e: data,
                     step_fn=step, ckpt_every=2)
    loop.nan_check_every = 4
    with pytest.raises(NonFiniteLossError, match="check every 4 steps"):
        loop.run()
    ckpt = load_checkpoint(tmp_path / "l.pt")
    assert (ckpt["loop"]["epoch"], ckpt["loop"]["batch_in_phase"]) == (1, 0)  # the save at step 8 was refused


def test_amp_clipping_timm_scheduler_ema_and_eval(tmp_path):
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched, _ = create_scheduler_v2(opt, sched="cosine", num_epochs=2, warmup_epochs=0, updates_per_epoch=4)
    ema = ModelEmaV3(model, decay=0.5)
    norms, evals = [], []
    data = [(100 * torch.randn(8, 4), torch.randn(8, 1)) for _ in range(4)]

    def step(batch):
        assert torch.is_autocast_enabled("cpu")  # amp on CPU: bf16 autocast
        return nn.functional.mse_loss(model(batch[0]).float(), batch[1])

    def after(lp, phase):
        norms.append(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters()])))
        ema.update(model)

    loop = Loop(ctx=DistContext(), ckpt_path=tmp_path / "l.pt", epochs=2, modules={"model": model},
                optimizers={"model": opt}, schedulers={"model": sched}, state={"ema": ema},
                phases=[Phase("train", lambda e: data, step, optimizer="model")], amp=True, clip_grad=0.5,
                after_step=after, eval_fn=lambda e: evals.append(e) or {"val": float(e)})
    history = loop.run()
    assert max(float(n) for n in norms) <= 0.5 + 1e-4  # clipped before the step
    assert history[1]["lr_model"] < history[0]["lr_model"] == 1.0  # the timm cosine schedule, per epoch
    assert evals == [0, 1] and history[1]["val"] == 1.0
    saved = load_checkpoint(tmp_path / "l.pt")["state"]["ema"]
    assert all(torch.equal(saved[k], v) for k, v in ema.state_dict().items())


def test_phase_step_must_return_a_loss(tmp_path):
    loop = Loop(ctx=DistContext(), ckpt_path=tmp_path / "l.pt", epochs=1,
                phases=[Phase("p", lambda e: [1, 2], lambda b: {"acc": torch.tensor(1.0)})])
    with pytest.raises(RunError, match="returned no 'loss'"):
        loop.run()


def test_eval_sampler_counts_every_sample_once():
    from nas_zoo.search.data import ResumableSampler
    data = list(range(11))
    for world in (1, 2, 4):
        seen = sorted(i for r in range(world) for i in ResumableSampler(data, 2, num_replicas=world, rank=r,
                                                                      shuffle=False, pad=False))
        assert seen == data
    padded = [i for r in range(4) for i in ResumableSampler(data, 2, num_replicas=4, rank=r, shuffle=False)]
    assert len(padded) == 12  # what DistributedSampler does, and why evaluation must not use it


def test_two_ranks_draw_their_own_paths_resume_them_and_count_exactly(tmp_path):
    """2 gloo ranks: per-rank RNG (different paths), saved per rank (a killed run resumes the same paths),
    all_reduce_grads, exact DDP evaluation counts."""
    env = dict(os.environ, OMP_NUM_THREADS="1", NAS_ZOO_NO_PROGRESS="1",
               PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))

    def launch(*args):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                               str(HERE / "loop_ranks.py"), *map(str, args)], env=env, capture_output=True, text=True,
                              timeout=300)
        return proc

    full = launch(tmp_path / "full", 0)
    assert full.returncode == 0, full.stderr[-3000:]
    died = launch(tmp_path / "killed", 11)
    assert died.returncode != 0
    resumed = launch(tmp_path / "killed", 0)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "full" / "result.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "result.pt", weights_only=True)
    assert a["paths"][0] != a["paths"][1]  # each rank its own paths
    assert a["paths"] == b["paths"]
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k
    assert a["eval_samples"] == 11 and a["eval_top1_exact"]

