"""Cream: distilling prioritized paths for one-shot NAS (Peng et al., NeurIPS 2020), `nas-zoo-search cream`.

1. Depth per stage from the FLOPs interval (official `search_for_layer`, priced by our own MACs tables of the
   space at `space.image_size`); the resolution it picks is the one trained at.
2. Supernet training, one sampled path per step (PRE_PROB / even / teacher): label-smoothed CE until
   `meta_start_epoch` or while the board is empty; then the meta-matching network picks a teacher on the
   prioritized board and the loss is (m*KD + (2-m)*CE)/2; the board keeps the best paths of the training batches;
   the meta-matching network is updated every `update_iter` steps (second order). SGD Nesterov, four parameter
   groups, linear per-iteration decay.
3. Final selection (absent in the official code): every board path re-scored on held-out data after BN
   recalibration; the best one inside the FLOPs interval becomes RUN_DIR/entry.yaml with its inherited weights.

The math is in `cream_core`; official behaviours contradicting the paper are `official.*` switches (docs/cream.md).
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from ..config import ConfigError, Opt
from ..engine import DistContext, Loop, Phase, RunError, RunLogger, all_reduce_grads, seed_everything
from ..spaces import cream as cs
from ..train import ENGINE_SECTION
from . import Method
from . import cream_core as cc

__all__ = ["SCHEMA", "check_config", "run_cream", "LinearDecay", "plan_space"]

PRE_PROB = [0.05, 0.2, 0.05, 0.5, 0.05, 0.15]

SCHEMA = {
    "name": Opt(str, help="name of the found model (a timm model name)"),
    "seed": Opt(int, 42),
    "data": Opt(dict, help="the data section (nas_zoo.search.data.DataConfig); its val split is the held-out set"),
    "space": {
        "flops": Opt(list, [0, 600], help="[min, max] MMACs of the found model at space.image_size"),
        "image_size": Opt((int, type(None)), None, help="resolution the costs are counted at (None: data.image_size)"),
        "strides": Opt(list, list(cs.STRIDES), help="first stride of each of the 5 searched stages (official 2/2/2/1/2)"),
        "se": Opt(bool, True, help="SE 0.25 in every block (official); false for small-image demos"),
    },
    "search": {
        "epochs": Opt(int, 120),
        "batch_size": Opt(int, 1024, help="global batch (official: 128 per GPU x 8)"),
        "lr": Opt(float, 1.0),
        "meta_lr": Opt(float, 1e-4),
        "momentum": Opt(float, 0.9),
        "weight_decay": Opt(float, 1e-4),
        "smoothing": Opt(float, 0.1),
        "sampling": Opt(str, "pre_prob", choices=("pre_prob", "even", "teacher")),
        "pre_prob": Opt(list, PRE_PROB, help="probability of each of the 6 choices (k3e4 k3e6 k5e4 k5e6 k7e4 k7e6)"),
        "slice": Opt(int, 4, help="images per board entry; the meta update uses 2 x slice images of a batch"),
        "pool_size": Opt(int, 10),
        "acc_gap": Opt(float, 5.0),
        "meta_start_epoch": Opt(int, 20, help="plain CE up to and including this epoch (0-based, as the official)"),
        "update_iter": Opt(int, 200, help="meta-matching update every N batches of an epoch"),
        "meta_clip": Opt(float, 1.0),
        "clip_grad": Opt((float, type(None)), None),
        "drop_rate": Opt(float, 0.0),
    },
    "official": {
        "meta_value_from_last": Opt(bool, False, help="m from the LAST board entry's meta output (official bug)"),
        "second_order_conv_stem_only": Opt(bool, False, help="only conv_stem carries the second-order signal"),
        "simulate_lr_meta": Opt(bool, False, help="the simulated step uses the meta lr (param_groups[-1])"),
        "board_soft_label_teacher": Opt(bool, False, help="a new entry stores the teacher's soft labels"),
        "prob_as_replace": Opt(bool, False, help="np.random.choice(6, n, prob): prob taken as `replace` (uniform)"),
        "dead_c80_block": Opt(bool, False, help="sample sta_num choices: the r2 string's 2nd c80 layer never runs"),
        "train_at_config_size": Opt(bool, False, help="train at data.image_size whatever search_for_layer picks"),
        "lr_factor_minus_lr": Opt(bool, False, help="LambdaLR factor LR - step/ITERS (official) instead of 1 - ..."),
    },
    "select": {
        "bn_batches": Opt(int, 4, help="training batches to recalibrate BN per path"),
        "batch_size": Opt(int, 64),
        "eval_batches": Opt((int, type(None)), None, help="held-out batches per path in the per-epoch scoring (None: all; the final selection uses all)"),
        "every_epoch": Opt(bool, True, help="also score the board at every epoch end (for the figure)"),
        "baseline": Opt(int, 3, help="random paths of the found path's cost scored beside it with inherited weights and "
                                       "written as RUN_DIR/baselines/random<i>.yaml for `compare` (0: none)"),
    },
    "export": {"drop_rate": Opt(float, 0.2), "drop_path_rate": Opt(float, 0.0)},
    "engine": ENGINE_SECTION,
}


def _options(cfg: dict) -> cc.Options:
    s, o = cfg["search"], cfg["official"]
    return cc.Options(slice=s["slice"], pool_size=s["pool_size"], acc_gap=s["acc_gap"],
                      meta_start_epoch=s["meta_start_epoch"], update_iter=s["update_iter"], smoothing=s["smoothing"],
                      meta_value_from="last" if o["meta_value_from_last"] else "winner",
                      second_order="conv_stem" if o["second_order_conv_stem_only"] else "all",
                      simulate_lr="meta" if o["simulate_lr_meta"] else "student",
                      board_soft_label="teacher" if o["board_soft_label_teacher"] else "own",
                      meta_clip=s["meta_clip"])


def _image_size(cfg: dict) -> int:
    size = cfg["space"]["image_size"] or cfg["data"].get("image_size") or 224
    return int(size[-1] if isinstance(size, (list, tuple)) else size)


def plan_space(cfg: dict, num_classes: int, source: str = "<config>") -> Dict[str, Any]:
    """Cost tables, depth per stage, resolution and the space for the config's FLOPs interval (ConfigError if
    infeasible): search_for_layer on the full space's MACs table at space.image_size."""
    flops = cfg["space"]["flops"]
    if not (isinstance(flops, list) and len(flops) == 2 and all(isinstance(v, (int, float)) for v in flops)
            and 0 <= flops[0] < flops[1]):
        raise ConfigError(source, "space.flops", f"expected [min, max] MMACs with 0 <= min < max, got {flops!r}")
    size = _image_size(cfg)
    if size < 32 or size % 32:
        raise ConfigError(source, "space.image_size", f"expected a multiple of 32 (the space's total stride), got {size}")
    strides = cfg["space"]["strides"]
    if not (isinstance(strides, list) and len(strides) == 5 and all(v in (1, 2) for v in strides)):
        raise ConfigError(source, "space.strides", f"expected 5 strides, each 1 or 2, got {strides!r}")
    shape = dict(strides=strides, se=cfg["space"]["se"])
    full = cs.space_flops_table(cs.cream_space(cs.layer_counts([4] * 5), size, **shape), size, num_classes)
    sta_num, _, resolution = cs.search_for_layer(cs.official_flops_table(full["flops_dict"]), flops[0], flops[1],
                                                 image_size=size)
    if sta_num is None:
        d = full["flops_dict"]
        smallest = sum(d[s + 1][0][0] for s in range(5))
        raise ConfigError(source, "space.flops", f"no depth of the space fits [{flops[0]}, {flops[1]}] MMACs at "
                                                 f"{size} px (one k3e4 layer per stage costs {smallest:.3g} MMACs "
                                                 "in the searched stages)")
    layers = list(sta_num) if cfg["official"]["dead_c80_block"] else cs.layer_counts(sta_num)
    train_size = size if cfg["official"]["train_at_config_size"] else resolution
    space = cs.cream_space(layers, train_size, drop_rate=cfg["export"]["drop_rate"],
                           drop_path_rate=cfg["export"]["drop_path_rate"], **shape)
    tables = cs.space_flops_table(space, train_size, num_classes)  # costs where the found model is trained
    return {"space": space, "tables": tables, "sta_num": sta_num, "layers": layers, "resolution": resolution,
            "train_size": train_size, "flops": [float(flops[0]), float(flops[1])], **shape}


