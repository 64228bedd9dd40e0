"""CDARTS: cyclic search on DARTS cells, ending in a `darts_cell` entry (`nas-zoo-search cdarts`).

The run (REPORT §3.2): the training data is split 50/50, stratified by class ("train" trains the search network's
weights, "held-out" the evaluation network and the alphas). `pretrain_epochs` epochs train the search network
alone with cross-entropy. Then every cycle: rebuild the evaluation network from the current genotype and inherit
its weights from the parameter pool; `warmup_epochs` epochs train it alone on the held-out half; `joint_epochs`
epochs of joint steps (a) + (b) (`cdarts_steps.joint_step`) on zipped held-out / train batches; derive the new
genotype, record it, write the evaluation weights back to the pool.

Resume: the checkpoint holds the phase, cycle, epoch and batch position, the genotype, the genotype history, both
modules, the optimizers and the RNG states. On restore the evaluation network is first rebuilt from the saved
genotype (two-stage restore), then the weights and optimizer states load, and the loaders restart at the saved
batch (their order depends only on (seed, epoch)). A run killed anywhere gives the same genotype history.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...io import atomic_write_text
from ..config import ConfigError, Opt
from ..engine import Loop, Phase, all_reduce_grads, save_checkpoint, seed_everything
from ..spaces.darts import (INTERACTIVE_TYPES, LAYOUTS, Alphas, CdartsNetwork, DartsCellSpace, derive_genotype,
                            regulariser_decay)
from ..train import ENGINE_SECTION
from . import Method
from .cdarts_steps import StepConfig, all_parameters, joint_step, make_optimizers

__all__ = ["SCHEMA", "check_config", "run", "METHOD", "RETRAIN", "entry_space"]

# The paper's retrain recipe (CDARTS retrain.py + the CyDAS scripts, REPORT §3.3), recorded in the entry.
RETRAIN = {
    "cifar": dict(init_channels=36, stem_multiplier=3, cells_per_stage=[7, 7, 6], epochs=600, batch_size=128,
                  opt="sgd", lr=0.025, momentum=0.9, weight_decay=5e-4, sched="cosine", warmup_epochs=0,
                  aux_weight=0.4, drop_path_rate=0.3, drop_path_ramp="rate * epoch / epochs", cutout=16,
                  label_smoothing=0.0, clip_grad=5.0,
                  param_rule="below 3.0 M params: wd 3e-4, drop path 0.2; 3.0-3.5 M: wd 3e-4, drop path 0.3"),
    "imagenet": dict(init_channels=48, stem_multiplier=1, cells_per_stage=[5, 5, 4], epochs=250, batch_size=1024,
                     opt="sgd", lr=0.5, momentum=0.9, weight_decay=3e-5, sched="cosine", warmup_epochs=5,
                     aux_weight=0.4, drop_path_rate=0.0, cutout=0, label_smoothing=0.1, clip_grad=5.0,
                     color_jitter=[0.4, 0.4, 0.4, 0.2]),
}

SCHEMA = {
    "name": Opt(str, help="name of the found model (a timm model name)"),
    "seed": Opt(int, 0),
    "data": Opt(dict, help="the data section (nas_zoo.search.data.DataConfig); its train split is halved"),
    "space": {
        "layout": Opt(str, "cifar", choices=tuple(LAYOUTS), help="official model type: stem, depths, head pools"),
        "init_channels": Opt(int, 16, help="search width C"),
        "stem_multiplier": Opt((int, type(None)), None, help="None: the layout's (3 CIFAR, 1 ImageNet)"),
        "search_cells_per_stage": Opt((list, type(None)), None, help="None: [3, 3, 2]"),
        "eval_cells_per_stage": Opt((list, type(None)), None, help="None: [7, 7, 6] CIFAR, [5, 5, 4] ImageNet"),
    },
    "search": {
        "split": Opt(float, 0.5, help="held-out fraction of every class of the training data"),
        "batch_size": Opt(int, 64, help="global batch of every loader"),
        "sample_ratio": Opt(float, 1.0, help="fraction of a loader's batches per epoch (official: 1.0 / 0.2)"),
        "pretrain_epochs": Opt(int, 2),
        "cycles": Opt(int, 30, help="search_iter - pretrain_epochs"),
        "warmup_epochs": Opt(int, 1, help="nasnet_warmup: evaluation-network epochs at the start of a cycle"),
        "joint_epochs": Opt(int, 1, help="search_iter_epochs"),
        "w_lr": Opt(float, 0.08),
        "w_lr_min": Opt(float, 0.0),
        "eval_lr": Opt(float, 0.08, help="nasnet_lr"),
        "alpha_lr": Opt(float, 3e-4),
        "w_weight_decay": Opt(float, 3e-4),
        "alpha_weight_decay": Opt(float, 0.0),
        "momentum": Opt(float, 0.9),
        "clip": Opt(float, 5.0),
        "interactive": Opt(str, "smooth_l1", choices=INTERACTIVE_TYPES, help="official interactive_type 0..3"),
        "temperature": Opt(float, 2.0),
        "loss_alpha": Opt(float, 1.0),
        "regular": Opt(bool, True),
        "regular_coeff": Opt(float, 5.0),
        "regular_ratio": Opt(float, 0.667),
        "fix_head": Opt(bool, True, help="distillation heads stay fixed (CIFAR scripts on, ImageNet off)"),
    },
    "official": {
        "constant_lr": Opt(bool, False, help="official: the schedulers are never stepped"),
        "reset_optimizers": Opt(bool, False, help="official: search SGD and alpha Adam re-created every cycle"),
        "reg_count_per_stage": Opt(bool, False, help="official: the L1 term counted once per stage (3x)"),
        "extra_step": Opt(bool, False, help="official: one more step than the epoch's batches x sample_ratio"),
        "copy_break": Opt(bool, False, help="official: the pool copy stops at a node's identity edge"),
    },
    "export": {
        "init_channels": Opt((int, type(None)), None, help="retrain width (None: 36 CIFAR, 48 ImageNet)"),
        "cells_per_stage": Opt((list, type(None)), None, help="None: the layout's evaluation depth"),
        "drop_path_rate": Opt((float, type(None)), None, help="None: 0.3 CIFAR, 0.0 ImageNet"),
    },
    "engine": ENGINE_SECTION,
}


def _layout(cfg: dict) -> dict:
    sp = cfg["space"]
    base = LAYOUTS[sp["layout"]]
    return dict(stem=base["stem"], init_channels=sp["init_channels"],
                stem_multiplier=sp["stem_multiplier"] or base["stem_multiplier"],
                search_cells_per_stage=sp["search_cells_per_stage"] or base["search_cells_per_stage"],
                eval_cells_per_stage=sp["eval_cells_per_stage"] or base["eval_cells_per_stage"],
                head_pool=base["head_pool"])


def _check_depths(value, source: str, key: str) -> None:
    if value is None:
        return
    if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 and v >= 1 for v in value)):
        raise ConfigError(source, key, f"expected three positive cell counts (stages 0..2), got {value!r}")


def check_config(cfg: dict, source: str) -> None:
    s = cfg["search"]
    for key in ("search_cells_per_stage", "eval_cells_per_stage"):
        _check_depths(cfg["space"][key], source, f"space.{key}")
    _check_depths(cfg["export"]["cells_per_stage"], source, "export.cells_per_stage")
    if cfg["space"]["init_channels"] < 1:
        raise ConfigError(source, "space.init_channels", "expected >= 1")
    if not 0.0 < s["split"] < 1.0:
        raise ConfigError(source, "search.split", f"expected a fraction in (0, 1), got {s['split']}")
    if not 0.0 < s["sample_ratio"] <= 1.0:
        raise ConfigError(source, "search.sample_ratio", f"expected a fraction in (0, 1], got {s['sample_ratio']}")
    for key in ("batch_size", "cycles", "joint_epochs"):
        if s[key] < 1:
            raise ConfigError(source, f"search.{key}", f"expected >= 1, got {s[key]}")
    for key in ("pretrain_epochs", "warmup_epochs"):
        if s[key] < 0:
            raise ConfigError(source, f"search.{key}", f"expected >= 0, got {s[key]}")
    if s["regular"] and not 0.0 < s["regular_ratio"] <= 1.0:
        raise ConfigError(source, "search.regular_ratio", f"expected a fraction in (0, 1], got {s['regular_ratio']}")
    if s["temperature"] <= 0 or s["loss_alpha"] <= 0:
        raise ConfigError(source, "search.temperature", "temperature and loss_alpha must be positive")
    if cfg["engine"]["amp"]:
        raise ConfigError(source, "engine.amp", "CDARTS clips every gradient together at search.clip, which needs "
                                                "unscaled gradients: run it without AMP")
    if cfg["data"].get("val_fraction") is not None:
        raise ConfigError(source, "data.val_fraction", "CDARTS splits the training data itself (search.split); "
                                                       "leave data.val_fraction unset")


# ------------------------------------------------------------------------------------------------ the run


def _steps(n_batches: int, cfg: dict) -> int:
    steps = max(1, int(n_batches * cfg["search"]["sample_ratio"]))
    if cfg["official"]["extra_step"]:  # official `if step > step_num: break`
        steps += 1
    return min(steps, n_batches)


def _cosine(lr: float, lr_min: float, t: int, total: int) -> float:
    return lr_min + (lr - lr_min) * (1 + math.cos(math.pi * t / max(total, 1))) / 2


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _plan(cfg: dict) -> List[dict]:
    """The run's epochs in order: (phase, cycle, epoch within the phase)."""
    s = cfg["search"]
    plan = [dict(phase="pretrain", cycle=-1, epoch=e) for e in range(s["pretrain_epochs"])]
    for c in range(s["cycles"]):
        plan += [dict(phase="warmup", cycle=c, epoch=e) for e in range(s["warmup_epochs"])]
        plan += [dict(phase="joint", cycle=c, epoch=e) for e in range(s["joint_epochs"])]
    return plan


