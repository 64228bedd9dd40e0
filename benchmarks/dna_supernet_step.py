"""DNA supernet training step: nas_zoo.search (timm blocks + the engine's TrainLoop step) vs plain PyTorch.

One step = a uniformly random single path through one supernet stage, MSE against the teacher's block output,
backward, Adam. The teacher features are fixed random tensors of the right shapes (the teacher's cost is the same
for both and would only dilute the comparison). Both sides run the same shapes, ops and path sequence.

    python benchmarks/dna_supernet_step.py                       # official stage 1 (48 -> 40 x4 -> 80, 56 -> 28 px)
    python benchmarks/dna_supernet_step.py --stage 3 --batch 32 --device cuda

Each variant runs in its own process, so the peak memory (CUDA: max allocated; CPU: peak RSS) is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

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


def run_variant(variant: str, stage: int, batch: int, steps: int, warmup: int, device: str) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from timm.optim import create_optimizer_v2

    torch.manual_seed(0)
    dev = torch.device(device)
    hidden, stride, layers = STAGES[stage]
    res = IN_RES[stage]
    x = torch.randn(batch, TEACHER[stage], res, res, device=dev)
    y = torch.randn(batch, TEACHER[stage + 1], res // stride, res // stride, device=dev)
    rng = np.random.RandomState(0)
    paths = [[int(rng.randint(len(OPS))) for _ in range(layers)] for _ in range(steps + warmup)]

    if variant == "nas_zoo":
        from nas_zoo.search.engine import DistContext, TrainLoop
        from nas_zoo.search.spaces.dna import PRIMITIVES, SupernetStage
        module = SupernetStage(PRIMITIVES, TEACHER[stage], hidden, TEACHER[stage + 1], stride, layers).to(dev)
        opt = create_optimizer_v2(module, opt="adam", lr=0.005, weight_decay=1e-4)
        it = iter(paths)
        loop = TrainLoop(ctx=DistContext(device=dev), ckpt_path=os.devnull, model=module, optimizer=opt, epochs=1,
                         make_loader=lambda e: [], step_fn=lambda b: F.mse_loss(module(b[0], next(it)), b[1]))
        step = lambda: loop._train_step((x, y))  # noqa: E731  (the engine's own step: guard, backward, optimizer)
    else:
        module = plain_stage(stage).to(dev)
        opt = create_optimizer_v2(module, opt="adam", lr=0.005, weight_decay=1e-4)
        it = iter(paths)

        def step():
            h = x
            for layer, c in zip(module, next(it)):
                h = layer[c](h)
            loss = F.mse_loss(h, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

    module.train()
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "images_per_s": steps * batch / elapsed, "peak_mib": peak,
            "params": sum(p.numel() for p in module.parameters())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", type=int, default=1, choices=range(6))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda" if __import__("torch").cuda.is_available() else "cpu")
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.stage, args.batch, args.steps, args.warmup, args.device)))
        return 0
    rows = []
    for variant in ("plain", "nas_zoo"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--stage", str(args.stage), "--batch",
                              str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device",
                              args.device], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    hidden, stride, layers = STAGES[args.stage]
    print(f"DNA supernet step, stage {args.stage} ({TEACHER[args.stage]} -> {hidden} x{layers} -> "
          f"{TEACHER[args.stage + 1]}, {IN_RES[args.stage]} px, stride {stride}), batch {args.batch}, {args.device}, "
          f"torch threads {__import__('torch').get_num_threads()}")
    mem = "peak MiB (CUDA alloc)" if args.device == "cuda" else "peak RSS MiB"
    print(f"{'variant':<10}{'images/s':>12}{mem:>24}{'params':>12}")
    for r in rows:
        print(f"{r['variant']:<10}{r['images_per_s']:>12.1f}{r['peak_mib']:>24.1f}{r['params']:>12,}")
    print(f"ratio nas_zoo / plain: {rows[1]['images_per_s'] / rows[0]['images_per_s']:.3f} (throughput), "
          f"{rows[1]['peak_mib'] / rows[0]['peak_mib']:.3f} (memory)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