def check_config(cfg: dict, source: str) -> None:
    s = cfg["search"]
    for key in ("epochs", "batch_size", "slice", "pool_size", "update_iter"):
        if s[key] < 1:
            raise ConfigError(source, f"search.{key}", f"expected a positive integer, got {s[key]}")
    if 2 * s["slice"] > s["batch_size"]:
        raise ConfigError(source, "search.slice", f"the meta update needs 2 x slice = {2 * s['slice']} images of a "
                                                  f"batch; search.batch_size is {s['batch_size']}")
    p = s["pre_prob"]
    if len(p) != len(cs.CHOICES) or any(not isinstance(v, (int, float)) or v < 0 for v in p) or \
            abs(sum(p) - 1) > 1e-6:
        raise ConfigError(source, "search.pre_prob", f"expected {len(cs.CHOICES)} probabilities summing to 1, got {p!r}")
    if cfg["select"]["bn_batches"] < 1 or cfg["select"]["batch_size"] < 1:
        raise ConfigError(source, "select", "bn_batches and batch_size must be positive")
    # an infeasible FLOPs interval fails here, before training (the classifier is not in the costs: any class count)
    plan_space(cfg, 1000, source)


class LinearDecay:
    """create_supernet_scheduler as a function of the global step: lr = base * (start - step/total).

    Computed from the step count alone, so a resumed run continues the same curve (the official resume calls
    `step(start_epoch)` on this per-iteration scheduler). The timm scheduler API the engine drives."""

    def __init__(self, optimizer, total_steps: int, start: float = 1.0):
        self.optimizer, self.total_steps, self.start = optimizer, int(total_steps), float(start)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.last_step = 0
        self.step_update(0)

    def factor(self, step: int) -> float:
        return self.start - step / self.total_steps

    def step(self, epoch: int, metric=None) -> None:  # per-iteration only
        pass

    def step_update(self, num_updates: int, metric=None) -> None:
        self.last_step = int(num_updates)
        f = self.factor(self.last_step)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * f

    def state_dict(self) -> dict:
        return {"base_lrs": list(self.base_lrs), "last_step": self.last_step, "total_steps": self.total_steps,
                "start": self.start}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs, self.total_steps = list(state["base_lrs"]), int(state["total_steps"])
        self.start = float(state["start"])
        self.step_update(int(state["last_step"]))


