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

import copy
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError, Opt
from ..engine import DistContext, Loop, Phase, RunLogger, progress, save_checkpoint, seed_everything
from ..spaces.densenas import (SPACES, DenseArchParams, DenseGraph, DenseNASSpace, DenseSpaceConfig, DenseSupernet,
                               Sample, build_cost_table, chained_cost, check_cost_table, constrained_arch,
                               format_cost_table, path_weights, read_cost_table)
from ..train import ENGINE_SECTION
from . import Method

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


# ==================================================================================================================
# the search run: `nas-zoo-search densenas --config F --out DIR`


SPACE_KEYS = ("chs", "fm_sizes", "stages", "num_layers", "adjoin_connect_nums", "last_dim", "head_ops", "stack_ops",
              "input_size")

SCHEMA = {
    "name": Opt(str, help="name of the found model (a timm model name)"),
    "seed": Opt(int, 2, help="official MBV2 search: 2"),
    "data": Opt(dict, help="the data section (nas_zoo.search.data.DataConfig); 'val' is the held-out split of the "
                           "architecture steps (val_fraction carves it out of train, as the official 80/20)"),
    "space": {
        "base": Opt(str, "mbv2", choices=tuple(SPACES), help="official search config the space starts from"),
        **{k: Opt((list, int, type(None)), None, help="replaces the official value (a narrowed space)")
           for k in SPACE_KEYS},
    },
    "search": {
        "epochs": Opt(int, 150),
        "warmup_epochs": Opt(int, 50, help="weight passes only, ops sampled uniformly (official arch_update_epoch)"),
        "batch_size": Opt(int, 352, help="global batch of both passes"),
        "weight_lr": Opt(float, 0.2),
        "weight_momentum": Opt(float, 0.9),
        "weight_decay": Opt(float, 4e-5),
        "weight_min_lr": Opt(float, 1e-5, help="cosine per iteration down to this (official optim.min_lr)"),
        "clip_grad": Opt((float, type(None)), None),
        "arch_lr": Opt(float, 3e-4),
        "arch_betas": Opt(list, [0.5, 0.999]),
        "arch_weight_decay": Opt(float, 1e-3),
        "cost_lambda": Opt(float, 0.15, help="lambda of CE + lambda * log(cost) / log(tau)"),
        "log_base": Opt(float, 15.0, help="tau"),
        "temperature": Opt(float, 1.0, help="softmax temperature of alpha / beta (official ResNet: 0.9)"),
        "sample_policy": Opt(str, "prob", choices=("prob", "uniform"), help="weight-pass sampling after warm-up"),
        "final_double_softmax": Opt(bool, False, help="official quirk: second softmax in the final block"),
        "adam_moves_unsampled": Opt(bool, False, help="official quirk: Adam moves unsampled alpha entries"),
        "arch_step_bn_stats": Opt(bool, False, help="official quirk: arch steps update BN running stats"),
        "ceiling": Opt((float, type(None)), None, help="hard cost ceiling of the final derivation (ms or MMACs)"),
        "eval_batches": Opt(int, 0, help="held-out batches scored per epoch with the derived path (0: all)"),
    },
    "cost": {
        "metric": Opt(str, "latency", choices=("latency", "macs")),
        "table": Opt((str, type(None)), None, help="official-format table file; null: measure / count at start"),
        "device": Opt(str, "cpu", choices=("cpu", "cuda")),
        "batch": Opt(int, 32, help="latency measurement batch (official: 32)"),
        "skip_reg": Opt(bool, True, help="skip layers cost 1/10 of the layer's first op (official skip_reg)"),
        "min_run_time": Opt(float, 0.2, help="seconds of timing per op"),
    },
    "export": {
        "recalibrate_batches": Opt(int, 20, help="train batches re-estimating BN statistics of the found path"),
    },
    "engine": ENGINE_SECTION,
}


def space_config(cfg: dict, num_classes: int, source: str) -> DenseSpaceConfig:
    base = SPACES[cfg["space"]["base"]]
    changes = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg["space"].items()
               if k in SPACE_KEYS and v is not None}
    try:
        out = replace_space(base, changes, num_classes)
        DenseNASSpace(out, table=_dummy_table(out))  # graph and edges
    except (ValueError, TypeError) as e:
        raise ConfigError(source, "space", str(e)) from None
    return out


def replace_space(base: DenseSpaceConfig, changes: dict, num_classes: int) -> DenseSpaceConfig:
    return replace(base, num_classes=num_classes, **changes)


