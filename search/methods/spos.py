"""`nas-zoo-search spos`: Single Path One-Shot (Guo et al., ECCV 2020), the two-stage baseline of DSNAS.

1. Supernet training: one path per step, drawn by the FLOPs-bin sampler (a cost bin uniformly, then uniform paths
   rejected until one falls inside; the paper's 290-360M bins in 10M steps scaled to the run's space and budget),
   supernet BN without affine parameters, SGD with linear decay, label smoothing 0.1. Every rank trains the same
   path (the path RNG is identical on all ranks), so the step is the single-process step of the global batch.
2. Evolutionary search (`nas_zoo.search.evolution.EvolutionSearch`): population 50, top-10 parents, 25 mutations
   (per-gene p 0.1) + 25 crossovers per generation, 20 generations, cost <= budget; each candidate is scored by
   held-out top-1 after BN recalibration on fixed training batches. The search state is checkpointed after every
   scored candidate (RUN_DIR/ckpt/evolution.pt): a killed search resumes where it stopped.
3. The winner is written as RUN_DIR/entry.yaml with the supernet's (recalibrated) weights; SPOS retrains it from
   scratch (`nas-zoo-search train RUN_DIR --config ...`).

The space is `space.kind`: `shufflenet` (this package's ShuffleNetV2 space, entries of family shufflenet_spos) or
any space registered with the framework (e.g. the MBConv chain space of DNA / Cream).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import numpy as np
import torch
import torch.nn as nn

from ..config import ConfigError, Opt
from ..dsnas_step import average_gradients
from ..evolution import EvolutionSearch, FlopsBinSampler, default_bins
from ..train import ENGINE_SECTION
from . import Method
from .dsnas import SPACE_SECTION, build_space, check_space, expected_classes

__all__ = ["SCHEMA", "check_config", "run", "METHOD"]

SCHEMA = {
    "name": Opt(str, help="name of the found model (a timm model name)"),
    "seed": Opt(int, 0),
    "data": Opt(dict, help="the data section; data.val_fraction gives the held-out split the EA scores on"),
    "space": {"kind": Opt(str, "shufflenet", help="'shufflenet' or a space registered with the framework"),
              "options": Opt(dict, {}, help="keyword arguments of a registered space"),
              **SPACE_SECTION},
    "supernet": {
        "iterations": Opt(int, 150000, help="official: 150k iterations at batch 1024"),
        "epochs": Opt((int, type(None)), None, help="or: epochs (overrides iterations)"),
        "batch_size": Opt(int, 1024, help="global batch"),
        "lr": Opt(float, 0.5),
        "momentum": Opt(float, 0.9),
        "weight_decay": Opt(float, 4e-5),
        "label_smoothing": Opt(float, 0.1),
        "bins": Opt((list, type(None)), None, help="[[lo, hi], ...] cost bins in budget units (None: the paper's "
                                                   "290-360M in 10M steps, scaled to the budget and the space)"),
    },
    "search": {
        "budget": Opt(str, "330 MMACs", help="cost limit, e.g. '330 MMACs' (nas_zoo.search.cost.Budget)"),
        "population": Opt(int, 50),
        "select": Opt(int, 10),
        "mutations": Opt(int, 25),
        "crossovers": Opt(int, 25),
        "mutation_prob": Opt(float, 0.1),
        "generations": Opt(int, 20),
        "recal_batches": Opt(int, 200, help="training batches for BN recalibration per candidate"),
        "recal_batch_size": Opt(int, 128),
        "score_batches": Opt(int, 40, help="held-out batches per candidate"),
        "score_batch_size": Opt(int, 200),
        "baselines": Opt(int, 3, low=0, help="random architectures of the winner's cost written as baselines/*.yaml "
                                             "for `nas-zoo-search compare` (0: none)"),
    },
    "engine": ENGINE_SECTION,
}


def _budget(cfg: dict, source: str):
    from ..cost import Budget
    budget = Budget.parse(cfg["search"]["budget"], source, "search.budget")
    if budget.metric not in ("macs", "params"):
        raise ConfigError(source, "search.budget", f"SPOS prices paths from MAC / parameter tables; got a "
                                                   f"{budget.metric} budget ({budget})")
    return budget


def make_space(cfg: dict, image_size: int, num_classes: int):
    kind = cfg["space"]["kind"]
    if kind == "shufflenet":
        return build_space(cfg["space"], image_size, bn_affine=False, num_classes=num_classes)
    from ..spaces import build_space as build_registered
    return build_registered(kind, source="<config>", key="space.kind", image_size=image_size,
                            **cfg["space"]["options"])


def _metric_and_limit(budget):
    """(cost metric, limit in the space's raw units)."""
    return budget.metric, budget.value


def check_config(cfg: dict, source: str) -> None:
    if cfg["space"]["kind"] == "shufflenet":
        check_space(cfg, source)
    elif cfg["space"]["fixed"]:
        raise ConfigError(source, "space.fixed", f"holds layers of the shufflenet space; the {cfg['space']['kind']!r} "
                                                 f"space takes its own space.options")
    s, e = cfg["supernet"], cfg["search"]
    for key in ("batch_size", "iterations"):
        if s[key] < 1:
            raise ConfigError(source, f"supernet.{key}", f"expected >= 1, got {s[key]}")
    for key in ("population", "select", "generations", "recal_batches", "recal_batch_size", "score_batches",
                "score_batch_size"):
        if e[key] < 1:
            raise ConfigError(source, f"search.{key}", f"expected >= 1, got {e[key]}")
    if e["select"] > e["population"]:
        raise ConfigError(source, "search.select", f"{e['select']} parents out of a population of "
                                                   f"{e['population']}")
    if e["mutations"] + e["crossovers"] > e["population"]:
        raise ConfigError(source, "search.mutations", f"mutations + crossovers ({e['mutations'] + e['crossovers']}) "
                                                      f"exceed the population ({e['population']})")
    if not 0 <= e["mutation_prob"] <= 1:
        raise ConfigError(source, "search.mutation_prob", f"expected a probability, got {e['mutation_prob']}")
    if not (cfg["data"] or {}).get("val_fraction"):
        raise ConfigError(source, "data.val_fraction", "SPOS scores candidates on a held-out part of the "
                                                       "training data: set e.g. 0.1 (never the val split)")
    budget = _budget(cfg, source)
    size = cfg["space"]["image_size"] or (cfg["data"] or {}).get("image_size") or 224
    classes = expected_classes(cfg["data"])
    space = make_space(cfg, int(size), classes)
    metric, limit = _metric_and_limit(budget)
    lo, hi = space.cost_range(metric, num_classes=classes)
    if limit < lo:
        raise ConfigError(source, "search.budget", f"{cfg['search']['budget']} is below the cheapest path of the "
                                                   f"space ({lo / 1e6:.3f} M at {size} px)")
    if s["bins"] is not None:
        for i, b in enumerate(s["bins"]):
            if not (isinstance(b, list) and len(b) == 2 and b[0] < b[1]):
                raise ConfigError(source, f"supernet.bins.{i}", f"expected [lo, hi] with lo < hi, got {b}")
            if b[1] * 1e6 < lo or b[0] * 1e6 > hi:
                raise ConfigError(source, f"supernet.bins.{i}", f"{b} M holds no path of the space "
                                                                f"({lo / 1e6:.3f}-{hi / 1e6:.3f} M)")


def run(job) -> Dict[str, Any]:
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2

    from ..data import DataConfig, build_dataset, create_loader
    from ..engine import Loop, Phase, load_checkpoint, save_checkpoint, seed_everything
    from ..baseline import write_baselines
    from ..evaluate import evaluate, recalibrate_bn
    from ..export import write_entry
    from nas_zoo.io import atomic_write_text

    cfg, ctx, run_dir = job.cfg, job.ctx, Path(job.run_dir)
    s, e = cfg["supernet"], cfg["search"]
    seed = cfg["seed"]
    seed_everything(seed + ctx.rank)
    data_cfg = DataConfig.from_dict(cfg["data"], where="data")
    train_ds, held_ds = build_dataset(data_cfg, "train"), build_dataset(data_cfg, "val")  # val = held-out part
    image_size = int(cfg["space"]["image_size"] or data_cfg.image_size or 224)
    num_classes = train_ds.num_classes
    space = make_space(cfg, image_size, num_classes)
    budget = _budget(cfg, job.source)
    metric, limit = _metric_and_limit(budget)
    if s["batch_size"] % ctx.world_size:
        raise ConfigError(job.source, "supernet.batch_size", f"{s['batch_size']} is not divisible by the "
                                                             f"{ctx.world_size} processes")
    per_rank = s["batch_size"] // ctx.world_size
    dev = ctx.device

    def cost(arch):
        return space.cost(arch, metric, num_classes=num_classes)

    bins = ([(lo * 1e6, hi * 1e6) for lo, hi in s["bins"]] if s["bins"] is not None
            else default_bins(space.cost_range(metric, num_classes=num_classes), limit))
    sampler = FlopsBinSampler(space, bins, cost)

    def loader(epoch):
        return create_loader(train_ds, data_cfg, per_rank, train=True, workers=cfg["engine"]["workers"],
                             distributed=ctx.distributed, seed=seed, epoch=epoch)

    steps_per_epoch = len(loader(0))
    epochs = s["epochs"] or max(1, -(-s["iterations"] // steps_per_epoch))
    total_steps = epochs * steps_per_epoch
    torch.manual_seed(seed)
    supernet = space.supernet(num_classes).to(dev)
    opt = create_optimizer_v2(supernet, opt="momentum", lr=s["lr"], momentum=s["momentum"],
                              weight_decay=s["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1.0 - step / total_steps))  # linear
    criterion = LabelSmoothingCrossEntropy(s["label_smoothing"]) if s["label_smoothing"] else nn.CrossEntropyLoss()
    path_rng = np.random.RandomState(seed)  # the same path on every rank
    logger = job.logger

    def train_step(batch):
        # manual: the supernet is not wrapped in DDP (blocks off the path have no grad); every rank draws the same
        # path, the gradients are averaged here
        images, target = (t.to(dev) for t in batch)
        arch = sampler(path_rng)
        loop.zero_grad("weights")
        loss = criterion(supernet(images, arch), target)
        loop.backward(loss)
        average_gradients(supernet.parameters(), ctx.world_size)
        loop.step("weights")
        return {"loss": loss.detach()}

    loop = Loop(ctx=ctx, ckpt_path=job.ckpt("supernet"), epochs=epochs, modules={"supernet": supernet},
                optimizers={"weights": opt}, schedulers={"weights": sched}, sched_interval={"weights": "step"},
                phases=[Phase("supernet", loader=loader, step=train_step)],
                rngs={"path": path_rng}, ckpt_every=cfg["engine"]["ckpt_every"], logger=logger, desc="spos")
    loop.run()
    supernet.eval()

    # evolutionary search: fixed recalibration batches (the first training batches of a fixed seed) and the
    # held-out loader; the same for every candidate, so a score is a function of the architecture only
    recal_loader = create_loader(train_ds, data_cfg, e["recal_batch_size"], train=True, seed=seed + 1, epoch=0)
    recal = []
    for i, (images, _) in enumerate(recal_loader):
        if i >= e["recal_batches"]:
            break
        recal.append(images)
    held = create_loader(held_ds, data_cfg, e["score_batch_size"], train=False, distributed=ctx.distributed,
                         seed=seed)
    held_batches = []
    for i, batch in enumerate(held):
        if i >= e["score_batches"]:
            break
        held_batches.append(batch)

    def score(arch):
        recalibrate_bn(supernet, lambda x: supernet(x.to(dev), arch), recal)
        supernet.eval()
        return evaluate(lambda x: supernet(x, arch), held_batches, ctx)["top1"]

    search = EvolutionSearch(space, cost, limit, population=e["population"], select=e["select"],
                             mutations=e["mutations"], crossovers=e["crossovers"], prob=e["mutation_prob"],
                             generations=e["generations"], seed=seed)
    ea_ckpt = job.ckpt("evolution")
    if ea_ckpt.exists():
        search.load_state_dict(load_checkpoint(ea_ckpt))

    def checkpoint():
        if ctx.is_main:
            save_checkpoint(search.state_dict(), ea_ckpt)

    best, best_score = search.run(score, on_progress=checkpoint, log=lambda r: logger.log({"phase": "evolution", **r}))
    recalibrate_bn(supernet, lambda x: supernet(x.to(dev), best), recal)
    entry = write_entry(job, space, best, supernet_state=supernet.state_dict(),
                        provenance={"method": "spos", "score": best_score, "budget": cfg["search"]["budget"],
                                    "generations": e["generations"]})
    if e["baselines"]:
        write_baselines(job, space, best, n=e["baselines"], metric=metric, seed=seed, max_cost=limit,
                        num_classes=num_classes)
    if ctx.is_main:
        unit = {"macs": ("MMACs", 1e6), "params": ("M params", 1e6)}[metric]
        history = [{**g, "candidates": [{**c, "cost": c["cost"] / unit[1]} for c in g["candidates"]]}
                   for g in search.history]
        meta = {"history": history, "budget": limit / unit[1], "unit": unit[0],
                "chosen": {"arch": best, "cost": cost(best) / unit[1], "score": best_score}}
        atomic_write_text(run_dir / "population.json", json.dumps(meta))
        try:
            from ..plots import plot_population
            plot_population(history, run_dir / "population.png", budget=meta["budget"], unit=unit[0],
                            chosen=meta["chosen"])
        except Exception as err:  # noqa: BLE001
            import warnings
            warnings.warn(f"population figure not drawn: {type(err).__name__}: {err}")
    from ..cost import format_cost
    summary = (f"SPOS {cfg['name']}: {best}, {format_cost(cost(best), metric)} (budget {cfg['search']['budget']}), "
               f"held-out top-1 {best_score:.2f} after BN recalibration")
    return {"status": "done", "entry": str(entry), "name": cfg["name"], "arch": best, "score": best_score,
            "summary": summary}


def _plot(run_dir):
    from ..plots import plot_spos
    return plot_spos(run_dir)


METHOD = Method(name="spos", help="SPOS: uniform single-path supernet, then evolutionary search", schema=SCHEMA,
                check=check_config, run=run, plot=_plot)
