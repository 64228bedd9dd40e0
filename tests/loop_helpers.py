"""Small Loop set-ups for the engine tests: two phases, two modules / optimizers, method state, per-rank RNG."""
import os

import numpy as np
import torch
import torch.nn as nn

from nas_zoo.search.engine import DistContext, Loop, Phase, all_reduce_grads


class Stop(Exception):
    pass


class Counter:
    """Method state: a stateful object the checkpoint must carry (e.g. a board, a genotype)."""

    def __init__(self):
        self.value = 0

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, d):
        self.value = d["value"]


def two_phase_loop(ckpt, epochs=3, die_at=None, ctx=None, width_state=None, ckpt_every=1, **kw):
    """Phase 'arch' (manual: gradient surgery on `alpha`, its own Adam) then phase 'weights' (automatic SGD, two
    loaders in lock-step). The weights network is built by `build` from method state (two-stage restore)."""
    ctx = ctx or DistContext()
    torch.manual_seed(0)
    alpha = nn.Parameter(torch.zeros(3))
    holder = nn.Module()
    holder.alpha = alpha
    counter = Counter()
    width = width_state or Counter()
    data_a = [torch.randn(4, 5) for _ in range(4)]
    data_b = [(torch.randn(4, 5), torch.randn(4, 1)) for _ in range(6)]
    data_c = [torch.randn(4, 1) for _ in range(5)]
    calls = {"n": 0}
    rng = np.random.RandomState(7 + ctx.rank)

    def build(loop):
        if width.value == 0:
            width.value = 6  # decided once, then saved: a resumed run must rebuild the same network
        torch.manual_seed(1)
        net = nn.Sequential(nn.Linear(5, width.value), nn.ReLU(), nn.Linear(width.value, 1))
        loop.modules["net"] = net
        loop.optimizers["weights"] = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        loop.schedulers["weights"] = torch.optim.lr_scheduler.StepLR(loop.optimizers["weights"], 1, 0.5)
        loop.sched_interval["weights"] = "step"

    def tick():
        calls["n"] += 1
        if die_at is not None and calls["n"] == die_at:
            raise Stop

    def arch_step(x):
        tick()
        loop.zero_grad("arch")
        path = int(rng.randint(3))
        loss = (torch.softmax(alpha, 0)[path] * x.pow(2).mean()) + 0.01 * torch.randn(())
        loop.backward(loss)
        alpha.grad *= 2.0  # surgery between backward and step
        all_reduce_grads([alpha], ctx)
        loop.step("arch")
        counter.value += path
        return {"loss": loss, "path": torch.tensor(float(path))}

    def weight_step(batch):
        tick()
        (x, y), extra = batch
        net = loop.modules["net"]
        return nn.functional.mse_loss(net(x) + 0.01 * torch.randn(()), y + 0.1 * extra)

    loop = Loop(ctx=ctx, ckpt_path=ckpt, epochs=epochs, modules={"alpha": holder},
                optimizers={"arch": torch.optim.Adam([alpha], lr=0.1)},
                phases=[Phase("arch", lambda e: data_a, arch_step, when=lambda e: e >= 1),
                        Phase("weights", lambda e: (data_b, data_c), weight_step, optimizer="weights")],
                state={"counter": counter, "width": width}, rngs={"path": rng}, build=build, ckpt_every=ckpt_every,
                desc="two-phase", **kw)
    loop.counter = counter
    return loop


def loop_result(loop):
    out = {f"{m}.{k}": v.detach().clone() for m, mod in loop.modules.items() for k, v in mod.state_dict().items()}
    out["counter"] = torch.tensor(loop.counter.value)
    return out