def _prob(cfg: dict, board: cc.PrioritizedBoard) -> Optional[List[float]]:
    how = cfg["search"]["sampling"]
    if how == "even":
        return None
    if how == "teacher":
        return cc.op_prob(board, len(cs.CHOICES))
    return list(cfg["search"]["pre_prob"])


def score_paths(space, net: nn.Module, archs: List[List[List[int]]], bn_batches: List[torch.Tensor], eval_loader,
                ctx: DistContext, max_batches: Optional[int] = None) -> List[float]:
    """Held-out top-1 of each path after BN recalibration on `bn_batches` (nas_zoo.search.evaluate), on a copy of
    the supernet so that training state is untouched; every held-out sample counted once over the ranks."""
    from ..evaluate import evaluate, recalibrate_bn

    work = copy.deepcopy(net)
    scores = []
    for arch in archs:
        recalibrate_bn(work, lambda x, a=arch: work(x, a), bn_batches)
        scores.append(evaluate(lambda x, a=arch: work(x, a), eval_loader, ctx, desc="score",
                               max_batches=max_batches)["top1"])
    return scores


def run_cream(cfg: dict, run_dir: Path, ctx: DistContext, source: str = "<config>", logger=None,
              job=None) -> Dict[str, Any]:
    from timm.loss import LabelSmoothingCrossEntropy

    from ..data import DataConfig, build_dataset, create_loader

    run_dir = Path(run_dir)
    seed = cfg["seed"]
    seed_everything(seed + ctx.rank)
    num_classes = build_dataset(DataConfig.from_dict(cfg["data"], where="data"), "train").num_classes
    plan = plan_space(cfg, num_classes, source)
    space, tables = plan["space"], plan["tables"]
    data_cfg = DataConfig.from_dict({**cfg["data"], "image_size": plan["train_size"]}, where="data")
    train_ds, val_ds = build_dataset(data_cfg, "train"), build_dataset(data_cfg, "val")
    own_logger = logger is None
    logger = logger or RunLogger(run_dir / "log.jsonl", ctx, tensorboard=cfg["engine"]["tensorboard"])
    s, opts = cfg["search"], _options(cfg)
    if s["batch_size"] % ctx.world_size:
        raise ConfigError(source, "search.batch_size", f"{s['batch_size']} is not divisible by {ctx.world_size} "
                                                        "processes")
    per_rank = s["batch_size"] // ctx.world_size
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "space.json").write_text(json.dumps({k: v for k, v in plan.items() if k not in ("tables", "space")},
                                                       indent=1))
        (run_dir / "cost-macs.json").write_text(json.dumps(tables, indent=1))

    torch.manual_seed(seed)  # the same initialisation in every process
    supernet = cs.twice_differentiable_gates(space.supernet(num_classes)).to(ctx.device)
    if s["drop_rate"]:
        supernet.net.drop_rate = s["drop_rate"]
    meta = nn.Linear(num_classes * s["slice"], 1).to(ctx.device)
    optimizer = torch.optim.SGD(cc.param_groups(supernet, meta, s["lr"], s["meta_lr"], s["weight_decay"]),
                                lr=s["lr"], momentum=s["momentum"], nesterov=True)
    board = cc.PrioritizedBoard(s["pool_size"], s["acc_gap"], s["meta_start_epoch"])
    ce_fn = LabelSmoothingCrossEntropy(s["smoothing"])
    path_rng = np.random.RandomState(seed)  # identical in every process: one path per step everywhere

    def make_loader(epoch: int):
        return create_loader(train_ds, data_cfg, per_rank, train=True, workers=cfg["engine"]["workers"],
                             distributed=ctx.distributed, seed=seed, epoch=epoch)

    steps_per_epoch = len(make_loader(0))
    scheduler = LinearDecay(optimizer, s["epochs"] * steps_per_epoch,
                            start=s["lr"] if cfg["official"]["lr_factor_minus_lr"] else 1.0)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def average_grads(grads: List[torch.Tensor]) -> None:
        flat = ctx.all_reduce_mean(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def first_rank(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """rank 0's tensor on every rank: the board stores rank 0's images and soft labels, so it is one board"""
        if t is None or not ctx.distributed:
            return t
        return ctx.broadcast_object(t.detach().cpu()).to(t.device)

    def step(batch):
        images, target = batch[0].to(ctx.device), batch[1].to(ctx.device)
        epoch, batch_idx = loop.epoch, loop.batch_in_phase   # 0-based, as train_epoch's
        arch = cs.sample_path(path_rng, space.depths if not cfg["official"]["dead_c80_block"] else plan["sta_num"],
                              _prob(cfg, board), cfg["official"]["prob_as_replace"])
        cost = cs.path_cost(tables["flops_dict"], tables["fixed"], arch)
        metrics = {}
        if epoch > opts.meta_start_epoch and batch_idx > 0 and batch_idx % opts.update_iter == 0 and len(board):
            upd = cc.meta_update(supernet, meta, optimizer, board, images, target, arch, ce_fn, opts,
                                 reduce_grads=average_grads if ctx.distributed else None)
            metrics["meta_grad_norm"] = torch.tensor(upd["grad_teacher_norm"])
        rec = cc.forward_step(supernet, meta, board, images, target, arch, epoch, ce_fn, opts)
        loop.zero_grad("sgd")
        loop.backward(rec["loss"].reshape(()))
        all_reduce_grads([p for p in params if p.grad is not None], ctx)  # the same path on every rank
        loop.step("sgd")
        prec1 = float(ctx.all_reduce_mean(torch.tensor([cc.accuracy_top1(rec["output"].detach(), target)],
                                                       dtype=torch.float64))[0])
        shared = dict(rec, output=first_rank(rec["output"].detach()), teacher_output=first_rank(rec["teacher_output"]))
        cc.update_board(board, shared, first_rank(images[:opts.slice]), target, arch, cost, epoch, opts,
                        reduce_prec1=lambda _local: prec1)
        metrics.update(loss=rec["loss"].detach().reshape(()), ce=rec["ce"].detach(), prec1=torch.tensor(prec1),
                       board=torch.tensor(float(len(board))))
        if "kd" in rec:
            metrics["kd"] = rec["kd"].detach()
        return metrics

    score_loader = create_loader(val_ds, data_cfg, cfg["select"]["batch_size"], train=False,
                                 distributed=ctx.distributed, seed=seed)
    bn_loader = create_loader(train_ds, data_cfg, cfg["select"]["batch_size"], train=True, seed=seed + 1, epoch=0)
    bn_batches = []
    for i, (x, _) in enumerate(bn_loader):
        if i >= cfg["select"]["bn_batches"]:
            break
        bn_batches.append(x.to(ctx.device))

    def eval_fn(epoch: int) -> Dict[str, float]:
        out: Dict[str, float] = {"board_size": float(len(board))}
        if cfg["select"]["every_epoch"] and len(board):
            scores = score_paths(space, supernet, [e.arch for e in board.entries], bn_batches, score_loader, ctx,
                                 cfg["select"]["eval_batches"])
            if ctx.is_main:
                with open(run_dir / "board_history.jsonl", "a") as f:
                    f.write(json.dumps({"epoch": epoch + 1, "board": [
                        dict(e, score=sc) for e, sc in zip(board.summary(), scores)]}) + "\n")
            out["board_best_score"] = max(scores)
        return out

    loop = Loop(ctx=ctx, ckpt_path=run_dir / "ckpt" / "search.pt", epochs=s["epochs"],
                phases=[Phase("train", make_loader, step)], modules={"supernet": supernet, "meta": meta},
                optimizers={"sgd": optimizer}, schedulers={"sgd": scheduler}, sched_interval={"sgd": "step"},
                state={"board": board}, rngs={"path": path_rng}, clip_grad=s["clip_grad"],
                ckpt_every=cfg["engine"]["ckpt_every"], logger=logger, desc="cream", eval_fn=eval_fn)
    loop.resume()
    _trim_history(run_dir, loop.epoch, ctx)
    history = loop.run()
    result = select_and_export(cfg, plan, supernet, board, bn_batches, score_loader, run_dir, ctx, num_classes,
                               history, job)
    logger.log({"phase": "select", **{k: v for k, v in result.items() if not isinstance(v, (list, dict))}})
    if own_logger:
        logger.close()
    return result


def _trim_history(run_dir: Path, epochs_done: int, ctx: DistContext) -> None:
    """A run resumed mid-epoch may have logged that epoch's board before it was killed: keep epochs <= done."""
    path = run_dir / "board_history.jsonl"
    if not ctx.is_main or not path.exists():
        return
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    keep = [r for r in rows if r["epoch"] <= epochs_done]
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def select_and_export(cfg, plan, supernet, board, bn_batches, score_loader, run_dir, ctx, num_classes,
                      history, job=None) -> Dict[str, Any]:
    from ..export import write_entry

    space, tables = plan["space"], plan["tables"]
    lo, hi = plan["flops"]
    mine = [(e.prec1, e.cost, e.arch, float(e.images.double().sum()), float(e.soft.double().sum()))
            for e in board.entries]
    if any(other != mine for other in ctx.all_gather_object(mine)):
        raise RunError("cream: the prioritized board differs across processes; this is a bug, please report it")
    candidates = [e.arch for e in board.entries]
    source = "board"
    if not candidates:  # the board fills only after meta_start_epoch: fall back to sampled paths
        rng = np.random.RandomState(cfg["seed"] + 7)
        candidates = [cs.sample_path(rng, space.depths) for _ in range(cfg["search"]["pool_size"])]
        source = "random (board empty)"
    scores = score_paths(space, supernet, candidates, bn_batches, score_loader, ctx)  # the whole held-out set
    costs = [cs.path_cost(tables["flops_dict"], tables["fixed"], a) for a in candidates]
    rows = [{"arch": a, "cost_mmacs": c, "score": sc,
             "board_prec1": (board.entries[i].prec1 if source == "board" else None),
             "inside": lo <= c <= hi} for i, (a, c, sc) in enumerate(zip(candidates, costs, scores))]
    inside = [r for r in rows if r["inside"]]
    if not inside:  # search_for_layer prices only the searched layers: a whole path may exceed the interval
        inside, source = rows, source + ", none inside space.flops"
    best = max(inside, key=lambda r: (r["score"], -r["cost_mmacs"]))
    arch, size = best["arch"], plan["train_size"]
    baseline = None
    if cfg["select"]["baseline"]:  # random paths of the same cost, scored the same way (inherited weights)
        from ..baseline import same_cost_archs
        try:
            rand = same_cost_archs(space, arch, n=cfg["select"]["baseline"], rng=np.random.RandomState(cfg["seed"]),
                                   metric="macs", image_size=size, num_classes=num_classes)
        except ValueError:
            rand = []
        if rand:
            rscores = score_paths(space, supernet, rand, bn_batches, score_loader, ctx)
            baseline = {"archs": rand, "scores": rscores, "mean_score": float(np.mean(rscores)),
                        "costs_mmacs": [cs.path_cost(tables["flops_dict"], tables["fixed"], a) for a in rand]}
    if job is None:
        from types import SimpleNamespace
        job = SimpleNamespace(cfg=cfg, run_dir=run_dir, ctx=ctx, method=METHOD)
    entry = write_entry(job, space, arch, supernet_state=supernet.state_dict(),
                        description=f"Searched by Cream (nas_zoo.search) in [{lo:g}, {hi:g}] MMACs at {size}px.",
                        provenance={"arch_list": [[0]] + arch + [[0]], "cost_mmacs": best["cost_mmacs"],
                                    "heldout_top1": best["score"], "candidates": source, "sta_num": plan["sta_num"],
                                    "resolution": size, "num_classes": num_classes})
    if cfg["select"]["baseline"] and baseline:  # the same random paths as entries, for `nas-zoo-search compare`
        from ..baseline import write_baselines
        write_baselines(job, space, arch, n=len(baseline["archs"]), metric="macs", seed=cfg["seed"], image_size=size,
                        num_classes=num_classes)
    if ctx.is_main:
        (run_dir / "board.json").write_text(json.dumps({"selected": best, "candidates": source, "paths": rows,
                                                        "baseline_same_cost": baseline,
                                                        "processes": ctx.world_size}, indent=1))
        try:
            plot_board(run_dir)
        except Exception as e:  # a figure never fails a run
            import warnings
            warnings.warn(f"board figure not drawn: {e}")
    ctx.barrier()
    return {"status": "done", "entry": str(entry), "name": cfg["name"], "arch": arch,
            "cost_mmacs": best["cost_mmacs"], "score": best["score"], "board": rows, "baseline": baseline,
            "summary": f"{cfg['name']}: {best['cost_mmacs']:.3g} MMACs at {size}px, held-out top-1 "
                       f"{best['score']:.1f} % (inherited weights, {len(rows)} {source} paths scored)"
                       + (f"; {len(baseline['scores'])} random paths of the same cost: {baseline['mean_score']:.1f} %"
                          if baseline else "")}


def plot_board(run_dir) -> Optional[Path]:
    """board.png: every board path's cost vs held-out score, coloured by epoch, the selected one marked."""
    from ..plots import _pyplot, _save

    run_dir = Path(run_dir)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    hist = run_dir / "board_history.jsonl"
    rows = [json.loads(l) for l in hist.read_text().splitlines() if l.strip()] if hist.exists() else []
    cmap = plt.get_cmap("viridis")
    n = max(1, len(rows))
    for i, r in enumerate(rows):
        ax.scatter([e["cost"] for e in r["board"]], [e["score"] for e in r["board"]], s=14,
                   color=cmap(i / max(1, n - 1)), label=f"epoch {r['epoch']}")
    final = json.loads((run_dir / "board.json").read_text())
    sel = final["selected"]
    ax.scatter([sel["cost_mmacs"]], [sel["score"]], marker="*", s=160, color="red", label="selected")
    ax.set_xlabel("MMACs")
    ax.set_ylabel("held-out top-1 (%)")
    ax.legend(fontsize=7)
    return _save(fig, run_dir / "board.png")


def run(job) -> Dict[str, Any]:
    return run_cream(job.cfg, job.run_dir, job.ctx, source=job.source, logger=job.logger, job=job)


METHOD = Method(
    name="cream", help="Cream: prioritized paths and meta-matching distillation (docs/cream.md)",
    description="Run Cream end to end: depth from the FLOPs interval, supernet training with the prioritized "
                "board and the meta-matching update, held-out selection, export of RUN_DIR/entry.yaml.",
    schema=SCHEMA, check=check_config, run=run, plot=plot_board)
