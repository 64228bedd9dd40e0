"""CDARTS' step math, separate from the run loop: the optimizers of one cycle and the joint steps (a) and (b).

Step (a), on a held-out batch: both networks forward, loss
``(CE_search + CE_eval) / loss_alpha + loss_alpha * interactive(em_search, em_eval) + reg``, one backward, the
gradients of every parameter clipped together at `clip`, then the evaluation network's SGD and the alphas' Adam
step. Step (b), on a training batch: the search network's CE, backward, clip, its SGD step. Gradients of (a) that
(b) does not zero (evaluation network, alphas) stay, as in the official loop; they are zeroed before the next (a).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces.darts import Alphas, CdartsNetwork, alpha_l1, interactive_loss


@dataclass
class StepConfig:
    interactive: str = "smooth_l1"   # kl | cosine | mse | smooth_l1 (official interactive_type 0..3)
    temperature: float = 2.0         # loss_T
    loss_alpha: float = 1.0
    reg_count: int = 1               # 3 reproduces the official --repeat_cell triple count
    clip: float = 5.0                # w_grad_clip


def _trainable(params) -> List[nn.Parameter]:
    seen, out = set(), []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def make_optimizers(net: CdartsNetwork, alphas: Alphas, w_lr: float, eval_lr: float, alpha_lr: float,
                    w_weight_decay: float, alpha_weight_decay: float, momentum: float = 0.9) -> Dict[str, torch.optim.Optimizer]:
    """The three optimizers of a cycle: `search` (SGD: stem, heads, ensemble_param, search cells, fc_search),
    `eval` (SGD: stem, heads, ensemble_param, evaluation cells, fc_eval) and `arch` (Adam, betas (0.5, 0.999))."""
    return {
        "search": torch.optim.SGD(_trainable(net.search_parameters()), lr=w_lr, momentum=momentum,
                                  weight_decay=w_weight_decay),
        "eval": torch.optim.SGD(_trainable(net.eval_parameters()), lr=eval_lr, momentum=momentum,
                                weight_decay=w_weight_decay),
        "arch": torch.optim.Adam(alphas.parameters(), lr=alpha_lr, betas=(0.5, 0.999),
                                 weight_decay=alpha_weight_decay),
    }


def all_parameters(net: CdartsNetwork, alphas: Alphas) -> List[nn.Parameter]:
    return list(net.parameters()) + list(alphas.parameters())


def step_a_loss(net: CdartsNetwork, alphas: Alphas, x, y, reg_decay: float, cfg: StepConfig) -> Dict[str, torch.Tensor]:
    """The loss of step (a) and its parts (no backward)."""
    logits_search, em_search = net.forward_search(x, alphas)
    logits_eval, em_eval = net.forward_eval(x)
    ce_search = F.cross_entropy(logits_search, y)
    ce_eval = F.cross_entropy(logits_eval, y)
    loss_cls = (ce_search + ce_eval) / cfg.loss_alpha
    loss_interactive = interactive_loss(em_search, em_eval, cfg.temperature, cfg.interactive) * cfg.loss_alpha
    reg_normal = alpha_l1(alphas.normal, reg_decay, count=cfg.reg_count)
    reg_reduce = alpha_l1(alphas.reduce, reg_decay, count=cfg.reg_count)
    loss = loss_cls + loss_interactive + (reg_normal + reg_reduce)
    return dict(loss=loss, ce_search=ce_search, ce_eval=ce_eval, loss_cls=loss_cls, loss_interactive=loss_interactive,
                reg_normal=reg_normal, reg_reduce=reg_reduce, logits_search=logits_search, em_search=em_search,
                logits_eval=logits_eval, em_eval=em_eval)


def step_b_loss(net: CdartsNetwork, alphas: Alphas, x, y) -> Dict[str, torch.Tensor]:
    logits, _ = net.forward_search(x, alphas)
    return dict(loss=F.cross_entropy(logits, y), logits=logits)


def joint_step(net: CdartsNetwork, alphas: Alphas, optimizers: Dict[str, torch.optim.Optimizer], held_out, train,
               reg_decay: float, cfg: StepConfig, observe=None, backward=None, step=None) -> Dict[str, torch.Tensor]:
    """Steps (a) then (b) on one held-out and one training batch. `observe(name, value)` sees the intermediate
    results (the step tests use it; the run averages gradients over processes there): 'a' (the loss dict),
    'a_grads' (before clipping), 'b', 'b_grads'. `backward(loss)` / `step(name)` default to plain PyTorch (the
    run passes the engine Loop's, which add AMP scaling)."""
    backward = backward or (lambda loss: loss.backward())
    step = step or (lambda name: optimizers[name].step())
    params = all_parameters(net, alphas)
    val_x, val_y = held_out
    trn_x, trn_y = train
    for p in params:
        p.grad = None
    a = step_a_loss(net, alphas, val_x, val_y, reg_decay, cfg)
    backward(a["loss"])
    if observe is not None:
        observe("a", a)
        observe("a_grads", None)
    norm_a = nn.utils.clip_grad_norm_(params, cfg.clip)
    step("eval")
    step("arch")
    optimizers["search"].zero_grad(set_to_none=True)
    b = step_b_loss(net, alphas, trn_x, trn_y)
    backward(b["loss"])
    if observe is not None:
        observe("b", b)
        observe("b_grads", None)
    nn.utils.clip_grad_norm_(params, cfg.clip)
    step("search")
    return {"loss": a["loss"].detach(), "loss_cls": a["loss_cls"].detach(),
            "loss_interactive": a["loss_interactive"].detach(),
            "loss_reg": (a["reg_normal"] + a["reg_reduce"]).detach(), "grad_norm": norm_a.detach(),
            "loss_search": b["loss"].detach(),
            "top1_eval": (a["logits_eval"].argmax(1) == held_out[1]).float().mean() * 100}
