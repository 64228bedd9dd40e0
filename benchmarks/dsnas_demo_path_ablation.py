"""Which choice layers keep the DSNAS / SPOS demo supernet at chance: train it with a random op in some layers
and a fixed op in the others, and print the training top-1 (train-mode BN, so no running-statistics effect) and
the held-out top-1 of one path (eval-mode BN, and after `recalibrate_bn`), per epoch.

    python benchmarks/dsnas_demo_path_ablation.py --random all        # every layer random (the demo's supernet)
    python benchmarks/dsnas_demo_path_ablation.py --random none       # one fixed path
    python benchmarks/dsnas_demo_path_ablation.py --random 0,2,4      # the stride-2 layers only

Recipe: the dsnas_demo space and data, SGD momentum 0.9, lr 0.1, 1 warm-up epoch of a 12-epoch cosine, weight
decay 4e-5, label smoothing 0.1 (the demo's weights optimizer); --opt adamw --lr 0.01 for the train_demo one.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

from nas_zoo.search.data import DataConfig, build_dataset, create_loader
from nas_zoo.search.evaluate import recalibrate_bn
from nas_zoo.search.methods.dsnas import build_space

SPACE = dict(stage_repeats=[2, 2, 2], stage_out_channels=[32, 64, 128], stem_size=16, num_features=256, bn_eps=0.01)
FIXED_PATH = [0, 1, 2, 3, 0, 1]


def as_tensors(ds, cfg):
    xs, ys = zip(*create_loader(ds, cfg, 500, train=False, workers=0, seed=0))
    return torch.cat(xs), torch.cat(ys)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--random", default="all", help="'all', 'none' or comma-separated layer indices")
    p.add_argument("--opt", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = DataConfig.from_dict(dict(kind="embedded", image_size=32, classes=4, num_train=8000, num_val=1000,
                                    augment=False))
    x, y = as_tensors(build_dataset(cfg, "train"), cfg)
    xv, yv = as_tensors(build_dataset(cfg, "val"), cfg)
    space = build_space(SPACE, 32, num_classes=4)
    layers = (range(space.num_layers) if args.random == "all" else [] if args.random == "none"
              else [int(v) for v in args.random.split(",")])
    torch.manual_seed(48)
    net = space.supernet(4)
    batch, steps = 64, len(x) // 64
    if args.opt == "sgd":
        opt = create_optimizer_v2(net, opt="momentum", lr=args.lr, momentum=0.9, weight_decay=4e-5)
    else:
        opt = create_optimizer_v2(net, opt="adamw", lr=args.lr, weight_decay=0.01)
    sched = CosineLRScheduler(opt, t_initial=12 * steps, lr_min=0, warmup_t=steps, warmup_lr_init=1e-3,
                              t_in_epochs=False)
    criterion = LabelSmoothingCrossEntropy(0.1)
    rng = np.random.RandomState(0)

    def held_out(recal: bool) -> float:
        if recal:
            idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))[:512]
            recalibrate_bn(net, lambda t: net(t, FIXED_PATH), [x[idx[i:i + 128]] for i in range(0, 512, 128)])
        net.eval()
        with torch.no_grad():
            top1 = (net(xv, FIXED_PATH).argmax(-1) == yv).float().mean().item() * 100
        net.train()
        return top1

    step, t0 = 0, time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        hits = []
        for b in range(steps):
            i = perm[b * batch:(b + 1) * batch]
            path = [int(rng.randint(4)) if j in layers else c for j, c in enumerate(FIXED_PATH)]
            out = net(x[i], path)
            loss = criterion(out, y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            sched.step_update(step)
            hits.append((out.argmax(-1) == y[i]).float().mean().item())
        state = {k: v.clone() for k, v in net.state_dict().items()}
        eval_bn = held_out(False)
        recal_bn = held_out(True)
        net.load_state_dict(state)  # recalibration is a measurement, not part of training
        print(f"random layers {args.random}: epoch {epoch} train top-1 {100 * np.mean(hits):.1f}  held-out path "
              f"{FIXED_PATH} eval-BN {eval_bn:.1f} recalibrated {recal_bn:.1f}  ({time.time() - t0:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
