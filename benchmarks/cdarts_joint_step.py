"""Benchmark: CDARTS' joint step (a) + (b) as `cdarts_steps.joint_step` runs it, beside the same step written as a
plain PyTorch loop body (no config object, no observer hook), interleaved ABAB in one process after a warm-up.

    python benchmarks/cdarts_joint_step.py                      # CPU, demo-sized network
    python benchmarks/cdarts_joint_step.py --width 16 --cells 3 3 2 --eval-cells 7 7 6 --batch 64 --device cuda

Prints the median time per step of each variant, their ratio, and (CUDA only) the peak memory of each.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def plain_step(net, alphas, opts, held, train, reg_decay):
    """The official loop body, written out (interactive SmoothL1, L1 counted once, clip 5)."""
    from nas_zoo.search.spaces.darts import PRIMITIVES
    params = list(net.parameters()) + list(alphas.parameters())
    for p in params:
        p.grad = None
    (vx, vy), (tx, ty) = held, train
    ls, es = net.forward_search(vx, alphas)
    le, ee = net.forward_eval(vx)
    idx = [PRIMITIVES.index(o) for o in ("max_pool_3x3", "avg_pool_3x3", "skip_connect")]
    reg = sum(a[:, idx].abs().sum() for a in list(alphas.normal) + list(alphas.reduce)) * reg_decay
    loss = F.cross_entropy(ls, vy) + F.cross_entropy(le, vy) + F.smooth_l1_loss(es, ee) * 4.0 + reg
    loss.backward()
    nn.utils.clip_grad_norm_(params, 5.0)
    opts["eval"].step()
    opts["arch"].step()
    opts["search"].zero_grad(set_to_none=True)
    F.cross_entropy(net.forward_search(tx, alphas)[0], ty).backward()
    nn.utils.clip_grad_norm_(params, 5.0)
    opts["search"].step()


def main(argv=None):
    from nas_zoo.search.methods.cdarts_steps import StepConfig, joint_step, make_optimizers
    from nas_zoo.search.spaces.darts import Alphas, CdartsNetwork, random_genotype
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--cells", type=int, nargs=3, default=[1, 1, 1])
    ap.add_argument("--eval-cells", type=int, nargs=3, default=[2, 2, 1])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    nets = []
    for _ in range(2):
        torch.manual_seed(0)
        net = CdartsNetwork(10, init_channels=args.width, search_cells_per_stage=args.cells,
                            eval_cells_per_stage=args.eval_cells)
        net.build_eval(random_genotype(np.random.RandomState(0)))
        net.fix_heads()
        net.to(dev).train()
        alphas = Alphas(generator=torch.Generator().manual_seed(1)).to(dev)
        nets.append((net, alphas, make_optimizers(net, alphas, 0.05, 0.05, 3e-4, 3e-4, 0.0)))
    g = torch.Generator().manual_seed(2)
    held = (torch.randn(args.batch, 3, 32, 32, generator=g).to(dev), torch.randint(0, 10, (args.batch,), generator=g).to(dev))
    train = (torch.randn(args.batch, 3, 32, 32, generator=g).to(dev), torch.randint(0, 10, (args.batch,), generator=g).to(dev))
    cfg = StepConfig()
    variants = {
        "nas_zoo joint_step": lambda: joint_step(*nets[0], held, train, 1.0, cfg),
        "plain PyTorch": lambda: plain_step(*nets[1], held, train, 1.0),
    }
    times = {k: [] for k in variants}
    peaks = {k: 0 for k in variants}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for fn in variants.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in variants.items():  # ABAB
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
            if dev.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
    med = {k: statistics.median(v) for k, v in times.items()}
    for name in variants:
        mem = f", peak {peaks[name] / 2**20:.1f} MiB" if dev.type == "cuda" else ""
        print(f"{name:20s} median {med[name] * 1000:8.1f} ms/step ({args.batch / med[name]:.1f} img/s){mem}")
    a, b = med.values()
    print(f"ratio nas_zoo / plain: {a / b:.3f}")


if __name__ == "__main__":
    main()
