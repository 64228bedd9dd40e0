"""DNA supernet training: nas_zoo.search (family-built blocks + the engine's Loop) vs the same loop in plain PyTorch.

One step = a uniformly random single path through one supernet stage, MSE against the teacher's block output,
backward, Adam. The teacher features are fixed random tensors of the right shapes (the teacher costs both sides
the same). Both sides run the same shapes, ops, batches and path sequence.

What is timed is the whole loop: the loader, the steps, the engine's hooks and guard, and the end-of-epoch
checkpoint (plain PyTorch: torch.save of model + optimizer). The variants are interleaved in one process
(A B B A ...), each warmed up first, and the medians over the repeats are reported, wall and CPU time, with the
peak memory of the measured segment (CUDA: max allocated; CPU: peak RSS growth above the segment's start,
sampled every millisecond).

    python benchmarks/dna_supernet_step.py                       # official stage 1 (48 -> 40 x4 -> 80, 56 px)
    python benchmarks/dna_supernet_step.py --stage 3 --batch 32 --device cuda --repeats 7
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from _rss import PeakRSS

# official supernet (hidden, stride, layers), teacher (B7) widths and the input resolution of each stage at 224 px
STAGES = [(24, 2, 2), (40, 2, 4), (80, 2, 4), (112, 1, 4), (192, 2, 4), (320, 1, 1)]
TEACHER = [32, 48, 80, 160, 224, 384, 640]
IN_RES = [112, 56, 28, 14, 14, 7]
OPS = [(6, 3), (6, 5), (6, 7), (3, 3), (3, 5), (3, 7)]


def plain_stage(stage: int):
    import torch.nn as nn

    class MBConv(nn.Module):
        def __init__(self, cin, cout, k, s, e):
            super().__init__()
            mid = cin * e
            self.pw = nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU(inplace=True))
            self.dw = nn.Sequential(nn.Conv2d(mid, mid, k, s, k // 2, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                    nn.SiLU(inplace=True))
            rd = int(cin * 0.25)
            self.se_reduce, self.se_expand = nn.Conv2d(mid, rd, 1), nn.Conv2d(rd, mid, 1)
            self.act = nn.SiLU(inplace=True)
            self.pwl = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = s == 1 and cin == cout

        def forward(self, x):
            y = self.dw(self.pw(x))
            y = y * self.se_expand(self.act(self.se_reduce(y.mean((2, 3), keepdim=True)))).sigmoid()
            y = self.pwl(y)
            return y + x if self.skip else y

    hidden, stride, layers = STAGES[stage]
    chans = [TEACHER[stage]] + [hidden] * (layers - 1) + [TEACHER[stage + 1]]
    return nn.ModuleList(nn.ModuleList(MBConv(chans[i], chans[i + 1], k, stride if i == 0 else 1, e) for e, k in OPS)
                         for i in range(layers))


def build(stage: int, batch: int, steps: int, device: str):
    """The two variants' epoch functions, built on the same shapes, batches and paths."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from timm.optim import create_optimizer_v2

    from nas_zoo.search.engine import DistContext, Loop, Phase
    from nas_zoo.search.spaces.dna import PRIMITIVES, SupernetStage

    dev = torch.device(device)
    hidden, stride, layers = STAGES[stage]
    res = IN_RES[stage]
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, TEACHER[stage], res, res, generator=g),
                torch.randn(batch, TEACHER[stage + 1], res // stride, res // stride, generator=g))
               for _ in range(steps)]
    tmp = tempfile.mkdtemp(prefix="dna_bench_")

    torch.manual_seed(0)
    ours = SupernetStage(PRIMITIVES, TEACHER[stage], hidden, TEACHER[stage + 1], stride, layers).to(dev)
    ours_opt = create_optimizer_v2(ours, opt="adam", lr=0.005, weight_decay=1e-4)
    torch.manual_seed(0)
    plain = plain_stage(stage).to(dev)
    plain_opt = create_optimizer_v2(plain, opt="adam", lr=0.005, weight_decay=1e-4)
    ctx = DistContext(device=dev)
    counter = {"nas_zoo": 0, "plain": 0}

    def nas_zoo_epoch():
        rng = np.random.RandomState(counter["nas_zoo"])
        counter["nas_zoo"] += 1
        ckpt = os.path.join(tmp, f"loop{counter['nas_zoo']}.pt")

        def step(b):
            x, y = b[0].to(dev, non_blocking=True), b[1].to(dev, non_blocking=True)
            return F.mse_loss(ours(x, [int(rng.randint(len(OPS))) for _ in range(layers)]), y)

        loop = Loop(ctx=ctx, ckpt_path=ckpt, epochs=1, modules={"stage": ours}, optimizers={"adam": ours_opt},
                    phases=[Phase("train", lambda e: batches, step, optimizer="adam")], rngs={"path": rng},
                    desc="bench")
        loop.run()
        os.unlink(ckpt)

    def plain_epoch():
        rng = np.random.RandomState(counter["plain"])
        counter["plain"] += 1
        plain.train()
        for b in batches:
            x, y = b[0].to(dev, non_blocking=True), b[1].to(dev, non_blocking=True)
            h = x
            for layer in plain:
                h = layer[int(rng.randint(len(OPS)))](h)
            loss = F.mse_loss(h, y)
            if not torch.isfinite(loss):  # the same guard the engine runs
                raise RuntimeError("non-finite loss")
            plain_opt.zero_grad(set_to_none=True)
            loss.backward()
            plain_opt.step()
        ckpt = os.path.join(tmp, "plain.pt")
        torch.save({"model": plain.state_dict(), "optimizer": plain_opt.state_dict()}, ckpt)
        os.unlink(ckpt)

    params = {"nas_zoo": sum(p.numel() for p in ours.parameters()),
              "plain": sum(p.numel() for p in plain.parameters())}
    return {"nas_zoo": nas_zoo_epoch, "plain": plain_epoch}, params


