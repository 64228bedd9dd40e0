"""DSNAS / SPOS supernet steps: nas_zoo.search (shufflenet_spos blocks + dsnas_step) vs the same step in plain PyTorch.

DSNAS step = a hard one-hot path, forward of the gated path, label-smoothed CE, (error_loss + loss_alpha).backward(),
alpha.grad *= per-layer reward, SGD on the weights, Adam on alpha. SPOS step (`--method spos`) = one path of the
non-affine-BN supernet, label-smoothed CE, backward, SGD. The plain variant writes the official network
(`DSNAS/blocks.py` Sequential layout, `channel_shuffle` by reshape/permute) and the official in-forward backward by
hand. Both run the same paths, shapes and batches, interleaved ABAB in one process after a warm-up; the medians of
the per-step times are compared. Peak memory: CUDA max allocated (in the same process); on CPU the peak RSS growth
over all steps of each variant alone in a fresh process, above its built model and inputs (ABAB, median), as CPU
has no allocator statistics.
Times are printed, never asserted.

    python benchmarks/dsnas_supernet_step.py                     # paper space, 128 px, batch 8, CPU
    python benchmarks/dsnas_supernet_step.py --method spos
    python benchmarks/dsnas_supernet_step.py --image 224 --batch 64 --device cuda
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPEATS, WIDTHS = (4, 4, 8, 4), (64, 160, 320, 640)


# ------------------------------------------------------------------------------------------ plain PyTorch
def channel_shuffle(x):
    b, c, h, w = x.shape
    x = x.reshape(b * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
    return x[0], x[1]


class PlainBlock(nn.Module):
    def __init__(self, inp, oup, stride, op, eps=1e-2, affine=True):
        super().__init__()
        self.stride = stride
        branch_in = inp if stride == 2 else inp // 2
        mid, out = oup // 2, oup - branch_in
        bn = lambda c: nn.BatchNorm2d(c, eps=eps, affine=affine)  # noqa: E731
        if op < 3:
            k = (3, 5, 7)[op]
            self.branch_main = nn.Sequential(
                nn.Conv2d(branch_in, mid, 1, bias=False), bn(mid), nn.ReLU(inplace=True),
                nn.Conv2d(mid, mid, k, stride, k // 2, groups=mid, bias=False), bn(mid),
                nn.Conv2d(mid, out, 1, bias=False), bn(out), nn.ReLU(inplace=True))
        else:
            k = 3
            self.branch_main = nn.Sequential(
                nn.Conv2d(branch_in, branch_in, 3, stride, 1, groups=branch_in, bias=False), bn(branch_in),
                nn.Conv2d(branch_in, mid, 1, bias=False), bn(mid), nn.ReLU(inplace=True),
                nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), bn(mid),
                nn.Conv2d(mid, mid, 1, bias=False), bn(mid), nn.ReLU(inplace=True),
                nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), bn(mid),
                nn.Conv2d(mid, out, 1, bias=False), bn(out), nn.ReLU(inplace=True))
        if stride == 2:
            self.branch_proj = nn.Sequential(
                nn.Conv2d(inp, inp, k, stride, k // 2, groups=inp, bias=False), bn(inp),
                nn.Conv2d(inp, inp, 1, bias=False), bn(inp), nn.ReLU(inplace=True))

    def forward(self, x):
        if self.stride == 1:
            x_proj, x = channel_shuffle(x)
            return torch.cat((x_proj, self.branch_main(x)), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


class PlainSupernet(nn.Module):
    def __init__(self, num_classes, affine=True):
        super().__init__()
        self.first_conv = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False),
                                        nn.BatchNorm2d(16, eps=1e-2, affine=affine), nn.ReLU(inplace=True))
        feats, inp = [], 16
        for r, w in zip(REPEATS, WIDTHS):
            for j in range(r):
                feats.append(nn.ModuleList(PlainBlock(inp, w, 2 if j == 0 else 1, op, affine=affine)
                                           for op in range(4)))
                inp = w
        self.features = nn.ModuleList(feats)
        self.conv_last = nn.Sequential(nn.Conv2d(inp, 1024, 1, bias=False),
                                       nn.BatchNorm2d(1024, eps=1e-2, affine=affine), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(1024, num_classes, bias=False)
        self.log_alpha = nn.Parameter(torch.empty(len(feats), 4).normal_(1, 0.01))

    def search_step(self, x, y, weights):
        loss_alpha = torch.log((weights * F.softmax(self.log_alpha, -1)).sum(-1)).sum()
        weights.requires_grad_()
        h = self.first_conv(x)
        for i, layer in enumerate(self.features):
            pos = int((weights[i] == 1).nonzero())
            h = layer[pos](h) * weights[i, pos]
        out = self.classifier(self.conv_last(h).mean((2, 3)))
        logp = F.log_softmax(out, -1)
        target = torch.full_like(logp, 0.1 / logp.shape[-1]).scatter_(1, y[:, None], 0.9 + 0.1 / logp.shape[-1])
        error_loss = -(target * logp).sum(-1).mean()
        (error_loss + loss_alpha).backward()
        self.log_alpha.grad.mul_(weights.grad.sum(-1).view(-1, 1))
        return error_loss

    def path_step(self, x, y, path):
        """SPOS: one uniformly drawn path, label-smoothed CE, backward."""
        h = self.first_conv(x)
        for layer, pos in zip(self.features, path):
            h = layer[pos](h)
        logp = F.log_softmax(self.classifier(self.conv_last(h).mean((2, 3))), -1)
        target = torch.full_like(logp, 0.1 / logp.shape[-1]).scatter_(1, y[:, None], 0.9 + 0.1 / logp.shape[-1])
        loss = -(target * logp).sum(-1).mean()
        loss.backward()
        return loss


# ------------------------------------------------------------------------------------------ the benchmark
VARIANTS = ("nas_zoo", "plain")


def build(args, variants=VARIANTS):
    """{variant: step(i)} on the same shapes, batches and paths (only the variants asked for are built)."""
    from timm.loss import LabelSmoothingCrossEntropy
    from nas_zoo.search.dsnas_step import ArchParameters, dsnas_step
    from nas_zoo.search.spaces.shufflenet import ShuffleNetSpace

    dev = torch.device(args.device)
    spos = args.method == "spos"
    space = ShuffleNetSpace(bn_affine=not spos)
    x = torch.randn(args.batch, 3, args.image, args.image, device=dev)
    y = torch.randint(0, 1000, (args.batch,), device=dev)
    rng = np.random.RandomState(0)
    paths = [rng.randint(4, size=space.num_layers).tolist() for _ in range(args.warmup + args.steps)]
    gates = [F.one_hot(torch.tensor(a), 4).float().to(dev) for a in paths]
    criterion = LabelSmoothingCrossEntropy(0.1)
    steps = {}
    torch.manual_seed(0)
    if "nas_zoo" in variants:
        ours = space.supernet(1000).to(dev).train()
        w_opt = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
        alpha = ArchParameters(space.num_layers, 4).to(dev)
        a_opt = torch.optim.Adam(alpha.parameters(), lr=1e-3, betas=(0.5, 0.999))

        def nas_zoo_step(i):
            w_opt.zero_grad(set_to_none=True)
            if spos:
                criterion(ours(x, paths[i]), y).backward()
            else:
                a_opt.zero_grad(set_to_none=True)
                dsnas_step(ours, alpha.log_alpha, x, y, criterion, gates[i])
                a_opt.step()
            w_opt.step()
        steps["nas_zoo"] = nas_zoo_step
    if "plain" in variants:
        plain = PlainSupernet(1000, affine=not spos).to(dev).train()
        w_opt_p = torch.optim.SGD([q for n, q in plain.named_parameters() if n != "log_alpha"], lr=0.1, momentum=0.9)
        a_opt_p = torch.optim.Adam([plain.log_alpha], lr=1e-3, betas=(0.5, 0.999))

        def plain_step(i):
            w_opt_p.zero_grad(set_to_none=True)
            if spos:
                plain.path_step(x, y, paths[i])
            else:
                a_opt_p.zero_grad(set_to_none=True)
                plain.search_step(x, y, gates[i].clone())
                a_opt_p.step()
            w_opt_p.step()
        steps["plain"] = plain_step
    return steps


def memory_of(variant, args) -> float:
    """CPU: peak RSS growth (MiB) over all steps of `variant` alone, in a fresh process, so that the other
    variant's tensors and the allocator's cache do not blur it."""
    import json
    import subprocess
    import sys
    cmd = [sys.executable, __file__, "--memory-of", variant, "--method", args.method, "--image", str(args.image),
           "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--method", choices=("dsnas", "spos"), default="dsnas")
    p.add_argument("--image", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--memory-repeats", type=int, default=3, help="CPU: fresh processes per variant (ABAB)")
    p.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)  # the child process of memory_of
    args = p.parse_args()

    if args.memory_of:  # one variant alone: the peak over all its steps above the built model and inputs
        import json
        from _rss import PeakRSS
        step = build(args, (args.memory_of,))[args.memory_of]
        with PeakRSS() as rss:  # activations, gradients and optimizer state (the steady-state growth is noise)
            for i in range(args.warmup + args.steps):
                step(i)
        print(json.dumps({"peak_mib": rss.mib}))
        return 0

    dev = torch.device(args.device)
    steps = build(args)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times = {v: [] for v in VARIANTS}
    peak = {v: 0.0 for v in VARIANTS}
    for i in range(args.warmup + args.steps):
        for variant in (VARIANTS if i % 2 == 0 else VARIANTS[::-1]):  # A B, B A, ...
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            t = time.perf_counter()
            steps[variant](i)
            sync()
            if i >= args.warmup:
                times[variant].append(time.perf_counter() - t)
                if dev.type == "cuda":
                    peak[variant] = max(peak[variant], torch.cuda.max_memory_allocated() / 2 ** 20)
    if dev.type != "cuda":
        runs = {v: [] for v in VARIANTS}
        for r in range(args.memory_repeats):
            for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
                runs[variant].append(memory_of(variant, args))
        peak = {v: statistics.median(m) for v, m in runs.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    what = "search step" if args.method == "dsnas" else "single-path supernet step (non-affine BN)"
    print(f"{args.method.upper()} {what}, paper space (20 layers x 4 blocks), {args.image} px, batch {args.batch}, "
          f"{args.device}, torch threads {torch.get_num_threads()}, {args.steps} steps each, interleaved")
    mem = "peak MiB (CUDA alloc)" if dev.type == "cuda" else "peak RSS growth MiB"
    print(f"{'variant':<10}{'median ms':>12}{'images/s':>12}{mem:>24}")
    for k in ("plain", "nas_zoo"):
        print(f"{k:<10}{med[k] * 1e3:>12.1f}{args.batch / med[k]:>12.1f}{peak[k]:>24.1f}")
    print(f"ratio nas_zoo / plain: {med['nas_zoo'] / med['plain']:.3f} (step time), "
          f"{peak['nas_zoo'] / max(peak['plain'], 1e-9):.3f} (peak memory)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
