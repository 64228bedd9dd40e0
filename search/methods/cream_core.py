"""Cream's step math (microsoft/Cream `lib/core/train.py:train_epoch`, `lib/utils/...PrioritizedBoard`,
`lib/models/MetaMatchingNetwork.py`), independent of the training loop.

* `PrioritizedBoard`: the top-K paths (prec1, cost, arch, SLICE images, their soft labels), sorted as the official
  tuple sort (descending prec1, then descending cost, then descending arch), checkpointable.
* `select_teacher`: the meta-matching network `Linear(num_classes*SLICE -> 1)` over
  `softmax(student(board_images)) - board_soft_labels`; the entry with the largest output (first on ties) teaches.
* `cream_loss`: `(m*KD + (2-m)*CE)/2`, m = sigmoid(-meta output), KD against softmax(teacher logits).
* `meta_update`: the second-order update of the meta-matching network through a simulated SGD step.
* `param_groups` / `linear_decay`: SGD Nesterov's four groups and the per-iteration linear decay.

Official behaviours that the paper contradicts are switches (`Options`); the defaults follow the paper.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spaces.cream import path_parameters

__all__ = ["Options", "BoardEntry", "PrioritizedBoard", "select_teacher", "soft_target_ce", "cream_loss",
           "param_groups", "linear_decay", "sgd_step_", "clip_grads_", "meta_update", "forward_step", "update_board",
           "train_step", "op_prob", "accuracy_top1"]


@dataclass
class Options:
    slice: int = 4                      # images per board entry (SUPERNET.SLICE)
    pool_size: int = 10                 # board size (POOL_SIZE)
    acc_gap: float = 5.0                # prec1 gap to replace the worst entry regardless of cost
    meta_start_epoch: int = 20          # META_STA_EPOCH: plain CE up to and including this epoch
    update_iter: int = 200              # meta update every UPDATE_ITER batches (batch_idx > 0)
    smoothing: float = 0.1
    # official switches
    meta_value_from: str = "winner"     # "last": sigmoid(-output of the LAST board entry) (official bug)
    second_order: str = "all"           # "conv_stem": only students_weight[0] carries the signal (official bug)
    simulate_lr: str = "student"        # "meta": the simulated step uses param_groups[-1]['lr'] (official)
    board_soft_label: str = "own"       # "teacher": a new entry stores the teacher's output (official quirk)
    meta_clip: float = 1.0              # grad-norm clip in both meta-update steps


# ----------------------------------------------------------------------------------------------------------------
# The board


@dataclass
class BoardEntry:
    prec1: float
    cost: float
    arch: List[List[int]]
    images: torch.Tensor
    soft: torch.Tensor

    def key(self):
        return (self.prec1, self.cost, self.arch)


class PrioritizedBoard:
    """The prioritized paths. `entries` is kept sorted best first; identical on every rank (the caller feeds it
    all-reduced prec1 and rank-0 broadcast images / soft labels)."""

    def __init__(self, pool_size: int = 10, acc_gap: float = 5.0, meta_start_epoch: int = 20):
        self.pool_size, self.acc_gap, self.meta_start_epoch = pool_size, acc_gap, meta_start_epoch
        self.entries: List[BoardEntry] = []

    def __len__(self) -> int:
        return len(self.entries)

    def is_update(self, epoch: int, prec1: float, cost: float) -> bool:
        """PrioritizedBoard.isUpdate: after meta_start_epoch, insert when the board is not full, or when prec1
        beats the worst entry by more than acc_gap, or beats it (strictly) with (strictly) fewer FLOPs."""
        if epoch <= self.meta_start_epoch:
            return False
        if len(self.entries) < self.pool_size:
            return True
        worst = self.entries[-1]
        if prec1 > worst.prec1 + self.acc_gap:
            return True
        return prec1 > worst.prec1 and cost < worst.cost

    def update(self, epoch: int, prec1: float, cost: float, arch, images: torch.Tensor,
               soft_logits: torch.Tensor) -> bool:
        """Insert (arch, images, softmax(soft_logits)) when `is_update`; sort best first; trim to pool_size."""
        inserted = self.is_update(epoch, prec1, cost)
        if inserted:
            self.entries.append(BoardEntry(float(prec1), float(cost), [list(map(int, s)) for s in arch],
                                           images.detach().clone(), F.softmax(soft_logits.detach(), dim=1)))
            self.entries.sort(key=BoardEntry.key, reverse=True)
        del self.entries[self.pool_size:]
        return inserted

    def summary(self) -> List[dict]:
        return [{"prec1": e.prec1, "cost": e.cost, "arch": e.arch} for e in self.entries]

    def state_dict(self) -> dict:
        return {"pool_size": self.pool_size, "acc_gap": self.acc_gap, "meta_start_epoch": self.meta_start_epoch,
                "entries": [{"prec1": e.prec1, "cost": e.cost, "arch": e.arch, "images": e.images,
                             "soft": e.soft} for e in self.entries]}

    def load_state_dict(self, state: dict) -> None:
        self.pool_size, self.acc_gap = int(state["pool_size"]), float(state["acc_gap"])
        self.meta_start_epoch = int(state["meta_start_epoch"])
        self.entries = [BoardEntry(float(e["prec1"]), float(e["cost"]), [list(map(int, s)) for s in e["arch"]],
                                   e["images"], e["soft"]) for e in state["entries"]]


def op_prob(board: PrioritizedBoard, num_choices: int) -> Optional[List[float]]:
    """HOW_TO_PROB='teacher': how often each op appears on the board (None on an empty board: uniform)."""
    if not len(board):
        return None
    counts = [0] * num_choices
    for e in board.entries:
        for stage in e.arch:
            for c in stage:
                counts[c] += 1
    total = sum(counts)
    return [c / total for c in counts]


# ----------------------------------------------------------------------------------------------------------------
# Teacher selection and the loss


def select_teacher(student: Callable[[torch.Tensor], torch.Tensor], meta: nn.Module, board: PrioritizedBoard,
                   meta_value_from: str = "winner") -> Tuple[torch.Tensor, int, List[torch.Tensor], List[torch.Tensor]]:
    """(meta_value, teacher index, meta outputs, student logits per entry). Each entry's images run through the
    student path separately (own BatchNorm batch statistics, as the official loop)."""
    outputs, logits = [], []
    best, best_idx = -math.inf, -1
    for i, e in enumerate(board.entries):
        out = student(e.images)
        logits.append(out)
        w = meta((F.softmax(out, dim=1) - e.soft).reshape(1, -1))
        outputs.append(w)
        value = float(w.detach())
        if value > best:
            best, best_idx = value, i
    if best_idx < 0:
        raise ValueError("select_teacher needs a non-empty board whose meta outputs are finite")
    weight = outputs[-1] if meta_value_from == "last" else outputs[best_idx]
    return torch.sigmoid(-weight).reshape(()), best_idx, outputs, logits


def soft_target_ce(logits: torch.Tensor, soft_target: torch.Tensor) -> torch.Tensor:
    """cross_entropy_loss_with_soft_target: mean over the batch of -sum(soft * log_softmax(logits))."""
    return torch.mean(torch.sum(-soft_target * F.log_softmax(logits, dim=1), 1))


def cream_loss(output, target, teacher_output, meta_value, ce_fn) -> Dict[str, torch.Tensor]:
    ce = ce_fn(output, target)
    if teacher_output is None:
        return {"loss": ce, "ce": ce}
    kd = soft_target_ce(output, F.softmax(teacher_output, dim=1))
    return {"loss": (meta_value * kd + (2 - meta_value) * ce) / 2, "ce": ce, "kd": kd}


# ----------------------------------------------------------------------------------------------------------------
# Optimizer pieces


def param_groups(supernet: nn.Module, meta: nn.Module, lr: float, meta_lr: float, weight_decay: float) -> List[dict]:
    """create_optimizer_supernet's four groups: model no-decay (1-D / bias), model decay, meta no-decay, meta
    'decay' (weight decay 0 as well)."""
    groups = {"no_decay": [], "decay": [], "meta_no_decay": [], "meta_decay": []}
    for module, prefix in ((supernet, ""), (meta, "meta_")):
        for name, p in module.named_parameters():
            if not p.requires_grad:
                continue
            plain = p.ndim <= 1 or name.endswith(".bias")
            groups[prefix + ("no_decay" if plain else "decay")].append(p)
    return [{"params": groups["no_decay"], "weight_decay": 0.0, "lr": lr, "name": "no_decay"},
            {"params": groups["decay"], "weight_decay": weight_decay, "lr": lr, "name": "decay"},
            {"params": groups["meta_no_decay"], "weight_decay": 0.0, "lr": meta_lr, "name": "meta_no_decay"},
            {"params": groups["meta_decay"], "weight_decay": 0.0, "lr": meta_lr, "name": "meta_decay"}]


def linear_decay(total_steps: int, start: float = 1.0) -> Callable[[int], float]:
    """create_supernet_scheduler's LambdaLR factor `start - step/ITERS` (start = the official cfg.LR; the
    paper's linear decay to 0 is start=1)."""
    return lambda step: start - step / total_steps


