"""Scoring a candidate: BatchNorm recalibration and held-out evaluation, shared by every method.

One-shot methods score a sub-network of a supernet whose BatchNorm statistics belong to no single path, so a
candidate's statistics are recalibrated on training batches first (SPOS, Cream's final selection, DNA's
`BN_Correction`). Under DDP `evaluate` counts every held-out sample exactly once (the loaders of
`nas_zoo.search.data` shard evaluation data without padding) and reduces the sums over the ranks.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .engine import DistContext, progress

__all__ = ["recalibrate_bn", "evaluate", "batchnorms"]


def batchnorms(module: nn.Module):
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrate_bn(module: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor],
                   batches: Iterable[torch.Tensor], cumulative: bool = True) -> None:
    """Forget `module`'s BN running statistics and re-estimate them from `batches` (train-mode forwards).

    cumulative=True: the exact average over the batches (momentum None); False: momentum 1, i.e. the last batch
    alone (the official DNA `BN_Correction` with one batch). Leaves `module` in eval mode, momenta as they were.
    """
    bns = batchnorms(module)
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None if cumulative else 1.0
    module.train()
    try:
        for x in batches:
            forward(x)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        module.eval()


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], loader: Iterable, ctx: DistContext,
             desc: str = "eval", max_batches: Optional[int] = None) -> Dict[str, float]:
    """Cross-entropy and top-1 / top-5 (%) of `forward` over `loader`, every sample once over all ranks."""
    totals = torch.zeros(4, dtype=torch.float64)
    for i, (images, targets) in enumerate(progress(loader, ctx, desc=desc)):
        if max_batches is not None and i >= max_batches:
            break
        images, targets = images.to(ctx.device), targets.to(ctx.device)
        logits = forward(images)
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        hit = topk == targets[:, None]
        totals[0] += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        totals[1] += hit[:, 0].sum().item()
        totals[2] += hit.any(dim=1).sum().item()
        totals[3] += targets.numel()
    totals = ctx.all_reduce_sum(totals.to(ctx.device)).cpu()
    n = float(totals[3])
    if n == 0:
        return {"loss": float("nan"), "top1": float("nan"), "top5": float("nan"), "samples": 0}
    return {"loss": float(totals[0]) / n, "top1": 100.0 * float(totals[1]) / n, "top5": 100.0 * float(totals[2]) / n,
            "samples": int(n)}