class _Loader:
    """A loader capped at the epoch's step count (sample_ratio); its ResumableSampler lets the Loop start inside."""

    def __init__(self, loader, steps: int):
        self.loader, self.steps, self.sampler = loader, steps, loader.sampler

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        return iter(self.loader)


class CycleState:
    """What the run decides as it goes (same on every rank): the genotype, when its evaluation network was built,
    the genotype history. Restored before the modules are rebuilt (the Loop's two-stage restore)."""

    def __init__(self, genotype):
        self.genotype = genotype
        self.cycle_started = -1
        self.history: List[dict] = []

    def state_dict(self) -> dict:
        return {"genotype": self.genotype.to_dict(), "cycle_started": self.cycle_started,
                "history": json.dumps(self.history)}

    def load_state_dict(self, d: dict) -> None:
        from ...genotype import genotype_from_data
        self.genotype = genotype_from_data(d["genotype"])
        self.cycle_started = int(d["cycle_started"])
        self.history = json.loads(d["history"])


class _Run:
    def __init__(self, job):
        from ..data import DataConfig, build_dataset, create_loader
        cfg, ctx, source = job.cfg, job.ctx, job.source
        self.job, self.cfg, self.ctx = job, cfg, ctx
        s = cfg["search"]
        if s["batch_size"] % ctx.world_size:
            raise ConfigError(source, "search.batch_size", f"{s['batch_size']} is not divisible by "
                                                           f"{ctx.world_size} processes")
        self.per_rank = s["batch_size"] // ctx.world_size
        self.data_cfg = DataConfig.from_dict(dict(cfg["data"], val_fraction=s["split"]), where="data")
        self.train_ds = build_dataset(self.data_cfg, "train")     # the class-stratified halves
        self.held_ds = build_dataset(self.data_cfg, "val")
        self.num_classes = self.train_ds.num_classes
        self._create_loader = create_loader
        self.step_cfg = StepConfig(interactive=s["interactive"], temperature=s["temperature"],
                                   loss_alpha=s["loss_alpha"],
                                   reg_count=3 if cfg["official"]["reg_count_per_stage"] else 1, clip=s["clip"])
        seed_everything(cfg["seed"])  # the same initial weights and alphas in every process
        self.net = CdartsNetwork(self.num_classes, **_layout(cfg)).to(ctx.device)
        self.alphas = Alphas(generator=torch.Generator().manual_seed(cfg["seed"] + 1)).to(ctx.device)
        if s["fix_head"]:
            self.net.fix_heads()
        self.plan = _plan(cfg)
        self.state = CycleState(derive_genotype(self.alphas)[0])
        self.loop = None

    # -- optimizers, cycles ---------------------------------------------------------------------------------------

    def _optimizers(self, keep: bool) -> Dict[str, torch.optim.Optimizer]:
        s = self.cfg["search"]
        new = make_optimizers(self.net, self.alphas, s["w_lr"], s["eval_lr"], s["alpha_lr"], s["w_weight_decay"],
                              s["alpha_weight_decay"], s["momentum"])
        if keep and self.loop is not None and self.loop.optimizers:
            # the search SGD and the alpha Adam carry their state across cycles (their parameters persist)
            new["search"], new["arch"] = self.loop.optimizers["search"], self.loop.optimizers["arch"]
        return new

    def build(self, loop) -> None:
        """Fresh start or stage 2 of a restore: the evaluation network of the saved cycle, then the optimizers."""
        if self.state.cycle_started >= 0:
            self.net.build_eval(self.state.genotype)
            self.net.to(self.ctx.device)
        loop.optimizers.clear()
        loop.optimizers.update(self._optimizers(keep=False))

    def _start_cycle(self, loop, cycle: int) -> None:
        """Evaluation network of the current genotype, inherited from the pool; this cycle's optimizers."""
        self.net.build_eval(self.state.genotype)
        self.net.inherit_from_pool(official_break=self.cfg["official"]["copy_break"])
        self.net.to(self.ctx.device)
        optimizers = self._optimizers(keep=not self.cfg["official"]["reset_optimizers"])
        loop.optimizers.clear()
        loop.optimizers.update(optimizers)
        self.state.cycle_started = cycle

    def on_epoch_start(self, loop, epoch: int) -> None:
        item = self.plan[epoch]
        if item["phase"] != "pretrain" and self.state.cycle_started != item["cycle"]:
            self._start_cycle(loop, item["cycle"])
        s, o = self.cfg["search"], self.cfg["official"]
        if o["constant_lr"]:
            return
        outer = item["epoch"] if item["phase"] == "pretrain" else s["pretrain_epochs"] + item["cycle"]
        _set_lr(loop.optimizers["search"], _cosine(s["w_lr"], s["w_lr_min"], outer, s["pretrain_epochs"] + s["cycles"]))
        if item["phase"] != "pretrain":
            _set_lr(loop.optimizers["eval"], _cosine(s["eval_lr"], s["w_lr_min"], item["cycle"], s["cycles"]))

    def on_epoch_end(self, loop, epoch: int, record: dict) -> None:
        item = self.plan[epoch]
        record.update(plan_phase=item["phase"], cycle=item["cycle"], epoch_in_phase=item["epoch"])
        if item["phase"] == "joint":
            record["reg_decay"] = self._reg_decay(item)
        if item["phase"] == "joint" and item["epoch"] == self.cfg["search"]["joint_epochs"] - 1:
            genotype, _ = derive_genotype(self.alphas)
            self.state.genotype = genotype
            self.net.write_back_to_pool(official_break=self.cfg["official"]["copy_break"])
            self.state.history.append({
                "cycle": item["cycle"], "genotype": genotype.to_dict(),
                "alpha_normal": [F.softmax(a.detach(), -1).cpu().tolist() for a in self.alphas.normal],
                "alpha_reduce": [F.softmax(a.detach(), -1).cpu().tolist() for a in self.alphas.reduce]})
            record["genotype"] = genotype.to_str()

    # -- loaders, steps -----------------------------------------------------------------------------------------------

    def _loader(self, dataset, epoch: int, offset: int, steps: int) -> _Loader:
        loader = self._create_loader(dataset, self.data_cfg, self.per_rank, train=True,
                                     workers=self.cfg["engine"]["workers"], distributed=self.ctx.distributed,
                                     seed=self.cfg["seed"] + offset, epoch=epoch)
        loader.sampler.set_epoch(epoch)
        return _Loader(loader, steps)

    def _steps(self, *datasets) -> int:
        return _steps(min(math.ceil(len(d) / self.ctx.world_size) // self.per_rank for d in datasets), self.cfg)

    def _reg_decay(self, item: dict) -> float:
        s = self.cfg["search"]
        if not s["regular"]:
            return 0.0
        search_epoch = (s["pretrain_epochs"] + item["cycle"]) * s["joint_epochs"] + item["epoch"]
        return regulariser_decay(search_epoch, s["regular_coeff"], s["pretrain_epochs"],
                                 s["pretrain_epochs"] + s["cycles"], s["joint_epochs"], s["regular_ratio"])

    def _ce_step(self, batch, search: bool) -> Dict[str, torch.Tensor]:
        loop, ctx = self.loop, self.ctx
        x, y = batch[0].to(ctx.device), batch[1].to(ctx.device)
        params = all_parameters(self.net, self.alphas)
        for p in params:
            p.grad = None
        with loop.autocast():
            logits, _ = self.net.forward_search(x, self.alphas) if search else self.net.forward_eval(x)
            loss = F.cross_entropy(logits, y)
        loop.backward(loss)
        all_reduce_grads(params, ctx)
        nn.utils.clip_grad_norm_(params, self.cfg["search"]["clip"])  # every parameter together, as the official
        loop.step("search" if search else "eval")
        return {"loss": loss.detach(), "top1": (logits.argmax(1) == y).float().mean() * 100}

    def _joint_step(self, batch) -> Dict[str, torch.Tensor]:
        loop, ctx = self.loop, self.ctx
        (vx, vy), (tx, ty) = batch
        held = (vx.to(ctx.device), vy.to(ctx.device))
        train = (tx.to(ctx.device), ty.to(ctx.device))
        params = all_parameters(self.net, self.alphas)

        def observe(name, value):
            if name in ("a_grads", "b_grads"):
                all_reduce_grads(params, ctx)   # averaged before the clip, as DDP's gradients

        with loop.autocast():
            return joint_step(self.net, self.alphas, loop.optimizers, held, train,
                              self._reg_decay(self.plan[loop.epoch]), self.step_cfg, observe,
                              backward=loop.backward, step=loop.step)

    def run(self) -> List[dict]:
        cfg, job = self.cfg, self.job
        plan = self.plan
        phase_of = lambda name: (lambda e: plan[e]["phase"] == name)  # noqa: E731
        phases = [
            Phase("pretrain", lambda e: self._loader(self.train_ds, e, 0, self._steps(self.train_ds)),
                  lambda b: self._ce_step(b, search=True), when=phase_of("pretrain")),
            Phase("warmup", lambda e: self._loader(self.held_ds, e, 1, self._steps(self.held_ds)),
                  lambda b: self._ce_step(b, search=False), when=phase_of("warmup")),
            # held-out and train batches in lock-step: step (a) on the first, step (b) on the second
            Phase("joint", lambda e: (self._loader(self.held_ds, e, 1, self._steps(self.held_ds, self.train_ds)),
                                      self._loader(self.train_ds, e, 0, self._steps(self.held_ds, self.train_ds))),
                  self._joint_step, when=phase_of("joint")),
        ]
        self.loop = Loop(ctx=self.ctx, ckpt_path=job.ckpt("search"), epochs=len(plan), phases=phases,
                         modules={"net": self.net, "alphas": self.alphas}, optimizers={},
                         state={"cycle": self.state}, build=self.build, on_epoch_start=self.on_epoch_start,
                         on_epoch_end=self.on_epoch_end, amp=cfg["engine"]["amp"], clip_grad=None,
                         ckpt_every=cfg["engine"]["ckpt_every"], logger=job.logger, desc="cdarts")
        return self.loop.run()


def entry_space(cfg: dict, num_classes: int) -> DartsCellSpace:
    """The darts_cell space at the retrain layout the entry is written at (export.* overrides the recipe)."""
    layout = cfg["space"]["layout"]
    recipe, e = RETRAIN[layout], cfg["export"]
    return DartsCellSpace(layout, num_classes=num_classes, init_channels=e["init_channels"] or recipe["init_channels"],
                          cells_per_stage=e["cells_per_stage"] or recipe["cells_per_stage"],
                          drop_path_rate=e["drop_path_rate"])


def run(job) -> Dict[str, Any]:
    from ..export import write_entry
    cfg, ctx, run_dir = job.cfg, job.ctx, Path(job.run_dir)
    check_config(cfg, job.source)
    t0 = time.time()
    r = _Run(job)
    history = r.run()
    genotype, cycles = r.state.genotype, r.state.history
    space = entry_space(cfg, r.num_classes)
    entry = write_entry(job, space, genotype.to_dict(), description=(
        f"DARTS cells searched by CDARTS (nas_zoo.search) on {cfg['data'].get('kind', 'data')}, "
        f"{cfg['search']['cycles']} cycles; retrain from scratch with the paper recipe (provenance.retrain)."),
        provenance={"search_state": str(run_dir / "search_state.pt"), "retrain": dict(RETRAIN[cfg["space"]["layout"]]),
                    "genotype_history": [h["genotype"] for h in cycles]})
    if ctx.is_main:
        save_checkpoint({"format": "nas_zoo.search/cdarts-state-v1", "net": r.net.state_dict(),
                         "alphas": r.alphas.state_dict(), "genotype": genotype.to_dict()}, run_dir / "search_state.pt")
        atomic_write_text(run_dir / "genotype_history.json", json.dumps(cycles, indent=1))
    ctx.barrier()
    joint = [h for h in history if h.get("plan_phase") == "joint"]
    top1 = joint[-1].get("joint_top1_eval") if joint else None
    summary = (f"searched {cfg['name']} in {time.time() - t0:.0f} s: {genotype.to_str()}"
               + (f"\n  evaluation network top-1 on the held-out batches of the last joint epoch: {top1:.1f} %"
                  if top1 is not None else "") + f"\n  entry: {entry}")
    return {"status": "done", "entry": str(entry), "name": cfg["name"], "summary": summary,
            "genotype": genotype.to_str(), "history": [h["genotype"] for h in cycles], "top1_eval": top1}


METHOD = Method(
    name="cdarts", help="CDARTS: cyclic search / evaluation networks on DARTS cells, ending in a darts_cell entry",
    description="Run CDARTS end to end: pretrain the search network, then cycles of evaluation-network rebuild, "
                "warm-up and joint steps; writes RUN_DIR/entry.yaml (family darts_cell, retrain width).",
    schema=SCHEMA, check=check_config, run=run)