def clip_grads_(grads: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ on a list of gradient tensors, in place (coefficient max_norm / (norm + 1e-6) when < 1)."""
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach()) for g in grads]))
    coef = max_norm / (float(norm) + 1e-6)
    if coef < 1:
        for g in grads:
            g.detach().mul_(coef)
    return norm


def sgd_step_(optimizer: torch.optim.SGD, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> None:
    """torch SGD's update (weight decay, momentum, Nesterov, the group's lr) of `params` with `grads`, written on
    `.data` so that the parameters' autograd version does not change: a graph that saved them reads the updated
    values on backward, as torch 1.2 did with the official code (its SGD.step wrote p.data)."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    with torch.no_grad():
        for p, g in zip(params, grads):
            group = group_of[id(p)]
            d_p = g.detach().clone()
            if group["weight_decay"]:
                d_p.add_(p.data, alpha=group["weight_decay"])
            momentum = group["momentum"]
            if momentum:
                state = optimizer.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d_p.clone()
                else:
                    buf.mul_(momentum).add_(d_p, alpha=1 - group["dampening"])
                d_p = d_p.add(buf, alpha=momentum) if group["nesterov"] else buf
            p.data.add_(d_p, alpha=-group["lr"])


# ----------------------------------------------------------------------------------------------------------------
# The meta-matching update and one training step