def _dummy_table(cfg: DenseSpaceConfig) -> list:
    g = DenseGraph(cfg)
    return [0.0, [[[[1.0] * len(cfg.head_ops) for _ in b["in_block_idx"]],
                   [[1.0] * len(cfg.stack_ops) for _ in range(b["num_stack_layers"])]] for b in g.inputs[:-1]],
            [1.0] * len(g.inputs[-1]["in_block_idx"]), 0.0]


def check_config(cfg: dict, source: str) -> None:
    s = cfg["search"]
    if s["epochs"] < 1:
        raise ConfigError(source, "search.epochs", "expected >= 1")
    if not 0 <= s["warmup_epochs"] <= s["epochs"]:
        raise ConfigError(source, "search.warmup_epochs", f"expected 0 .. search.epochs ({s['epochs']})")
    if len(s["arch_betas"]) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in s["arch_betas"]):
        raise ConfigError(source, "search.arch_betas", "expected two numbers in [0, 1)")
    if s["log_base"] <= 1:
        raise ConfigError(source, "search.log_base", "tau must be > 1")
    if s["temperature"] <= 0:
        raise ConfigError(source, "search.temperature", "expected > 0")
    if s["batch_size"] < 2:
        raise ConfigError(source, "search.batch_size", "expected >= 2 (train-mode BN)")
    if cfg["cost"]["table"] is not None and not Path(cfg["cost"]["table"]).is_file():
        raise ConfigError(source, "cost.table", f"no such file {cfg['cost']['table']!r}")
    space_config(cfg, 10, source)
    ops = cfg["space"]["stack_ops"]
    if ops is not None and len(ops) < 2:
        raise ConfigError(source, "space.stack_ops", "depth is searched by skip_connect beside at least one op: "
                                                     "give at least 2")
    if cfg["space"]["head_ops"] is not None and not cfg["space"]["head_ops"]:
        raise ConfigError(source, "space.head_ops", "expected at least one op")


def load_or_build_table(cfg: dict, space_cfg: DenseSpaceConfig, image_size: int, run_dir: Path, ctx: DistContext,
                        source: str) -> list:
    """The cost table of the run: a given official-format file, or one measured (latency) / counted (MACs) now
    and kept in RUN_DIR/cost_table (the official text format) so a resumed run prices with the same table."""
    c = cfg["cost"]
    path = Path(c["table"]) if c["table"] else run_dir / f"cost_table_{c['metric']}"
    if path.exists():
        table = read_cost_table(path)
        try:
            check_cost_table(table, DenseGraph(space_cfg), str(path))
        except ValueError as e:
            raise ConfigError(source, "cost.table", str(e)) from None
        return table
    if ctx.is_main:
        bar = (lambda it: progress(it, ctx, desc=f"cost table ({c['metric']})"))
        table = build_cost_table(space_cfg, c["metric"], image_size=image_size, device=c["device"],
                                 batch_size=c["batch"], skip_reg=c["skip_reg"], progress=bar,
                                 min_run_time=c["min_run_time"])
        _write_text(path, format_cost_table(table))
    ctx.barrier()
    return read_cost_table(path)


class _SearchState:
    """Steps so far per pass (saved in the loop's checkpoint)."""

    def __init__(self):
        self.weight_steps, self.arch_steps = 0, 0
        self.history: List[dict] = []

    def state_dict(self):
        return {"weight_steps": self.weight_steps, "arch_steps": self.arch_steps}

    def load_state_dict(self, d):
        self.weight_steps, self.arch_steps = int(d["weight_steps"]), int(d["arch_steps"])


def _kill_hook(phase: str, step: int) -> None:
    """Tests: NAS_ZOO_TEST_KILL=phase:step kills this process (SIGKILL) right after that step's checkpoint."""
    spec = os.environ.get("NAS_ZOO_TEST_KILL")
    if spec and spec == f"{phase}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _all_reduce_grads(params, ctx: DistContext) -> None:
    if not ctx.distributed:
        return
    import torch.distributed as dist
    for p in params:
        dist.all_reduce(p.grad)
        p.grad /= ctx.world_size


