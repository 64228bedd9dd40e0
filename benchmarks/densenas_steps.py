"""DenseNAS search steps: nas_zoo.search (DenseSupernet + the method's arch / weight steps) vs plain PyTorch.

Plain PyTorch = the same modules and the same sampled ops, run by a hand-written loop over precomputed
(module, weight) lists with the chained cost and the Adam / SGD steps inline: what remains is the overhead of
the supernet's generic dispatch, the sample bookkeeping and the quirk switches. Variants run interleaved ABAB
in one process after a warm-up; medians and their ratio are printed (never asserted). Also timed: building the
space's MAC table, and (with --latency) measuring its latency table.

    python benchmarks/densenas_steps.py                       # the demo's narrowed MBV2 space, 32 px, batch 64
    python benchmarks/densenas_steps.py --space mbv2 --image-size 224 --batch 32 --device cuda
"""
from __future__ import annotations

import argparse
import math
import statistics
import time


def main() -> None:
    import torch
    import torch.nn.functional as F

    from nas_zoo.search.config import load_config
    from nas_zoo.search.methods import densenas as d
    from nas_zoo.search.spaces.densenas import (SPACES, DenseArchParams, DenseSupernet, Sample, build_cost_table,
                                                chained_cost, path_weights)

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", choices=["demo", *SPACES], default="demo")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=6, help="measured steps per variant and kind")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--latency", action="store_true", help="also time the latency-table measurement")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.space == "demo":
        cfg, src = load_config("configs/search/densenas_demo.yaml", d.SCHEMA)
        space_cfg = d.space_config(cfg, 4, src)
    else:
        from dataclasses import replace
        space_cfg = replace(SPACES[args.space], num_classes=100)
    size = args.image_size or space_cfg.input_size
    dev = torch.device(args.device)

    t0 = time.perf_counter()
    table = build_cost_table(space_cfg, "macs", image_size=size)
    t_table = time.perf_counter() - t0
    net = DenseSupernet(space_cfg).to(dev).train()
    arch = DenseArchParams(net.graph).to(dev)
    wopt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=4e-5)
    aopt = d.make_arch_optimizer(arch)
    x = torch.randn(args.batch, 3, size, size, device=dev)
    y = torch.randint(0, space_cfg.num_classes, (args.batch,), device=dev)
    gen = torch.Generator().manual_seed(0)
    graph = net.graph

    def plain_forward(weights, sample):
        outs = [net.stem(x)]
        for b, block in enumerate(net.blocks):
            spec = graph.inputs[b]
            acc = 0
            for r, (src, bidx) in enumerate(zip(spec["in_block_idx"], spec["beta_idx"])):
                ops = block.head_layer.head_branches[r]._ops
                acc = acc + weights.beta[src][bidx] * sum(w * ops[i](outs[src])
                                                          for w, i in zip(weights.head[b][r], sample.head[b][r]))
            for l, layer in enumerate(block.stack_layers.stack_layers):
                acc = sum(w * layer._ops[i](acc) for w, i in zip(weights.stack[b][l], sample.stack[b][l]))
            outs.append(acc)
        spec = graph.inputs[-1]
        z = sum(weights.beta[src][bidx] * net.conv1_1_block.conv1_1_branches[r].conv1_1(outs[src])
                for r, (src, bidx) in enumerate(zip(spec["in_block_idx"], spec["beta_idx"])))
        return net.classifier(F.adaptive_avg_pool2d(z, 1).flatten(1))

    def ours_arch():
        d.arch_step(net, arch, aopt, table, x, y, Sample.draw(arch, 2, "prob", gen), cost_lambda=0.15, log_base=15.0)

    def plain_arch():
        sample = Sample.draw(arch, 2, "prob", gen)
        aopt.zero_grad(set_to_none=True)
        for q in net.parameters():
            q.requires_grad_(False)
        weights = path_weights(arch, sample)
        loss = F.cross_entropy(plain_forward(weights, sample), y) + 0.15 * torch.log(
            chained_cost(table, graph, weights, sample)) / math.log(15.0)
        loss.backward()
        for q in net.parameters():
            q.requires_grad_(True)
        aopt.step()

    def ours_weight():
        d.weight_step(net, arch, wopt, x, y, Sample.draw(arch, 1, "prob", gen))

    def plain_weight():
        sample = Sample.draw(arch, 1, "prob", gen)
        wopt.zero_grad(set_to_none=True)
        with torch.no_grad():
            weights = path_weights(arch, sample)
        F.cross_entropy(plain_forward(weights, sample), y).backward()
        wopt.step()

    def timed(fn):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t

    for kind, a, b in (("arch step", ours_arch, plain_arch), ("weight step", ours_weight, plain_weight)):
        for _ in range(args.warmup):
            a(), b()
        ta, tb = [], []
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.steps):  # ABAB
            ta.append(timed(a))
            tb.append(timed(b))
        ma, mb = statistics.median(ta), statistics.median(tb)
        mem = f", peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if dev.type == "cuda" else ""
        print(f"{kind:12s} nas_zoo {1e3 * ma:8.1f} ms  plain {1e3 * mb:8.1f} ms  ratio {ma / mb:.3f}  "
              f"({args.batch / ma:.0f} img/s{mem})")
    print(f"MAC table of the space: {t_table:.2f} s")
    if args.latency:
        t0 = time.perf_counter()
        build_cost_table(space_cfg, "latency", image_size=size, device=args.device, batch_size=32,
                         min_run_time=0.05)
        print(f"latency table ({args.device}, batch 32, 0.05 s per op): {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