def meta_update(supernet, meta: nn.Module, optimizer: torch.optim.SGD, board: PrioritizedBoard,
                images: torch.Tensor, target: torch.Tensor, arch, ce_fn, opts: Options,
                reduce_grads: Optional[Callable[[List[torch.Tensor]], None]] = None) -> Dict[str, object]:
    """MetaMatchingNetwork.run_update: KD (x meta_value) on images[:SLICE] with create_graph, a simulated step
    w' = w - lr*g, the real (clipped) student step, validation CE on images[SLICE:2*SLICE] after it, and the
    meta-matching network's step along d(val)/d(w') . dw'/d(meta) (clipped)."""
    s = opts.slice
    x = images[:s].detach().clone()
    student = lambda inp: supernet(inp, arch)  # noqa: E731
    meta_value, idx, meta_outputs, _ = select_teacher(student, meta, board, opts.meta_value_from)
    teacher_arch = board.entries[idx].arch
    out = supernet(x, arch)
    with torch.no_grad():
        soft = F.softmax(supernet(x, teacher_arch), dim=1)
    kd = meta_value * soft_target_ce(out, soft)
    params = path_parameters(supernet, arch)
    grad1 = torch.autograd.grad(kd, params, create_graph=True)
    if opts.simulate_lr == "meta":
        lr = optimizer.param_groups[-1]["lr"]
    else:
        lr = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}[id(params[0])]
    simulated = [p - lr * g for p, g in zip(params, grad1)]
    student_grads = [g.detach().clone() for g in grad1]
    if reduce_grads is not None:  # DDP: the average over ranks, in place
        reduce_grads(student_grads)
    clip_grads_(student_grads, opts.meta_clip)
    sgd_step_(optimizer, params, student_grads)
    val_loss = ce_fn(supernet(images[s:2 * s], arch), target[s:2 * s])
    grad_val = torch.autograd.grad(val_loss, params, retain_graph=True)
    meta_params = list(meta.parameters())
    if opts.second_order == "conv_stem":
        grad_teacher = torch.autograd.grad(simulated[0], meta_params, grad_outputs=grad_val[0])
    else:
        grad_teacher = torch.autograd.grad(simulated, meta_params, grad_outputs=grad_val, allow_unused=True)
        grad_teacher = [torch.zeros_like(p) if g is None else g for p, g in zip(meta_params, grad_teacher)]
    grad_teacher = [g.detach().clone() for g in grad_teacher]
    if reduce_grads is not None:
        reduce_grads(grad_teacher)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grad_teacher]))
    clip_grads_(grad_teacher, opts.meta_clip)
    sgd_step_(optimizer, meta_params, grad_teacher)
    return {"teacher_idx": idx, "meta_outputs": meta_outputs, "meta_value": meta_value.detach(),
            "kd_times_meta_value": kd.detach(), "validation_loss": val_loss.detach(), "grad1": grad1,
            "n_grad1": len(grad1), "grad_teacher": grad_teacher, "grad_teacher_norm": float(norm)}