def _bn_recalibrate(net: DenseSupernet, arch: dict, batches, device) -> None:
    """BN statistics of the found path re-estimated on training batches (cumulative average), as the child
    inherits them."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for x, _ in batches:
            net.forward_arch(x.to(device), arch)
    for m, mom in zip(bns, momenta):
        m.momentum = mom


@torch.no_grad()
def _score_arch(net: DenseSupernet, arch: dict, loader, ctx: DistContext, max_batches: int = 0) -> Dict[str, float]:
    """Held-out top-1 / loss of the derived path with the supernet's weights. BN in train mode (batch statistics),
    as the official validation does: the running statistics are those of the whole supernet, not of this path."""
    net.train()
    saved = bn_buffers(net)
    totals = torch.zeros(3, dtype=torch.float64)
    for i, (x, y) in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        x, y = x.to(ctx.device), y.to(ctx.device)
        logits = net.forward_arch(x, arch)
        totals += torch.tensor([float(F.cross_entropy(logits, y, reduction="sum")),
                                float((logits.argmax(1) == y).sum()), len(y)], dtype=torch.float64)
    restore_bn_buffers(saved)
    totals = ctx.all_reduce_sum(totals)
    n = max(1.0, float(totals[2]))
    return {"val_loss": float(totals[0]) / n, "val_top1": 100.0 * float(totals[1]) / n}


def run_densenas(cfg: dict, run_dir: Path, ctx: DistContext, source: str = "<config>",
                 logger: Optional[RunLogger] = None) -> Dict[str, Any]:
    from timm.scheduler import CosineLRScheduler

    from ..data import DataConfig, build_dataset, create_loader

    run_dir = Path(run_dir)
    s = cfg["search"]
    seed = cfg["seed"]
    seed_everything(seed)  # the same supernet / alpha initialisation in every process
    data_cfg = DataConfig.from_dict(cfg["data"], where="data")
    train_ds, val_ds = build_dataset(data_cfg, "train"), build_dataset(data_cfg, "val")
    num_classes = train_ds.num_classes
    image_size = data_cfg.image_size if isinstance(data_cfg.image_size, int) else data_cfg.image_size[-1]
    space_cfg = space_config(cfg, num_classes, source)
    table = load_or_build_table(cfg, space_cfg, image_size, run_dir, ctx, source)
    space = DenseNASSpace(space_cfg, table=table, metric=cfg["cost"]["metric"])
    if s["ceiling"] is not None and space.cost_range()[0] > s["ceiling"]:
        raise ConfigError(source, "search.ceiling", f"{s['ceiling']:g} is below the cheapest child of the space "
                                                    f"({space.cost_range()[0]:.4g} by the cost table)")
    quirks = DenseQuirks(final_double_softmax=s["final_double_softmax"], adam_moves_unsampled=s["adam_moves_unsampled"],
                         arch_step_bn_stats=s["arch_step_bn_stats"])
    logger = logger or RunLogger(run_dir / "log.jsonl", ctx, tensorboard=cfg["engine"]["tensorboard"])
    device = ctx.device

    net = space.supernet(num_classes, final_double_softmax=quirks.final_double_softmax).to(device)
    arch = DenseArchParams(space.graph).to(device)
    weight_opt = torch.optim.SGD(net.parameters(), lr=s["weight_lr"], momentum=s["weight_momentum"],
                                 weight_decay=s["weight_decay"])
    arch_opt = make_arch_optimizer(arch, s["arch_lr"], s["arch_lr"], tuple(s["arch_betas"]), s["arch_weight_decay"])
    if s["batch_size"] % ctx.world_size:
        raise ConfigError(source, "search.batch_size", f"{s['batch_size']} is not divisible by the "
                                                       f"{ctx.world_size} processes")
    per_rank = s["batch_size"] // ctx.world_size
    workers = cfg["engine"]["workers"]
    train_loader = create_loader(train_ds, data_cfg, per_rank, train=True, workers=workers,
                                 distributed=ctx.distributed, seed=seed)
    arch_loader = create_loader(val_ds, data_cfg, per_rank, train=True, workers=workers, distributed=ctx.distributed,
                                seed=seed + 1, drop_last=True)
    eval_loader = create_loader(val_ds, data_cfg, per_rank, train=False, workers=workers, distributed=ctx.distributed,
                                seed=seed)
    if len(train_loader) == 0 or len(arch_loader) == 0:
        raise ConfigError(source, "search.batch_size", f"{s['batch_size']} is larger than the train "
                                                       f"({len(train_ds)}) or held-out ({len(val_ds)}) split")
    total_weight_steps = s["epochs"] * len(train_loader)
    scheduler = CosineLRScheduler(weight_opt, t_initial=total_weight_steps, lr_min=s["weight_min_lr"],
                                  t_in_epochs=False)
    sampler_gen = torch.Generator().manual_seed(seed)  # op samples: the same in every process
    state = _SearchState()
    reduce = (lambda params: _all_reduce_grads(params, ctx)) if ctx.distributed else None
    loop: Optional[Loop] = None

    def arch_pass_step(batch):
        x, y = batch[0].to(device), batch[1].to(device)
        sample = Sample.draw(arch, 2, "prob", sampler_gen, s["temperature"])
        out = arch_step(net, arch, loop.optimizers["arch"], table, x, y, sample, cost_lambda=s["cost_lambda"],
                        log_base=s["log_base"], temperature=s["temperature"], quirks=quirks, all_reduce=reduce)
        state.arch_steps += 1
        return {"loss": out["loss"], "ce": out["ce"], "cost": out["cost"]}

    def weight_pass_step(batch):
        x, y = batch[0].to(device), batch[1].to(device)
        policy = "uniform" if loop.epoch < s["warmup_epochs"] else s["sample_policy"]
        sample = Sample.draw(arch, 1, policy, sampler_gen, s["temperature"])
        loop.zero_grad("weights")
        loss = F.cross_entropy(weight_forward(net, arch, x, sample, s["temperature"], quirks), y)
        loop.backward(loss)
        if reduce is not None:
            reduce([p for p in net.parameters() if p.grad is not None])
        loop.step("weights")
        state.weight_steps += 1
        return {"loss": loss}

    def epoch_loader(loader):
        def make(epoch):
            loader.sampler.set_epoch(epoch)
            return loader
        return make

    t0 = time.time()

    def on_epoch_end(lp, epoch, record):
        found = space.arch_from_params(arch)
        with torch.no_grad():
            all_ops = Sample.all_ops(space.graph)
            estimate = float(chained_cost(table, space.graph, path_weights(arch, all_ops, s["temperature"]),
                                          all_ops))
        record.update({"weight_steps": state.weight_steps, "arch_steps": state.arch_steps,
                       "derived_cost": space.cost(found), "chained_cost_all_ops": estimate, "path": found["path"],
                       **_score_arch(net, found, eval_loader, ctx, s["eval_batches"]),
                       "time": round(time.time() - t0, 1)})

    def after_step(lp, phase):
        if cfg["engine"]["ckpt_every"] and lp.batch_in_phase % cfg["engine"]["ckpt_every"] == 0:
            _kill_hook(phase, state.arch_steps if phase == "arch" else state.weight_steps)

    loop = Loop(ctx=ctx, ckpt_path=run_dir / "ckpt" / "search.pt", epochs=s["epochs"],
                modules={"supernet": net, "arch": arch}, optimizers={"weights": weight_opt, "arch": arch_opt},
                schedulers={"weights": scheduler}, sched_interval={"weights": "step"},
                phases=[Phase("arch", epoch_loader(arch_loader), arch_pass_step,
                              when=lambda epoch: epoch >= s["warmup_epochs"]),
                        Phase("weights", epoch_loader(train_loader), weight_pass_step)],
                state={"search": state}, rngs={"sampler": sampler_gen}, on_epoch_end=on_epoch_end,
                after_step=after_step, clip_grad={"weights": s["clip_grad"]} if s["clip_grad"] else None,
                ckpt_every=cfg["engine"]["ckpt_every"], logger=logger, desc="densenas")
    state.history = loop.run()
    return finish(cfg, space, net, arch, train_loader, eval_loader, run_dir, ctx, state, source)


def finish(cfg, space: DenseNASSpace, net: DenseSupernet, arch: DenseArchParams, train_loader, eval_loader,
           run_dir: Path, ctx: DistContext, state: _SearchState, source: str) -> Dict[str, Any]:
    """Derivation (Viterbi, or the most probable path under the ceiling), BN statistics of the path, held-out score,
    RUN_DIR/entry.yaml with the inherited weights, RUN_DIR/net_config in the official format."""
    from nas_zoo.entry import load_entry
    from ..data import DataConfig

    s = cfg["search"]
    if ctx.distributed:  # every process must hold the same architecture parameters (shared samples, reduced grads)
        sums = ctx.all_gather_object([float(p.detach().double().sum()) for p in arch.parameters()])
        if any(x != sums[0] for x in sums):
            raise RuntimeError("the processes' architecture parameters diverged")
    found = (constrained_arch(space, arch, s["ceiling"]) if s["ceiling"] is not None
             else space.arch_from_params(arch))
    netcfg = space.net_config(found)
    train_loader.sampler.set_epoch(10_000)
    batches = [b for _, b in zip(range(cfg["export"]["recalibrate_batches"]), train_loader)]
    _bn_recalibrate(net, found, batches, ctx.device)
    score = _score_arch(net, found, eval_loader, ctx)
    child_state = space.child_state_dict({k: v.detach().cpu() for k, v in net.state_dict().items()}, found)
    entry_arch = space.entry_arch(found)
    unit = "ms" if cfg["cost"]["metric"] == "latency" else "MMACs"
    data_cfg = DataConfig.from_dict(cfg["data"], where="data")
    size = data_cfg.image_size if isinstance(data_cfg.image_size, int) else data_cfg.image_size[-1]
    num_classes = net.classifier.out_features
    tag = {"file": str((run_dir / "child.safetensors").absolute()), "input_size": [3, size, size],
           "num_classes": num_classes, "mean": list(data_cfg.mean), "std": list(data_cfg.std),
           "crop_pct": float(data_cfg.crop_pct), "interpolation": data_cfg.interpolation,
           "description": "supernet weights inherited by the found path (BN statistics re-estimated on it)"}
    entry_data = {
        "name": cfg["name"], "family": space.family,
        "description": f"Searched by DenseNAS (nas_zoo.search) in the {cfg['space']['base']} space: "
                       f"{space.cost(found):.4g} {unit} by the cost table.",
        "arch": entry_arch, "pretrained": {"search": tag},
        "provenance": {"method": "densenas", "config": str(run_dir / "resolved.yaml"),
                       "data": copy.deepcopy(cfg["data"]), "net_type": space.cfg.net_type,
                       "net_config": netcfg.to_text(), "arch": found,
                       "cost": {"metric": cfg["cost"]["metric"], "unit": unit, "value": space.cost(found),
                                "ceiling": s["ceiling"], "table": str(run_dir / f"cost_table_{cfg['cost']['metric']}")
                                if not cfg["cost"]["table"] else cfg["cost"]["table"]},
                       "weights": str(run_dir / "child.safetensors"),
                       "held_out": score}}
    entry = load_entry(entry_data, source=str(run_dir / "entry.yaml"))
    # the child as the family builds it; what the supernet cannot give (a ResNet child's classifier: RES_Net has no
    # final conv1x1, so its classifier sees another width) keeps the child's own initialisation
    from nas_zoo.registry import create_from_entry
    torch.manual_seed(cfg["seed"])
    child = create_from_entry(load_entry({**entry_data, "pretrained": {}}), num_classes=num_classes)
    missing, unexpected = child.load_state_dict(child_state, strict=False)
    if unexpected or any(not k.startswith("fc.") for k in missing):
        raise RuntimeError(f"child weights do not fit the entry: missing {missing[:5]}, unexpected {unexpected[:5]}")
    child_state = child.state_dict()
    if ctx.is_main:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in child_state.items()}, str(run_dir / "child.safetensors"))
        _write_text(run_dir / "net_config", netcfg.to_text())
        _write_text(run_dir / "history.json", json.dumps(state.history, indent=1))
        run_dir.mkdir(parents=True, exist_ok=True)
        entry.save(run_dir / "entry.yaml")
        save_checkpoint({"supernet": net.state_dict(), "arch": arch.state_dict()}, run_dir / "supernet.pt")
    ctx.barrier()
    return {"status": "done", "entry": str(run_dir / "entry.yaml"), "name": cfg["name"], "arch": found,
            "net_config": netcfg.to_text(), "cost": space.cost(found), "unit": unit, **score,
            "summary": f"{cfg['name']}: {space.cost(found):.4g} {unit}, held-out top-1 {score['val_top1']:.2f}% "
                       f"(inherited weights)"}


# ==================================================================================================================
# `nas-zoo-search densenas latency-table`: measure a table on this device, and check the chained estimate

def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom else float("nan")


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b (ties counted on either side)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    da = np.sign(a[:, None] - a[None, :])
    db = np.sign(b[:, None] - b[None, :])
    iu = np.triu_indices(len(a), 1)
    da, db = da[iu], db[iu]
    denom = math.sqrt(float((da != 0).sum()) * float((db != 0).sum()))
    return float((da * db).sum() / denom) if denom else float("nan")


def validation_report(space: DenseNASSpace, n: int, *, device: str = "cpu", batch_size: int = 32,
                      image_size: Optional[int] = None, seed: int = 0, min_run_time: float = 0.2,
                      progress_fn=None) -> Dict[str, Any]:
    """N random architectures built by the zoo family and timed end to end, beside the table estimate (the
    chained estimate of a one-hot architecture): Pearson, Kendall tau, RMSE and the share within 10 %."""
    from nas_zoo.entry import load_entry
    from nas_zoo.registry import create_from_entry
    from ..cost import measure_latency

    rng = np.random.RandomState(seed)
    size = image_size or space.cfg.input_size
    archs = [space.sample(rng) for _ in range(n)]
    items = progress_fn(archs) if progress_fn else archs
    rows = []
    for arch in items:
        entry = load_entry({"name": "densenas_latency_probe", "family": space.family,
                            "arch": space.entry_arch(arch)})
        model = create_from_entry(entry, num_classes=space.cfg.num_classes)
        measured = measure_latency(model, (3, size, size), device, batch_size, min_run_time)
        rows.append({"arch": arch, "estimate_ms": space.cost(arch), "measured_ms": measured})
    est = np.array([r["estimate_ms"] for r in rows])
    meas = np.array([r["measured_ms"] for r in rows])
    rel = np.abs(est - meas) / meas
    return {"n": n, "device": device, "batch_size": batch_size, "image_size": size,
            "pearson": pearson(est, meas), "kendall_tau": kendall_tau(est, meas),
            "rmse_ms": float(np.sqrt(((est - meas) ** 2).mean())), "within_10pct": float((rel <= 0.10).mean()),
            "mean_ratio_measured_over_estimate": float((meas / est).mean()), "rows": rows}


def format_report(report: Dict[str, Any]) -> str:
    return (f"chained latency estimate vs end-to-end measurement, {report['n']} random architectures "
            f"({report['device']}, batch {report['batch_size']}, {report['image_size']} px):\n"
            f"  Pearson {report['pearson']:.3f}   Kendall tau {report['kendall_tau']:.3f}   "
            f"RMSE {report['rmse_ms']:.3f} ms   within 10 %: {100 * report['within_10pct']:.0f} %   "
            f"measured / estimate {report['mean_ratio_measured_over_estimate']:.2f}")


def plot_report(report: Dict[str, Any], path: Path) -> Optional[Path]:
    try:
        from ..plots import _pyplot, _save
        plt = _pyplot()
    except Exception as e:  # noqa: BLE001  (figures are optional)
        print(f"  figure not drawn ({type(e).__name__}: {e}); pip install matplotlib")
        return None
    est = [r["estimate_ms"] for r in report["rows"]]
    meas = [r["measured_ms"] for r in report["rows"]]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(est, meas, s=14)
    lo, hi = min(est + meas), max(est + meas)
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="y = x")
    ax.fill_between([lo, hi], [0.9 * lo, 0.9 * hi], [1.1 * lo, 1.1 * hi], color="0.85", label="within 10 %")
    ax.set_xlabel("chained estimate (ms)")
    ax.set_ylabel("measured end to end (ms)")
    ax.set_title(f"Pearson {report['pearson']:.2f}, Kendall {report['kendall_tau']:.2f}")
    ax.legend(loc="upper left")
    return _save(fig, path)


def latency_table_main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    from ..engine import DistContext as _Ctx
    parser = argparse.ArgumentParser(
        prog="nas-zoo-search densenas latency-table",
        description="Measure the latency of every candidate op of a DenseNAS space at its real input shape on "
                    "this device and write the official four-element table; --validate N then times N random "
                    "architectures end to end beside their table estimate.")
    parser.add_argument("--space", choices=sorted(SPACES), default="mbv2")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds of timing per op")
    parser.add_argument("--no-skip-reg", action="store_true", help="measure skip_connect instead of 1/10 of op 0")
    parser.add_argument("--table", help="an existing table file: skip the measurement (validate it)")
    parser.add_argument("--validate", type=int, default=0, metavar="N")
    parser.add_argument("--config", help="a densenas search config: its (narrowed) space instead of --space")
    parser.add_argument("--out", default=None, help="table file (default lat_list_<space>_<device>_b<batch>)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("latency-table: error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.config:
        from ..config import load_config
        cfg, source = load_config(args.config, SCHEMA)
        space_cfg = space_config(cfg, args.num_classes, source)
        args.image_size = space_cfg.input_size
    else:
        space_cfg = replace(SPACES[args.space], num_classes=args.num_classes)
    out = Path(args.out or f"lat_list_{args.space}_{args.device}_b{args.batch}")
    ctx = _Ctx()
    t0 = time.time()
    if args.table:
        table = read_cost_table(args.table)
        check_cost_table(table, DenseGraph(space_cfg), args.table)
    else:
        table = build_cost_table(space_cfg, "latency", num_classes=args.num_classes, image_size=args.image_size,
                                 device=args.device, batch_size=args.batch, skip_reg=not args.no_skip_reg,
                                 progress=lambda it: progress(it, ctx, desc="ops"), min_run_time=args.min_run_time)
        _write_text(out, format_cost_table(table))
        print(f"wrote {out} ({time.time() - t0:.0f} s)")
    if args.validate:
        space = DenseNASSpace(space_cfg, table=table, metric="latency")
        report = validation_report(space, args.validate, device=args.device, batch_size=args.batch,
                                   image_size=args.image_size, min_run_time=args.min_run_time,
                                   progress_fn=lambda it: progress(it, ctx, desc="archs"))
        print(format_report(report))
        base = out if not args.table else Path(args.table)
        _write_text(base.with_name(base.name + "_validation.json"), json.dumps(report, indent=1))
        fig = plot_report(report, base.with_name(base.name + "_validation.png"))
        if fig:
            print(f"  figure: {fig}")
    return 0


def same_cost_archs(space: DenseNASSpace, arch: dict, n: int, rng: np.random.RandomState,
                    tolerance: float = 0.1, tries: int = 20000) -> List[dict]:
    """n random architectures of the space whose table cost is within `tolerance` (relative) of `arch`'s."""
    target = space.cost(arch)
    out: List[dict] = []
    for _ in range(tries):
        cand = space.sample(rng)
        if cand["path"] != arch["path"] or cand != arch:
            if abs(space.cost(cand) - target) <= tolerance * target:
                out.append(cand)
                if len(out) == n:
                    return out
    raise RuntimeError(f"found only {len(out)} of {n} random architectures within {100 * tolerance:g} % of "
                       f"{target:.4g}; raise the tolerance")


