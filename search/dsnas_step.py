"""The DSNAS search step (Hu et al. 2020), as the official `DSNAS/network.py:ShuffleNetV2_OneShot.forward` does it.

Per step and per rank, each layer draws a hard one-hot gate ``Z_i ~ OneHotCategorical(softmax(alpha_i))``; only the
sampled block runs, its output multiplied by ``Z_i[pos]`` (= 1) so that autograd returns ``dL/dZ_i``. The estimator:

* ``loss_alpha = sum_i log(sum_k Z_ik softmax(alpha_i)_k)``, the log-probability of the path, built while Z does
  not require grad, so its backward gives ``alpha.grad = onehot(Z) - softmax(alpha)`` and nothing into Z;
* ``(error_loss + loss_alpha).backward()`` gives the weight gradients of the path, that score and ``Z.grad``;
* ``alpha.grad_i *= sum_k Z.grad_ik`` (the per-layer reward), between the backward and the optimizer step;
* optionally the resource term ``coef * d/dalpha sum_i softmax(alpha_i)[pos_i] * MMACs[i, pos_i]`` (the probability,
  not its log), added after the reward and only when the path's block MMACs reach ``flops_gate`` (official: 290).

Early fix (paper Eq. 8, official `train_imagenet.py` lines 245-253): at every epoch start the rows already fixed
are restored to the values stored when they were fixed, then every layer whose top-1 minus top-2 probability is
>= h becomes fixed at its argmax; fixed rows of Z are forced to that one-hot.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ArchParameters", "EarlyFix", "StepResult", "dsnas_step", "flops_table_mmacs", "force_gates",
           "sample_gates", "max_child"]


class ArchParameters(nn.Module):
    """`log_alpha` (layers x ops), initialised N(loc_mean, loc_std) as the official code does (1, 0.01)."""

    def __init__(self, num_layers: int, num_ops: int, loc_mean: float = 1.0, loc_std: float = 0.01,
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        init = torch.empty(num_layers, num_ops).normal_(loc_mean, loc_std, generator=generator)
        self.log_alpha = nn.Parameter(init)

    def probs(self) -> torch.Tensor:
        return F.softmax(self.log_alpha.detach(), dim=-1)


def sample_gates(log_alpha: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A hard one-hot per row, drawn from softmax(log_alpha) (what OneHotCategorical(probs).sample() draws)."""
    probs = F.softmax(log_alpha.detach(), dim=-1)
    idx = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return F.one_hot(idx, probs.shape[-1]).to(log_alpha.dtype)


def force_gates(gates: torch.Tensor, choices: Dict[int, int]) -> torch.Tensor:
    """`gates` with the rows of `choices` ({layer: op}) set to that op's one-hot."""
    if not choices:
        return gates
    gates = gates.clone()
    for layer, choice in choices.items():
        gates[layer].zero_()
        gates[layer, choice] = 1
    return gates


def max_child(log_alpha: torch.Tensor) -> List[int]:
    """gen_max_child: the row-argmax path."""
    return log_alpha.detach().argmax(-1).tolist()


def flops_table_mmacs(block_macs: np.ndarray) -> torch.Tensor:
    """The per-choice block MACs in MMACs, float32 like the official hard-coded table (the values then enter the
    float64 step as float32-rounded numbers, as in the official code)."""
    return torch.tensor(np.asarray(block_macs, dtype=np.float64) / 1e6, dtype=torch.float32)


