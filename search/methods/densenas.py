"""DenseNAS search (Fang et al., CVPR 2020): width and depth through a densely connected super network.

The step math, as the official ``run_apis/optimizer.py`` does it:

* weight step: 1 op sampled per MixedOp (uniformly during warm-up, by probability afterwards), every path active
  and weighted by softmax(beta), CE only, SGD on the weights;
* architecture step: 2 ops sampled per MixedOp without replacement by probability, softmax over the sampled
  subset, loss ``CE + lambda * log(cost) / log(tau)`` with the chained cost estimate, Adam (alpha group, beta
  group), then the rescale that keeps the unsampled ops' relative probability.

Official quirks, each behind a switch (``DenseQuirks``), paper intent by default:

* ``final_double_softmax``: the final conv1x1 block softmaxes its incoming path weights again (official: yes);
* ``adam_moves_unsampled``: Adam's weight decay and momentum move alpha entries that were not sampled (official:
  yes; default: they are put back after the step);
* ``arch_step_bn_stats``: the arch step on the held-out split updates the BN running statistics (official: yes;
  default: they are restored).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces.densenas import (DenseArchParams, DenseSupernet, PathWeights, Sample, chained_cost, path_weights)

__all__ = ["DenseQuirks", "OFFICIAL_QUIRKS", "arch_forward", "arch_loss_terms", "make_arch_optimizer",
           "rescale_arch_params", "arch_step", "weight_step", "bn_buffers", "restore_bn_buffers"]


@dataclass(frozen=True)
class DenseQuirks:
    final_double_softmax: bool = False
    adam_moves_unsampled: bool = False
    arch_step_bn_stats: bool = False


OFFICIAL_QUIRKS = DenseQuirks(final_double_softmax=True, adam_moves_unsampled=True, arch_step_bn_stats=True)


def arch_forward(net: DenseSupernet, arch: DenseArchParams, table: list, x: torch.Tensor, sample: Sample,
                 temperature: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits, chained cost) of the sampled sub-network."""
    weights = path_weights(arch, sample, temperature)
    logits = net(x, weights, sample)
    return logits, chained_cost(table, net.graph, weights, sample)


def arch_loss_terms(logits: torch.Tensor, target: torch.Tensor, cost: torch.Tensor, cost_lambda: float,
                    log_base: float) -> Dict[str, torch.Tensor]:
    """Eq. (8): ``CE + lambda * log_tau(cost)``."""
    ce = F.cross_entropy(logits, target)
    term = cost_lambda * torch.log(cost) / math.log(log_base)
    return {"loss": ce + term, "ce": ce, "cost": cost, "cost_term": term}


def make_arch_optimizer(arch: DenseArchParams, lr_alpha: float = 3e-4, lr_beta: float = 3e-4,
                        betas: Tuple[float, float] = (0.5, 0.999), weight_decay: float = 1e-3,
                        eps: float = 1e-8) -> torch.optim.Adam:
    """Adam with an alpha group (head then stack) and a beta group, as the official arch optimizer."""
    return torch.optim.Adam([{"params": arch.alphas(), "lr": lr_alpha}, {"params": arch.betas(), "lr": lr_beta}],
                            betas=betas, weight_decay=weight_decay, eps=eps)


def _alpha_rows(arch: DenseArchParams, sample: Sample):
    for params, rows in ((arch.alpha_head_weights, sample.head), (arch.alpha_stack_weights, sample.stack)):
        for p, idx_rows in zip(params, rows):
            for r, idx in enumerate(idx_rows):
                yield p, r, idx


@torch.no_grad()
def rescale_arch_params(arch: DenseArchParams, old_alphas: Sequence[torch.Tensor], sample: Sample) -> None:
    """Add ``log(sum exp alpha_old[sampled] / sum exp alpha_new[sampled])`` to the sampled entries of every row, so
    the sampled ops' total probability mass is what it was (ProxylessNAS); beta is not rescaled."""
    old = dict(zip([id(p) for p in arch.alphas()], old_alphas))
    for p, r, idx in _alpha_rows(arch, sample):
        idx_t = torch.as_tensor(idx, device=p.device)
        before, after = old[id(p)][r, idx_t], p[r, idx_t]
        p[r, idx_t] = after + (torch.logsumexp(before, 0) - torch.logsumexp(after, 0))