def baseline_main(argv: Optional[Sequence[str]] = None) -> int:
    """`nas-zoo-search densenas baseline RUN_DIR --config TRAIN.yaml`: the found model and N random paths of the
    same cost, each trained from scratch with the same recipe; prints and writes RUN_DIR/baseline.json."""
    import argparse

    from nas_zoo.entry import load_entry
    from ..config import load_config, read_yaml
    from ..engine import setup_distributed
    from ..train import TRAIN_SCHEMA, run_training
    parser = argparse.ArgumentParser(prog="nas-zoo-search densenas baseline")
    parser.add_argument("run_dir")
    parser.add_argument("--config", required=True, help="train config (e.g. configs/search/train_demo.yaml)")
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=0.1)
    args, extra = parser.parse_known_args(argv)
    if any("=" not in x or x.startswith("-") for x in extra):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    run_dir = Path(args.run_dir)
    search_cfg = validate_config(read_yaml(run_dir / "resolved.yaml"), str(run_dir / "resolved.yaml"))
    entry = load_entry(run_dir / "entry.yaml")
    found = entry.provenance["arch"]
    table_path = Path(entry.provenance["cost"]["table"])
    space_cfg = space_config(search_cfg, 10, str(run_dir / "resolved.yaml"))
    space = DenseNASSpace(space_cfg, table=read_cost_table(table_path), metric=search_cfg["cost"]["metric"])
    randoms = same_cost_archs(space, found, args.n, np.random.RandomState(search_cfg["seed"]), args.tolerance)
    train_cfg, _ = load_config(args.config, TRAIN_SCHEMA, args.overrides)
    ctx = setup_distributed(train_cfg["engine"]["device"])
    results = []
    base = run_dir / "baseline"
    for i, arch in enumerate([found] + randoms):
        name = "found" if i == 0 else f"random{i}"
        entry_path = base / name / "entry.yaml"
        if ctx.is_main and not entry_path.exists():
            entry_path.parent.mkdir(parents=True, exist_ok=True)
            load_entry({"name": f"{search_cfg['name']}_{name}", "family": space.family,
                        "arch": space.entry_arch(arch),
                        "provenance": {"method": "densenas", "arch": arch, "net_config": space.net_config(arch)
                                       .to_text()}}).save(entry_path)
        ctx.barrier()
        out = run_training(str(entry_path), copy.deepcopy(train_cfg), base / name / "train", ctx)
        results.append({"model": name, "arch": arch, "cost": space.cost(arch), "val_top1": out["val_top1"]})
    mean_random = float(np.mean([r["val_top1"] for r in results[1:]]))
    summary = {"found_top1": results[0]["val_top1"], "random_mean_top1": mean_random,
               "unit": "ms" if search_cfg["cost"]["metric"] == "latency" else "MMACs", "results": results}
    if ctx.is_main:
        _write_text(run_dir / "baseline.json", json.dumps(summary, indent=1))
        print(f"found {results[0]['val_top1']:.2f}% ({results[0]['cost']:.4g} {summary['unit']}) vs random paths "
              f"of the same cost {mean_random:.2f}% (" + ", ".join(f"{r['val_top1']:.2f}% @ {r['cost']:.4g}"
                                                                 for r in results[1:]) + ")")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`nas-zoo-search densenas <subcommand>`: the method's own commands."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["latency-table"]:
        return latency_table_main(argv[1:])
    print(f"nas-zoo-search densenas: unknown subcommand {argv[:1]}; expected latency-table", file=sys.stderr)
    return 2


