"""Benchmark: one Cream supernet step, with and without the meta-matching update, beside a plain PyTorch step.

    python benchmarks/cream_supernet_step.py                       # CPU, 64 px, batch 32, depths 1/1/3/1/1
    python benchmarks/cream_supernet_step.py --device cuda --size 224 --batch 128 --depths 4 4 5 4 4

Variants, interleaved (ABCABC...) in one process after a warm-up, medians over the rounds:

* plain - the sampled path trained the plain PyTorch way: forward, label-smoothed CE, backward, SGD step
* cream - the Cream step with a full board (10 entries): teacher selection through the meta-matching network,
          the teacher's forward, (m*KD + (2-m)*CE)/2, backward, SGD step, board update
* meta  - the same plus the second-order meta-matching update (every `update_iter` steps in a run)

Prints the median seconds per step, images per second, the ratios to `plain`, and on CUDA the peak memory.
Times depend on the machine; nothing is asserted.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from timm.loss import LabelSmoothingCrossEntropy

from nas_zoo.search.methods import cream_core as cc
from nas_zoo.search.spaces import cream as cs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--depths", type=int, nargs=5, default=[1, 1, 3, 1, 1])
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    space = cs.cream_space(args.depths, args.size)
    net = cs.twice_differentiable_gates(space.supernet(args.classes)).to(dev).train()
    meta = torch.nn.Linear(args.classes * 4, 1).to(dev)
    opt = torch.optim.SGD(cc.param_groups(net, meta, 0.1, 1e-4, 1e-4), lr=0.1, momentum=0.9, nesterov=True)
    ce = LabelSmoothingCrossEntropy(0.1)
    opts = cc.Options(meta_start_epoch=-1)
    rng = np.random.RandomState(0)
    x = torch.randn(args.batch, 3, args.size, args.size, device=dev)
    y = torch.randint(0, args.classes, (args.batch,), device=dev)
    board = cc.PrioritizedBoard(10, 5.0, -1)
    for i in range(10):
        board.update(0, float(i), float(i), cs.sample_path(rng, space.depths), x[:4], torch.randn(4, args.classes))
    arch = cs.sample_path(rng, space.depths)

    def plain():
        opt.zero_grad(set_to_none=True)
        loss = ce(net(x, arch), y)
        loss.backward()
        opt.step()

    def cream():
        rec = cc.forward_step(net, meta, board, x, y, arch, 1, ce, opts)
        opt.zero_grad(set_to_none=True)
        rec["loss"].backward()
        opt.step()
        cc.update_board(board, rec, x, y, arch, 1.0, 1, opts)

    def with_meta():
        cc.meta_update(net, meta, opt, board, x, y, arch, ce, opts)
        cream()

    variants = {"plain": plain, "cream": cream, "meta": with_meta}
    times = {k: [] for k in variants}
    peaks = {}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for r in range(args.warmup + args.rounds):
        for name, fn in variants.items():
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            t = time.perf_counter()
            fn()
            sync()
            if r >= args.warmup:
                times[name].append(time.perf_counter() - t)
                if dev.type == "cuda":
                    peaks[name] = max(peaks.get(name, 0), torch.cuda.max_memory_allocated())
    base = statistics.median(times["plain"])
    print(f"{args.device}, {args.size} px, batch {args.batch}, depths {args.depths}, board of {len(board)}, "
          f"{args.rounds} rounds (medians)")
    for name in variants:
        med = statistics.median(times[name])
        mem = f", peak {peaks[name] / 2**20:.0f} MiB" if name in peaks else ""
        print(f"  {name:6s} {med * 1e3:8.1f} ms/step  {args.batch / med:8.1f} img/s  x{med / base:.2f} of plain{mem}")


if __name__ == "__main__":
    main()