def measure(fn, device: str) -> dict:
    import torch
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if cuda:
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else rss.mib
    return {"wall": wall, "cpu": cpu, "peak": peak}


def main() -> int:
    import torch
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", type=int, default=1, choices=range(6))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=10, help="steps per timed epoch")
    p.add_argument("--repeats", type=int, default=5, help="timed epochs per variant (medians are reported)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    os.environ.setdefault("NAS_ZOO_NO_PROGRESS", "1")
    variants, params = build(args.stage, args.batch, args.steps, args.device)
    for fn in variants.values():  # warm-up: every op, the allocator, the optimizer state
        fn()
    results = {name: [] for name in variants}
    order = list(variants)
    for r in range(args.repeats):
        for name in (order if r % 2 == 0 else order[::-1]):  # A B, B A, A B ...
            results[name].append(measure(variants[name], args.device))
    med = {name: {k: statistics.median(m[k] for m in rows) for k in ("wall", "cpu", "peak")}
           for name, rows in results.items()}
    hidden, stride, layers = STAGES[args.stage]
    print(f"DNA supernet stage {args.stage} ({TEACHER[args.stage]} -> {hidden} x{layers} -> {TEACHER[args.stage + 1]},"
          f" {IN_RES[args.stage]} px), batch {args.batch}, {args.steps} steps + checkpoint per epoch, {args.repeats} "
          f"interleaved repeats, {args.device}, torch threads {torch.get_num_threads()}")
    mem = "peak MiB (CUDA alloc)" if args.device.startswith("cuda") else "peak RSS growth MiB"
    print(f"{'variant':<10}{'images/s':>10}{'CPU s/epoch':>13}{mem:>24}{'params':>12}")
    images = args.steps * args.batch
    for name in ("plain", "nas_zoo"):
        m = med[name]
        print(f"{name:<10}{images / m['wall']:>10.1f}{m['cpu']:>13.3f}{m['peak']:>24.1f}{params[name]:>12,}")
    a, b = med["nas_zoo"], med["plain"]
    spread = {n: (min(x["wall"] for x in rows), max(x["wall"] for x in rows)) for n, rows in results.items()}
    print(f"ratio nas_zoo / plain: throughput {b['wall'] / a['wall']:.3f}, CPU time {a['cpu'] / b['cpu']:.3f}, "
          f"peak memory {a['peak'] / max(b['peak'], 1e-9):.3f}")
    print("wall s/epoch min-max: " + ", ".join(f"{n} {lo:.3f}-{hi:.3f}" for n, (lo, hi) in spread.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