def accuracy_top1(output: torch.Tensor, target: torch.Tensor) -> float:
    return float((output.argmax(1) == target).float().mean() * 100.0)


def forward_step(supernet, meta: nn.Module, board: PrioritizedBoard, images: torch.Tensor, target: torch.Tensor,
                 arch, epoch: int, ce_fn, opts: Options) -> Dict[str, object]:
    """train_epoch's forward for one sampled path: teacher selection (whenever the board holds entries), the
    path's logits, and plain CE up to meta_start_epoch (or on an empty board), else (m*KD + (2-m)*CE)/2."""
    record: Dict[str, object] = {"teacher_output": None, "teacher_arch": None}
    use_kd = len(board) > 0 and epoch > opts.meta_start_epoch
    meta_value = None
    if len(board) > 0:
        meta_value, idx, meta_outputs, board_logits = select_teacher(lambda inp: supernet(inp, arch), meta, board,
                                                                     opts.meta_value_from)
        record.update(teacher_idx=idx, meta_outputs=meta_outputs, board_logits=board_logits, meta_value=meta_value,
                      teacher_arch=board.entries[idx].arch)
    output = supernet(images, arch)
    if use_kd:
        with torch.no_grad():
            record["teacher_output"] = supernet(images, record["teacher_arch"]).detach()
    record.update(cream_loss(output, target, record["teacher_output"], meta_value if use_kd else None, ce_fn))
    record["output"] = output
    return record


def update_board(board: PrioritizedBoard, record: Dict[str, object], images: torch.Tensor, target: torch.Tensor,
                 arch, cost: float, epoch: int, opts: Options,
                 reduce_prec1: Optional[Callable[[float], float]] = None) -> bool:
    """update_prioritized_board with this batch's prec1 (averaged over ranks by `reduce_prec1`): the entry keeps
    images[:SLICE] and softmax of the path's own logits (board_soft_label='own') or, on a non-empty board, the
    teacher's (official)."""
    output = record["output"].detach()
    prec1 = accuracy_top1(output, target)
    if reduce_prec1 is not None:
        prec1 = reduce_prec1(prec1)
    record["prec1"] = prec1
    s = opts.slice
    teacher = record["teacher_output"]
    soft = output[:s] if (len(board) == 0 or teacher is None or opts.board_soft_label == "own") else teacher[:s]
    record["inserted"] = board.update(epoch, prec1, cost, arch, images[:s], soft)
    return record["inserted"]


def train_step(supernet, meta: nn.Module, optimizer: torch.optim.SGD, board: PrioritizedBoard,
               images: torch.Tensor, target: torch.Tensor, arch, cost: float, epoch: int, ce_fn,
               opts: Options) -> Dict[str, object]:
    """One iteration of train_epoch after sampling (and after the meta update, when due): forward_step, one
    optimizer step over every parameter with a gradient, the board update. Returns the record with the
    gradients (by parameter id) as the step saw them."""
    record = forward_step(supernet, meta, board, images, target, arch, epoch, ce_fn, opts)
    optimizer.zero_grad(set_to_none=True)
    record["loss"].backward()
    record["grads"] = {id(p): p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]
                       if p.grad is not None}
    optimizer.step()
    update_board(board, record, images, target, arch, cost, epoch, opts)
    return record