@torch.no_grad()
def _restore_unsampled(arch: DenseArchParams, old_alphas: Sequence[torch.Tensor], sample: Sample) -> None:
    for p, old in zip(arch.alphas(), old_alphas):
        if p.numel() == 0:
            continue
        keep = torch.ones_like(p, dtype=torch.bool)
        for q, r, idx in _alpha_rows(arch, sample):
            if q is p:
                keep[r, torch.as_tensor(idx, device=p.device)] = False
        p[keep] = old[keep]


def bn_buffers(module: nn.Module) -> List[Tuple[nn.Module, Dict[str, torch.Tensor]]]:
    return [(m, {"running_mean": m.running_mean.clone(), "running_var": m.running_var.clone(),
                 "num_batches_tracked": m.num_batches_tracked.clone()})
            for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]


@torch.no_grad()
def restore_bn_buffers(saved) -> None:
    for m, buffers in saved:
        for name, value in buffers.items():
            getattr(m, name).copy_(value)


def arch_backward(net: DenseSupernet, arch: DenseArchParams, table: list, x: torch.Tensor, target: torch.Tensor,
                  sample: Sample, *, cost_lambda: float, log_base: float, temperature: float = 1.0,
                  quirks: DenseQuirks = DenseQuirks()) -> Dict[str, torch.Tensor]:
    """Forward + backward of one architecture step (gradients only into alpha / beta)."""
    saved = None if quirks.arch_step_bn_stats else bn_buffers(net)
    net.final_double_softmax = quirks.final_double_softmax
    weights_grad = [p.requires_grad for p in net.parameters()]
    for p in net.parameters():
        p.requires_grad_(False)
    try:
        logits, cost = arch_forward(net, arch, table, x, sample, temperature)
        terms = arch_loss_terms(logits, target, cost, cost_lambda, log_base)
        terms["loss"].backward()
    finally:
        for p, flag in zip(net.parameters(), weights_grad):
            p.requires_grad_(flag)
        if saved is not None:
            restore_bn_buffers(saved)
    terms["logits"] = logits
    return {k: v.detach() for k, v in terms.items()}


def arch_step(net: DenseSupernet, arch: DenseArchParams, optimizer: torch.optim.Optimizer, table: list,
              x: torch.Tensor, target: torch.Tensor, sample: Sample, *, cost_lambda: float, log_base: float,
              temperature: float = 1.0, quirks: DenseQuirks = DenseQuirks(),
              all_reduce=None) -> Dict[str, torch.Tensor]:
    """One architecture step: backward, (all-reduce), Adam, put back unsampled entries (unless the official quirk
    is on), rescale."""
    optimizer.zero_grad(set_to_none=True)
    out = arch_backward(net, arch, table, x, target, sample, cost_lambda=cost_lambda, log_base=log_base,
                        temperature=temperature, quirks=quirks)
    if all_reduce is not None:
        all_reduce([p for p in arch.parameters() if p.grad is not None])
    old = [p.detach().clone() for p in arch.alphas()]
    optimizer.step()
    if not quirks.adam_moves_unsampled:
        _restore_unsampled(arch, old, sample)
    rescale_arch_params(arch, old, sample)
    return out


def weight_forward(net: DenseSupernet, arch: DenseArchParams, x: torch.Tensor, sample: Sample,
                   temperature: float = 1.0, quirks: DenseQuirks = DenseQuirks()) -> torch.Tensor:
    """Logits with 1 op per MixedOp; alpha / beta are constants here."""
    net.final_double_softmax = quirks.final_double_softmax
    with torch.no_grad():
        weights = path_weights(arch, sample, temperature)
    return net(x, weights, sample)


def weight_step(net: DenseSupernet, arch: DenseArchParams, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                target: torch.Tensor, sample: Sample, *, temperature: float = 1.0, quirks: DenseQuirks = DenseQuirks(),
                criterion=None, clip_grad: Optional[float] = None, all_reduce=None) -> Dict[str, torch.Tensor]:
    optimizer.zero_grad(set_to_none=True)
    logits = weight_forward(net, arch, x, sample, temperature, quirks)
    loss = (criterion or F.cross_entropy)(logits, target)
    loss.backward()
    if all_reduce is not None:
        all_reduce([p for p in net.parameters() if p.grad is not None])
    if clip_grad:
        nn.utils.clip_grad_norm_([p for p in net.parameters() if p.grad is not None], clip_grad)
    optimizer.step()
    return {"loss": loss.detach(), "logits": logits.detach()}
