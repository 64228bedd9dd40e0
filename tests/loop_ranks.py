"""Run under `torchrun --nproc_per_node=2` by test_search_loop: per-rank paths, resume, exact DDP evaluation.

argv: OUT_DIR DIE_AT (0: run to the end; k: the process dies without cleanup at step k, as under kill -9)."""
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from nas_zoo.search.data import ResumableSampler
from nas_zoo.search.engine import Loop, Phase, all_reduce_grads, setup_distributed, teardown_distributed
from nas_zoo.search.evaluate import evaluate


class PathLog:
    def __init__(self):
        self.paths = []

    def state_dict(self):
        return {"paths": list(self.paths)}

    def load_state_dict(self, d):
        self.paths = list(d["paths"])


def main():
    out, die_at = Path(sys.argv[1]), int(sys.argv[2])
    ctx = setup_distributed("cpu")
    torch.manual_seed(0)
    model = nn.Linear(5, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.RandomState(100 + ctx.rank)  # per-rank sampler, as DSNAS / SPOS draw paths
    log = PathLog()
    g = torch.Generator().manual_seed(1 + ctx.rank)
    data = [torch.randn(3, 5, generator=g) for _ in range(5)]
    count = {"n": 0}

    def step(x):
        count["n"] += 1
        if die_at and count["n"] == die_at:
            os._exit(3)
        path = int(rng.randint(4))
        log.paths.append(path)
        loop.zero_grad("w")
        loss = model(x)[:, path].pow(2).mean()
        loop.backward(loss)
        all_reduce_grads(model.parameters(), ctx)
        loop.step("w")
        return {"loss": loss}

    loop = Loop(ctx=ctx, ckpt_path=out / "loop.pt", epochs=3, modules={"model": model}, optimizers={"w": opt},
                phases=[Phase("train", lambda e: data, step)], rank_state={"log": log}, rngs={"path": rng},
                ckpt_every=2)
    loop.run()

    xs, ys = torch.randn(11, 5, generator=torch.Generator().manual_seed(9)), torch.arange(11) % 4
    dataset = list(zip(xs, ys))
    sampler = ResumableSampler(dataset, 2, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False, pad=False)
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, sampler=sampler)
    model.eval()
    result = evaluate(model, loader, ctx)
    with torch.no_grad():
        exact = 100.0 * int((model(xs).argmax(1) == ys).sum()) / len(ys)
    paths = ctx.all_gather_object(log.paths)
    if ctx.is_main:
        torch.save({"paths": paths, "weights": model.state_dict(), "eval_samples": result["samples"],
                    "eval_top1_exact": abs(result["top1"] - exact) < 1e-9},
                   out / "result.pt")
    teardown_distributed()


if __name__ == "__main__":
    main()