COMMANDS = {"latency-table": latency_table_main, "baseline": baseline_main}


# ==================================================================================================================
# figures: the chosen path through the dense graph, the cost over epochs

def plot_search(run_dir: Path) -> Optional[Path]:
    """RUN_DIR/search.png: left, the dense graph (nodes by width and stage, every edge grey, the found path
    bold); right, derived cost and all-ops chained estimate per epoch beside held-out top-1. Optional."""
    run_dir = Path(run_dir)
    try:
        from ..plots import _pyplot, _save
        plt = _pyplot()
    except Exception as e:  # noqa: BLE001  (figures are optional; the run's results never depend on them)
        print(f"  figures: not drawn ({type(e).__name__}: {e}); install matplotlib for search.png")
        return None
    try:
        from nas_zoo.entry import load_entry
        from ..config import read_yaml
        cfg = read_yaml(run_dir / "resolved.yaml")
        history = json.loads((run_dir / "history.json").read_text())
        entry = load_entry(run_dir / "entry.yaml")
        found = entry.provenance["arch"]
        space_cfg = space_config(validate_config(cfg), 10, str(run_dir / "resolved.yaml"))
        graph = DenseGraph(space_cfg)
        fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
        xs = list(range(graph.num_nodes))
        ys = list(space_cfg.widths)
        for i, o in enumerate(graph.outputs):
            for j in o["out_id"]:
                ax.plot([xs[i], xs[j]], [ys[i], ys[j]], color="0.85", lw=0.7, zorder=1)
        p = found["path"]
        ax.plot([xs[i] for i in p], [ys[i] for i in p], color="C3", lw=2.2, zorder=2, label="found path")
        ax.scatter(xs, ys, c=list(space_cfg.stages), cmap="viridis", s=22, zorder=3)
        ax.set_xlabel("node")
        ax.set_ylabel("width")
        ax.set_yscale("log")
        ax.set_title("dense super network and the derived path")
        ax.legend(loc="upper left")
        epochs = [r["epoch"] for r in history]
        unit = "ms" if cfg["cost"]["metric"] == "latency" else "MMACs"
        bx.plot(epochs, [r["derived_cost"] for r in history], "o-", label=f"derived path ({unit})")
        bx.plot(epochs, [r["chained_cost_all_ops"] for r in history], "s--", label=f"chained estimate ({unit})")
        if cfg["search"]["warmup_epochs"]:
            bx.axvline(cfg["search"]["warmup_epochs"] + 0.5, color="0.6", lw=0.8, ls=":")
        bx.set_xlabel("epoch")
        bx.set_ylabel(unit)
        cx = bx.twinx()
        cx.plot(epochs, [r["val_top1"] for r in history], "^-", color="C2", label="held-out top-1 (%)")
        cx.set_ylabel("top-1 (%)")
        lines = bx.get_legend_handles_labels()[0] + cx.get_legend_handles_labels()[0]
        labels = bx.get_legend_handles_labels()[1] + cx.get_legend_handles_labels()[1]
        bx.legend(lines, labels, loc="best", fontsize=8)
        bx.set_title("cost over epochs")
        return _save(fig, run_dir / "search.png")
    except Exception as e:  # noqa: BLE001
        print(f"  figures: not drawn ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def validate_config(data: dict, source: str = "<config>") -> dict:
    from ..config import validate
    return validate(data, SCHEMA, source)


def run(job) -> Dict[str, Any]:
    result = run_densenas(job.cfg, job.run_dir, job.ctx, job.source, logger=job.logger)
    result["summary"] = (f"searched {result['summary']}\n  entry: {result['entry']}\n  net_config: "
                         f"{Path(job.run_dir) / 'net_config'}")  # the CLI then draws search.png (plots.plot_run)
    return result


METHOD = Method(name="densenas", help="DenseNAS: dense super network, chained cost, Viterbi derivation",
                description="Warm-up weight passes, then per epoch an architecture pass on the held-out split and "
                            "a weight pass; Viterbi derivation (or the best path under search.ceiling); "
                            "RUN_DIR/entry.yaml and RUN_DIR/net_config (official format).",
                schema=SCHEMA, check=check_config, run=run, commands=COMMANDS, plot=plot_search)
