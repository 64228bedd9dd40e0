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

import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError, Opt
from ..engine import (DistContext, NonFiniteLossError, RunLogger, get_rng_state, load_checkpoint, progress,
                      save_checkpoint, seed_everything, set_rng_state)
from ..spaces.darts import (INTERACTIVE_TYPES, LAYOUTS, Alphas, CdartsNetwork, derive_genotype, regulariser_decay)
from ..train import ENGINE_SECTION
from .cdarts_steps import StepConfig, all_parameters, joint_step, make_optimizers

__all__ = ["SCHEMA", "check_config", "run_cdarts", "RETRAIN"]

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


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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


def _all_reduce_grads(params, ctx: DistContext) -> None:
    """Average the gradients over the processes (what DDP does), one flat buffer."""
    if not ctx.distributed:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = ctx.all_reduce_mean(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _plan(cfg: dict) -> List[dict]:
    """The run's epochs in order: (phase, cycle, epoch within the phase)."""
    s = cfg["search"]
    plan = [dict(phase="pretrain", cycle=-1, epoch=e) for e in range(s["pretrain_epochs"])]
    for c in range(s["cycles"]):
        plan += [dict(phase="warmup", cycle=c, epoch=e) for e in range(s["warmup_epochs"])]
        plan += [dict(phase="joint", cycle=c, epoch=e) for e in range(s["joint_epochs"])]
    return plan


class _Run:
    def __init__(self, cfg: dict, run_dir: Path, ctx: DistContext, source: str):
        from ..data import DataConfig, build_dataset, create_loader
        self.cfg, self.run_dir, self.ctx, self.source = cfg, Path(run_dir), ctx, source
        s = cfg["search"]
        if s["batch_size"] % ctx.world_size:
            raise ConfigError(source, "search.batch_size", f"{s['batch_size']} is not divisible by "
                                                           f"{ctx.world_size} processes")
        self.per_rank = s["batch_size"] // ctx.world_size
        data = dict(cfg["data"], val_fraction=s["split"])
        self.data_cfg = DataConfig.from_dict(data, where="data")
        self.train_ds = build_dataset(self.data_cfg, "train")     # the class-stratified halves
        self.held_ds = build_dataset(self.data_cfg, "val")
        self.num_classes = self.train_ds.num_classes
        self._create_loader = create_loader
        self.ckpt_path = self.run_dir / "ckpt" / "search.pt"
        self.logger = RunLogger(self.run_dir / "log.jsonl", ctx, tensorboard=cfg["engine"]["tensorboard"])
        self.step_cfg = StepConfig(interactive=s["interactive"], temperature=s["temperature"],
                                   loss_alpha=s["loss_alpha"],
                                   reg_count=3 if cfg["official"]["reg_count_per_stage"] else 1, clip=s["clip"])
        seed_everything(cfg["seed"])  # the same initial weights and alphas in every process
        lay = _layout(cfg)
        self.net = CdartsNetwork(self.num_classes, **lay).to(ctx.device)
        self.alphas = Alphas(generator=torch.Generator().manual_seed(cfg["seed"] + 1)).to(ctx.device)
        if s["fix_head"]:
            self.net.fix_heads()
        self.plan = _plan(cfg)
        self.position = dict(index=0, batch=0)
        self.history: List[dict] = []
        self.genotype, _ = derive_genotype(self.alphas)
        self.optimizers: Dict[str, torch.optim.Optimizer] = {}
        self.cycle_started = -1   # the cycle whose evaluation network is built and inherited
        self.records: List[dict] = []

    # -- optimizers ---------------------------------------------------------------------------------------------

    def _make_optimizers(self, keep: bool) -> None:
        s = self.cfg["search"]
        new = make_optimizers(self.net, self.alphas, s["w_lr"], s["eval_lr"], s["alpha_lr"], s["w_weight_decay"],
                              s["alpha_weight_decay"], s["momentum"])
        if keep and self.optimizers:  # the search SGD and the alpha Adam carry their state across cycles
            new["search"], new["arch"] = self.optimizers["search"], self.optimizers["arch"]
        self.optimizers = new

    def _lrs(self, item: dict) -> None:
        s, o = self.cfg["search"], self.cfg["official"]
        if o["constant_lr"]:
            return
        total_iters = s["pretrain_epochs"] + s["cycles"]
        outer = item["epoch"] if item["phase"] == "pretrain" else s["pretrain_epochs"] + item["cycle"]
        _set_lr(self.optimizers["search"], _cosine(s["w_lr"], s["w_lr_min"], outer, total_iters))
        if item["phase"] != "pretrain":
            _set_lr(self.optimizers["eval"], _cosine(s["eval_lr"], s["w_lr_min"], item["cycle"], s["cycles"]))

    def _start_cycle(self, cycle: int) -> None:
        """Evaluation network of the current genotype, inherited from the pool; this cycle's optimizers."""
        self.net.build_eval(self.genotype)
        self.net.inherit_from_pool(official_break=self.cfg["official"]["copy_break"])
        self.net.to(self.ctx.device)
        self._make_optimizers(keep=not self.cfg["official"]["reset_optimizers"])
        self.cycle_started = cycle

    # -- checkpoint ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"format": "nas_zoo.search/cdarts-v1", "position": dict(self.position),
                "genotype": self.genotype.to_dict(), "cycle_started": self.cycle_started,
                "history": copy.deepcopy(self.history), "records": copy.deepcopy(self.records),
                "net": self.net.state_dict(), "alphas": self.alphas.state_dict(),
                "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
                "rng": get_rng_state(), "world_size": self.ctx.world_size}

    def save(self) -> None:
        state = self.state_dict()
        rngs = self.ctx.all_gather_object(state["rng"]) if self.ctx.distributed else [state["rng"]]
        state["rng"] = rngs
        if self.ctx.is_main:
            save_checkpoint(state, self.ckpt_path)
            item = self.plan[min(self.position["index"], len(self.plan) - 1)] if self.plan else {}
            atomic_write_text(self.ckpt_path.with_name("position.json"),
                              json.dumps({**self.position, "of": len(self.plan), **item}))
        self.ctx.barrier()

    def restore(self) -> bool:
        if not self.ckpt_path.exists():
            return False
        from ...genotype import genotype_from_data
        from ..engine import RunError
        ckpt = load_checkpoint(self.ckpt_path)
        if ckpt.get("world_size") != self.ctx.world_size:
            raise RunError(f"{self.ckpt_path}: saved with {ckpt.get('world_size')} processes, resumed with "
                           f"{self.ctx.world_size}")
        self.position = dict(ckpt["position"])
        self.history, self.records = ckpt["history"], ckpt["records"]
        self.genotype = genotype_from_data(ckpt["genotype"])
        self.cycle_started = ckpt["cycle_started"]
        # two-stage restore: the evaluation network of the saved cycle first, then every weight
        if self.cycle_started >= 0:
            self.net.build_eval(self.genotype)
            self.net.to(self.ctx.device)
        self.net.load_state_dict(ckpt["net"])
        self.alphas.load_state_dict(ckpt["alphas"])
        if self.cycle_started >= 0 or ckpt["optimizers"]:
            self._make_optimizers(keep=False)
            for k, v in ckpt["optimizers"].items():
                self.optimizers[k].load_state_dict(v)
        set_rng_state(ckpt["rng"][self.ctx.rank])
        return True

    # -- epochs -------------------------------------------------------------------------------------------------

    def _loader(self, dataset, key: int, offset: int, start: int):
        loader = self._create_loader(dataset, self.data_cfg, self.per_rank, train=True,
                                     workers=self.cfg["engine"]["workers"], distributed=self.ctx.distributed,
                                     seed=self.cfg["seed"] + offset, epoch=key)
        loader.sampler.set_epoch(key, start_batch=start)
        return loader

    def _check(self, loss: torch.Tensor, what: str) -> None:
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"non-finite {what} loss at plan item {self.position['index']}, "
                                     f"batch {self.position['batch']}")

    def _simple_step(self, x, y, search: bool) -> Dict[str, float]:
        params = all_parameters(self.net, self.alphas)
        for p in params:
            p.grad = None
        if search:
            logits, _ = self.net.forward_search(x, self.alphas)
        else:
            logits, _ = self.net.forward_eval(x)
        loss = F.cross_entropy(logits, y)
        self._check(loss, "warm-up")
        loss.backward()
        _all_reduce_grads(params, self.ctx)
        nn.utils.clip_grad_norm_(params, self.cfg["search"]["clip"])
        self.optimizers["search" if search else "eval"].step()
        return {"loss": float(loss.detach()), "top1": float((logits.argmax(1) == y).float().mean() * 100)}

    def _joint(self, held, train, reg_decay: float) -> Dict[str, float]:
        ctx = self.ctx
        params = all_parameters(self.net, self.alphas)
        seen = {}

        def observe(name, value):
            if name in ("a_grads", "b_grads"):
                _all_reduce_grads(params, ctx)   # before the clip, as DDP's averaged gradients
            elif name == "a":
                self._check(value["loss"], "joint (a)")
                seen["top1"] = float((value["logits_eval"].argmax(1) == held[1]).float().mean() * 100)
        out = joint_step(self.net, self.alphas, self.optimizers, held, train, reg_decay, self.step_cfg, observe)
        out["top1_eval"] = seen["top1"]
        return out

    def _epoch(self, item: dict, key: int) -> Dict[str, float]:
        cfg, ctx = self.cfg, self.ctx
        phase = item["phase"]
        start = self.position["batch"]
        device = ctx.device
        s = cfg["search"]
        if phase == "pretrain":
            loaders = [self._loader(self.train_ds, key, 0, start)]
        elif phase == "warmup":
            loaders = [self._loader(self.held_ds, key, 1, start)]
        else:
            loaders = [self._loader(self.held_ds, key, 1, start), self._loader(self.train_ds, key, 0, start)]
        sizes = [self.train_ds] if phase == "pretrain" else [self.held_ds] if phase == "warmup" else \
            [self.held_ds, self.train_ds]
        n_steps = _steps(min(math.ceil(len(d) / ctx.world_size) // self.per_rank for d in sizes), cfg)
        reg_decay = 0.0
        if phase == "joint" and s["regular"]:
            search_epoch = (s["pretrain_epochs"] + item["cycle"]) * s["joint_epochs"] + item["epoch"]
            reg_decay = regulariser_decay(search_epoch, s["regular_coeff"], s["pretrain_epochs"],
                                          s["pretrain_epochs"] + s["cycles"], s["joint_epochs"], s["regular_ratio"])
        self.net.train()
        sums: Dict[str, float] = {}
        batches = zip(*loaders)
        step = start
        for batch in progress(batches, ctx, total=max(n_steps - start, 0), desc=f"{phase} c{item['cycle']}"):
            if step >= n_steps:
                break
            batch = [(x.to(device), y.to(device)) for x, y in batch]
            if phase == "joint":
                out = self._joint(batch[0], batch[1], reg_decay)
            else:
                out = self._simple_step(*batch[0], search=phase == "pretrain")
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v
            step += 1
            self.position["batch"] = step
            every = cfg["engine"]["ckpt_every"]
            if every and step % every == 0 and step < n_steps:
                self.save()
        done = max(step - start, 1)
        record = {k: v / done for k, v in sums.items()}
        if phase == "joint":
            record["reg_decay"] = reg_decay
        return record

    def run(self) -> Dict[str, Any]:
        resumed = self.restore()
        if resumed and self.ctx.is_main:
            print(f"resumed {self.run_dir} at plan item {self.position['index']}, batch {self.position['batch']}")
        s = self.cfg["search"]
        if not self.optimizers:
            self._make_optimizers(keep=False)
        t0 = time.time()
        while self.position["index"] < len(self.plan):
            item = self.plan[self.position["index"]]
            if item["phase"] != "pretrain" and self.cycle_started != item["cycle"]:
                self._start_cycle(item["cycle"])
            self._lrs(item)
            record = self._epoch(item, key=self.position["index"])
            record.update(phase=item["phase"], cycle=item["cycle"], epoch=item["epoch"])
            last_of_cycle = item["phase"] == "joint" and item["epoch"] == s["joint_epochs"] - 1
            if last_of_cycle:
                self.genotype, _ = derive_genotype(self.alphas)
                self.net.write_back_to_pool(official_break=self.cfg["official"]["copy_break"])
                self.history.append({"cycle": item["cycle"], "genotype": self.genotype.to_dict(),
                                     "alpha_normal": [F.softmax(a.detach(), -1).cpu().tolist()
                                                      for a in self.alphas.normal],
                                     "alpha_reduce": [F.softmax(a.detach(), -1).cpu().tolist()
                                                      for a in self.alphas.reduce]})
                record["genotype"] = self.genotype.to_str()
            self.records.append(record)
            self.logger.log(record, step=self.position["index"])
            self.position = dict(index=self.position["index"] + 1, batch=0)
            self.save()
        self.logger.close()
        return {"elapsed_s": time.time() - t0}


def export_entry(cfg: dict, genotype, history: List[dict], run_dir: Path):
    from ...entry import load_entry
    layout = cfg["space"]["layout"]
    recipe = RETRAIN[layout]
    e = cfg["export"]
    arch = {"stem": LAYOUTS[layout]["stem"], "init_channels": e["init_channels"] or recipe["init_channels"],
            "stem_multiplier": recipe["stem_multiplier"],
            "cells_per_stage": e["cells_per_stage"] or recipe["cells_per_stage"], "genotype": genotype.to_dict(),
            "drop_path_rate": e["drop_path_rate"] if e["drop_path_rate"] is not None else recipe["drop_path_rate"]}
    return load_entry({
        "name": cfg["name"], "family": "darts_cell",
        "description": f"DARTS cells searched by CDARTS (nas_zoo.search) on {cfg['data'].get('kind', 'data')}, "
                       f"{cfg['search']['cycles']} cycles; retrain from scratch with the paper recipe.",
        "arch": arch, "pretrained": {},
        "provenance": {"method": "cdarts", "config": str(run_dir / "resolved.yaml"),
                       "data": copy.deepcopy(cfg["data"]), "search_state": str(run_dir / "search_state.pt"),
                       "retrain": dict(recipe), "genotype_history": [h["genotype"] for h in history]},
    }, source=str(run_dir / "entry.yaml"))


def run_cdarts(cfg: dict, run_dir: Path, ctx: DistContext, source: str = "<config>") -> Dict[str, Any]:
    check_config(cfg, source)
    run_dir = Path(run_dir)
    run = _Run(cfg, run_dir, ctx, source)
    timing = run.run()
    entry = export_entry(cfg, run.genotype, run.history, run_dir)
    if ctx.is_main:
        save_checkpoint({"format": "nas_zoo.search/cdarts-state-v1", "net": run.net.state_dict(),
                         "alphas": run.alphas.state_dict(), "genotype": run.genotype.to_dict()},
                        run_dir / "search_state.pt")
        atomic_write_text(run_dir / "genotype_history.json", json.dumps(run.history, indent=1))
        entry.save(run_dir / "entry.yaml")
        try:
            from ..plots import have_matplotlib
            if have_matplotlib():
                from .cdarts_plots import plot_cdarts
                plot_cdarts(run_dir, run.history)
        except Exception as e:  # noqa: BLE001  (the run is saved; a figure is optional)
            import warnings
            warnings.warn(f"CDARTS figures not drawn: {type(e).__name__}: {e}")
    ctx.barrier()
    last_joint = [r for r in run.records if r["phase"] == "joint"]
    return {"status": "done", "entry": str(run_dir / "entry.yaml"), "name": cfg["name"],
            "genotype": run.genotype.to_str(), "history": [h["genotype"] for h in run.history],
            "top1_eval": last_joint[-1].get("top1_eval") if last_joint else None, **timing}