class EarlyFix:
    """Layers fixed by the early-fix rule: {layer: (choice, the log_alpha row stored when it was fixed)}."""

    def __init__(self, threshold: float = 0.3, exempt: Sequence[int] = ()):
        self.threshold = float(threshold)
        self.exempt = frozenset(int(i) for i in exempt)  # layers the space holds at one op
        self.fixed: Dict[int, tuple] = {}

    @torch.no_grad()
    def epoch_start(self, log_alpha: torch.Tensor) -> List[int]:
        """Restore the fixed rows, then fix every new layer whose top1 - top2 probability is >= threshold.
        Returns the layers fixed now."""
        for layer, (_, row) in self.fixed.items():
            log_alpha[layer] = row.to(log_alpha)
        top = torch.topk(F.softmax(log_alpha, dim=-1), 2, dim=-1)
        decided = (top.values[:, 0] - top.values[:, 1]) >= self.threshold
        new = []
        for layer in range(log_alpha.shape[0]):
            if bool(decided[layer]) and layer not in self.fixed and layer not in self.exempt:
                self.fixed[layer] = (int(top.indices[layer, 0]), log_alpha[layer].clone())
                new.append(layer)
        return new

    def force(self, gates: torch.Tensor) -> torch.Tensor:
        return force_gates(gates, self.choices())

    def choices(self) -> Dict[int, int]:
        return {layer: choice for layer, (choice, _) in sorted(self.fixed.items())}

    def state_dict(self) -> dict:
        return {"threshold": self.threshold,
                "fixed": {int(k): {"choice": c, "row": r.clone()} for k, (c, r) in self.fixed.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.threshold = float(state["threshold"])
        self.fixed = {int(k): (int(v["choice"]), v["row"].clone()) for k, v in state["fixed"].items()}


@dataclass
class StepResult:
    logits: torch.Tensor
    error_loss: torch.Tensor
    loss_alpha: torch.Tensor
    gates_grad: torch.Tensor      # dL/dZ, non-zero at the sampled positions
    reward: torch.Tensor          # per layer: sum of gates_grad
    score: torch.Tensor           # the log-probability gradient onehot(Z) - softmax(alpha), before the reward
    block_mmacs: float            # the path's block MMACs (float32 table, as the official gate sees them)
    flops_loss: Optional[torch.Tensor] = None
    flops_grad: Optional[torch.Tensor] = None   # the resource term's contribution to alpha.grad (None: not applied)


def dsnas_step(net: nn.Module, log_alpha: torch.Tensor, x: torch.Tensor, target: torch.Tensor,
               criterion: Callable, gates: torch.Tensor, *, flops_table: Optional[torch.Tensor] = None,
               flops_coef: float = 0.0, flops_gate: float = 290.0,
               backward: Optional[Callable[[torch.Tensor], None]] = None) -> StepResult:
    """One DSNAS forward/backward on path `gates` (one-hot rows, already early-fix forced).

    Leaves in `.grad`: the path's weight gradients and `log_alpha.grad = score * reward (+ resource term)`.
    `log_alpha.grad` must be zero or None on entry (the caller zero-grads). `backward` replaces
    `loss.backward()` (e.g. the engine's). Nothing here depends on the world size: the caller averages the
    gradients over ranks after this (a mean of per-rank products, not a product of means).
    """
    backward = backward or (lambda loss: loss.backward())
    gates = gates.detach().to(log_alpha.dtype)
    probs = F.softmax(log_alpha, dim=-1)
    loss_alpha = torch.log((gates * probs).sum(-1)).sum()  # built before the gates require grad
    gates = gates.clone().requires_grad_(True)
    path = gates.detach().argmax(-1).tolist()
    logits = net(x, path, gates)
    error_loss = criterion(logits, target)
    backward(error_loss + loss_alpha)
    if log_alpha.grad is None or gates.grad is None:
        raise RuntimeError("the DSNAS backward gave no gradient to log_alpha or the gates")
    score = log_alpha.grad.detach().clone()
    reward = gates.grad.detach().sum(-1)
    log_alpha.grad.mul_(reward.view(-1, 1))
    result = StepResult(logits=logits.detach(), error_loss=error_loss.detach(), loss_alpha=loss_alpha.detach(),
                        gates_grad=gates.grad.detach().clone(), reward=reward, score=score, block_mmacs=0.0)
    if flops_table is not None:
        table = flops_table.to(log_alpha.device)
        result.block_mmacs = float((gates.detach().to(table.dtype) * table).sum())
        if flops_coef and result.block_mmacs >= flops_gate:
            flops_loss = (gates.detach() * F.softmax(log_alpha, dim=-1) * table).sum()
            (grad,) = torch.autograd.grad(flops_coef * flops_loss, log_alpha)
            log_alpha.grad.add_(grad)
            result.flops_loss, result.flops_grad = flops_loss.detach(), grad
    return result


def average_gradients(params: Sequence[torch.Tensor], world_size: int) -> None:
    """Mean of every gradient over the ranks, the same collective list on every rank: a parameter no rank's path
    touched keeps grad None (so momentum / weight decay leave it alone), one touched on some rank gets zeros on
    the others. Call after the reward is applied (a mean of per-rank products)."""
    if world_size <= 1:
        return
    import torch.distributed as dist
    params = list(params)
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    dist.all_reduce(has)
    for p, n in zip(params, has.tolist()):
        if n == 0:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world_size)
