"""`nas-zoo-search dsnas`: DSNAS (Hu et al., CVPR 2020) on the ShuffleNetV2 one-shot space, search and training
in one run.

Epochs [0, search.stop_epoch): the supernet trains on sampled paths (`nas_zoo.search.dsnas_step`), the
architecture (Adam on log_alpha) from `search.pretrain_epochs` on, early fix at every epoch start, the argmax child
(gen_max_child) validated every epoch. From `search.stop_epoch` the chosen child goes on training in the same run
from the supernet's weights, at the learning rate the schedule had reached (cosine to 0 over `child.epochs`);
`child.retrain: true` (or `--retrain`) trains it from scratch instead. At the end RUN_DIR/entry.yaml (family
shufflenet_spos) is written with the child's weights; the supernet at the switch is kept in RUN_DIR/supernet.pt.

Deviations from the official code (paper intent by default, switches where kept) are in docs/dsnas.md.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
import torch.nn as nn

from nas_zoo.errors import NasZooError

from ..config import ConfigError, Opt
from ..dsnas_step import (ArchParameters, EarlyFix, average_gradients, dsnas_step, flops_table_mmacs, force_gates,
                          sample_gates)
from ..spaces.shufflenet import ShuffleNetSpace
from ..train import ENGINE_SECTION
from . import Method

__all__ = ["SCHEMA", "check_config", "run", "METHOD", "build_space"]

SPACE_SECTION = {
    "stage_repeats": Opt(list, [4, 4, 8, 4]),
    "stage_out_channels": Opt(list, [64, 160, 320, 640]),
    "stem_size": Opt(int, 16),
    "num_features": Opt(int, 1024),
    "bn_eps": Opt(float, 1e-2, help="every BN; the official argparse default (the retrain checkpoints used 1e-5)"),
    "image_size": Opt((int, type(None)), None, help="resolution of the cost tables (None: data.image_size)"),
    "fixed": Opt(dict, {}, help="{layer: op} layers held at one op (a narrowed space; op index or name)"),
}

SCHEMA = {
    "name": Opt(str, help="name of the found model (a timm model name)"),
    "seed": Opt(int, 48, help="official README seed"),
    "data": Opt(dict, help="the data section (nas_zoo.search.data.DataConfig)"),
    "space": dict(SPACE_SECTION),
    "search": {
        "epochs": Opt(int, 240, help="length of the LR schedule (official: 240)"),
        "stop_epoch": Opt(int, 80, help="supernet epochs before the child takes over (official README: 80)"),
        "pretrain_epochs": Opt(int, 0, help="weight-only epochs before alpha is updated (--pretrain_epoch)"),
        "batch_size": Opt(int, 1024, help="global batch"),
        "lr": Opt(float, 0.5),
        "warmup_epochs": Opt(float, 5.0),
        "warmup_lr": Opt(float, 1e-4),
        "momentum": Opt(float, 0.9),
        "weight_decay": Opt(float, 4e-5, help="not on BN parameters"),
        "label_smoothing": Opt(float, 0.1),
        "arch_lr": Opt(float, 1e-3),
        "arch_betas": Opt(list, [0.5, 0.999]),
        "arch_init_mean": Opt(float, 1.0),
        "arch_init_std": Opt(float, 0.01),
        "early_fix": Opt(bool, True),
        "early_fix_threshold": Opt(float, 0.3, help="the paper's h"),
        "flops_loss": Opt(bool, False),
        "flops_coef": Opt(float, 1e-6, help="official README 1e-6 (argparse default 1e-5)"),
        "flops_gate": Opt(float, 290.0, help="MMACs of the path's blocks from which the FLOPs term applies "
                                             "(official: 290 at 224 px; scale it with the space)"),
    },
    "child": {
        "epochs": Opt(int, 160, help="epochs of the chosen child after the switch (official: 160)"),
        "retrain": Opt(bool, False, help="train the child from scratch instead of from the supernet weights"),
        "retrain_lr": Opt(float, 0.34, help="--retrain: base LR (official retrain config)"),
        "retrain_warmup_epochs": Opt(float, 5.0),
        "reset_bn_stats": Opt(bool, False, help="reset BN running stats at the switch (--reset_bn_stat)"),
        "drop_rate": Opt(float, 0.0, help="dropout before the classifier of the child (README: none)"),
        "baselines": Opt(int, 3, low=0, help="random architectures of the child's cost written as baselines/*.yaml "
                                             "for `nas-zoo-search compare` (0: none)"),
    },
    "engine": ENGINE_SECTION,
}


def build_space(space_cfg: dict, image_size: int, bn_affine: bool = True, drop_rate: float = 0.0,
                num_classes: int = 1000) -> ShuffleNetSpace:
    return ShuffleNetSpace(stage_repeats=space_cfg["stage_repeats"], stage_out_channels=space_cfg["stage_out_channels"],
                           stem_size=space_cfg["stem_size"], num_features=space_cfg["num_features"],
                           bn_eps=space_cfg["bn_eps"], bn_affine=bn_affine, drop_rate=drop_rate,
                           image_size=image_size, num_classes=num_classes, fixed=space_cfg.get("fixed") or {})


def expected_classes(data: dict) -> int:
    """The class count a config's data section will give, for checks before any data is read (the classifier's
    share of the cost); the run itself uses the dataset's count."""
    data = data or {}
    if isinstance(data.get("classes"), int):
        return data["classes"]
    return {"embedded": 10, "cifar10": 10, "cifar100": 100}.get(data.get("kind", "embedded"), 1000)


def check_space(cfg: dict, source: str) -> None:
    s = cfg["space"]
    for key in ("stage_repeats", "stage_out_channels"):
        if not s[key] or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in s[key]):
            raise ConfigError(source, f"space.{key}", f"expected a non-empty list of positive integers, got {s[key]}")
    if len(s["stage_repeats"]) != len(s["stage_out_channels"]):
        raise ConfigError(source, "space.stage_out_channels",
                          f"expected one width per stage ({len(s['stage_repeats'])}), got {len(s['stage_out_channels'])}")
    prev = s["stem_size"]
    for i, w in enumerate(s["stage_out_channels"]):
        if w % 2 or w <= prev:
            raise ConfigError(source, f"space.stage_out_channels.{i}",
                              f"expected an even width above the stage input ({prev}), got {w}")
        prev = w
    if not 0 < s["bn_eps"] < 1:
        raise ConfigError(source, "space.bn_eps", f"expected a number in (0, 1), got {s['bn_eps']}")
    try:
        ShuffleNetSpace.parse_fixed(s["fixed"], sum(s["stage_repeats"]))
    except NasZooError as e:
        raise ConfigError(source, f"space.{e.field}", e.problem) from None


def check_config(cfg: dict, source: str) -> None:
    check_space(cfg, source)
    se, ch = cfg["search"], cfg["child"]
    if se["epochs"] < 1:
        raise ConfigError(source, "search.epochs", f"expected >= 1, got {se['epochs']}")
    if not 1 <= se["stop_epoch"] <= se["epochs"]:
        raise ConfigError(source, "search.stop_epoch", f"expected 1..search.epochs ({se['epochs']}), got "
                                                       f"{se['stop_epoch']}")
    if not 0 <= se["pretrain_epochs"] < se["stop_epoch"]:
        raise ConfigError(source, "search.pretrain_epochs", f"expected 0..stop_epoch-1 ({se['stop_epoch'] - 1}) "
                                                            f"so that alpha is updated at all, got {se['pretrain_epochs']}")
    if ch["epochs"] < 0:
        raise ConfigError(source, "child.epochs", f"expected >= 0, got {ch['epochs']}")
    for key in ("batch_size",):
        if se[key] < 1:
            raise ConfigError(source, f"search.{key}", f"expected >= 1, got {se[key]}")
    for key in ("lr", "arch_lr", "warmup_lr"):
        if se[key] <= 0:
            raise ConfigError(source, f"search.{key}", f"expected > 0, got {se[key]}")
    if len(se["arch_betas"]) != 2 or not all(0 <= b < 1 for b in se["arch_betas"]):
        raise ConfigError(source, "search.arch_betas", f"expected two numbers in [0, 1), got {se['arch_betas']}")
    if not 0 < se["early_fix_threshold"] <= 1:
        raise ConfigError(source, "search.early_fix_threshold",
                          f"expected a probability gap in (0, 1], got {se['early_fix_threshold']}")
    if not 0 <= se["label_smoothing"] < 1:
        raise ConfigError(source, "search.label_smoothing", f"expected [0, 1), got {se['label_smoothing']}")
    if se["flops_loss"]:
        size = cfg["space"]["image_size"] or (cfg["data"] or {}).get("image_size") or 224
        space = build_space(cfg["space"], int(size))
        lo, hi = (v / 1e6 for v in space.block_cost_range("macs"))
        if se["flops_gate"] > hi:
            raise ConfigError(source, "search.flops_gate",
                              f"{se['flops_gate']} MMACs is above every path's block MMACs ({lo:.3f}-{hi:.3f} at "
                              f"{size} px): the FLOPs term would never apply")


# ------------------------------------------------------------------------------------------ the run

class _History:
    """Per-epoch alpha probabilities, fixed layers and the max child (for the figure and the log)."""

    def __init__(self):
        self.records: List[dict] = []

    def state_dict(self):
        return {"records": list(self.records)}

    def load_state_dict(self, state):
        self.records = list(state["records"])


class _Chosen:
    """The child architecture once chosen (method state: rebuilds the child module on resume)."""

    def __init__(self):
        self.arch = None
        self.switch_lr = None

    def state_dict(self):
        return {"arch": self.arch, "switch_lr": self.switch_lr}

    def load_state_dict(self, state):
        self.arch, self.switch_lr = state["arch"], state["switch_lr"]


def chosen_arch(log_alpha: torch.Tensor, early_fix: EarlyFix | None, held: Dict[int, int] | None = None) -> List[int]:
    """argmax(alpha) per layer, the fixed choice for layers early fix decided, the held op where the space holds
    a layer at one op."""
    arch = log_alpha.detach().argmax(-1).tolist()
    if early_fix is not None:
        for layer, choice in early_fix.choices().items():
            arch[layer] = choice
    for layer, choice in (held or {}).items():
        arch[layer] = choice
    return arch


def run(job) -> Dict[str, Any]:
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler

    from ..data import DataConfig, build_dataset, create_loader
    from ..engine import Loop, Phase, save_checkpoint, seed_everything
    from ..baseline import write_baselines
    from ..evaluate import evaluate
    from ..export import write_entry
    from nas_zoo.io import atomic_write_text
    from nas_zoo.families.shufflenet_spos import ShuffleNetSPOS, model_kwargs

    cfg, ctx, run_dir = job.cfg, job.ctx, Path(job.run_dir)
    se, ch = cfg["search"], cfg["child"]
    seed = cfg["seed"]
    seed_everything(seed + ctx.rank)
    data_cfg = DataConfig.from_dict(cfg["data"], where="data")
    train_ds, val_ds = build_dataset(data_cfg, "train"), build_dataset(data_cfg, "val")
    image_size = int(cfg["space"]["image_size"] or data_cfg.image_size or 224)
    num_classes = train_ds.num_classes
    space = build_space(cfg["space"], image_size, num_classes=num_classes)
    if se["batch_size"] % ctx.world_size:
        raise ConfigError(job.source, "search.batch_size",
                          f"{se['batch_size']} is not divisible by the {ctx.world_size} processes")
    per_rank = se["batch_size"] // ctx.world_size
    dev = ctx.device

    torch.manual_seed(seed)  # identical weights and alpha on every rank
    supernet = space.supernet(num_classes).to(dev)
    alpha = ArchParameters(space.num_layers, 4, se["arch_init_mean"], se["arch_init_std"]).to(dev)
    criterion = LabelSmoothingCrossEntropy(se["label_smoothing"]) if se["label_smoothing"] else nn.CrossEntropyLoss()
    flops_table = flops_table_mmacs(space.cost_table("macs")[0]) if se["flops_loss"] else None

    def loader(epoch, train=True):
        ds = train_ds if train else val_ds
        return create_loader(ds, data_cfg, per_rank, train=train, workers=cfg["engine"]["workers"],
                             distributed=ctx.distributed, seed=seed, epoch=epoch)

    steps_per_epoch = len(loader(0))
    weights_opt = create_optimizer_v2(supernet, opt="momentum", lr=se["lr"], momentum=se["momentum"],
                                      weight_decay=se["weight_decay"])  # no weight decay on BN (1-d) params
    arch_opt = torch.optim.Adam(alpha.parameters(), lr=se["arch_lr"], betas=tuple(se["arch_betas"]), weight_decay=0)
    weights_sched = CosineLRScheduler(weights_opt, t_initial=se["epochs"] * steps_per_epoch, lr_min=0.0,
                                      warmup_t=int(se["warmup_epochs"] * steps_per_epoch),
                                      warmup_lr_init=se["warmup_lr"], t_in_epochs=False)
    early_fix = EarlyFix(se["early_fix_threshold"], exempt=space.fixed) if se["early_fix"] else None
    gate_rng = torch.Generator().manual_seed(seed * 1000 + ctx.rank)  # each rank samples its own path
    history, chosen = _History(), _Chosen()
    logger = job.logger
    stop = se["stop_epoch"]
    total_epochs = stop + ch["epochs"]
    params = list(supernet.parameters())
    held_rows = list(space.fixed)

    def search_step(batch):
        images, target = (t.to(dev) for t in batch)
        loop.zero_grad("weights", "arch")
        gates = sample_gates(alpha.log_alpha, gate_rng).to(dev)
        if early_fix is not None:
            gates = early_fix.force(gates)
        gates = force_gates(gates, space.fixed)
        r = dsnas_step(supernet, alpha.log_alpha, images, target, criterion, gates, flops_table=flops_table,
                       flops_coef=se["flops_coef"] if se["flops_loss"] else 0.0, flops_gate=se["flops_gate"],
                       backward=loop.backward)
        if held_rows:  # alpha is not learnt where the space holds the op
            alpha.log_alpha.grad[held_rows] = 0
        average_gradients([alpha.log_alpha, *params], ctx.world_size)  # after the reward: a mean of products
        loop.step("weights")
        if loop.epoch >= se["pretrain_epochs"]:
            loop.step("arch")
        return {"loss": r.error_loss, "top1": top1(r.logits, target), "reward": r.reward.mean(),
                "block_mmacs": torch.tensor(r.block_mmacs)}

    def make_child(arch):
        kwargs = model_kwargs(space.entry_arch(arch))
        kwargs["drop_rate"] = ch["drop_rate"]
        return ShuffleNetSPOS(num_classes=num_classes, **kwargs).to(dev)

    def child_optim(child, lr, epochs, warmup_epochs):
        opt = create_optimizer_v2(child, opt="momentum", lr=lr, momentum=se["momentum"],
                                  weight_decay=se["weight_decay"])
        sched = CosineLRScheduler(opt, t_initial=max(1, epochs * steps_per_epoch), lr_min=0.0,
                                  warmup_t=int(warmup_epochs * steps_per_epoch), warmup_lr_init=se["warmup_lr"],
                                  t_in_epochs=False)
        return opt, sched

    def install_child(loop_, fresh: bool):
        """Build the child (and its optimizer) from `chosen`; from the supernet weights when `fresh`."""
        child = make_child(chosen.arch)
        if fresh and not ch["retrain"]:
            child.load_state_dict(space.child_state_dict(supernet.state_dict(), chosen.arch), strict=True)
            if ch["reset_bn_stats"]:
                for m in child.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.reset_running_stats()
        if ch["retrain"]:
            opt, sched = child_optim(child, ch["retrain_lr"], ch["epochs"], ch["retrain_warmup_epochs"])
        else:
            opt, sched = child_optim(child, chosen.switch_lr, ch["epochs"], 0)
        loop_.modules["child"] = child
        loop_.optimizers["child"] = opt
        loop_.schedulers["child"] = sched
        loop_.sched_interval["child"] = "step"

    def child_step(batch):
        # manual: the child is not wrapped in DDP (per-rank BN statistics, as the official child training), so
        # its gradients are averaged here
        images, target = (t.to(dev) for t in batch)
        child = loop.modules["child"]
        loop.zero_grad("child")
        out = child(images)
        loss = criterion(out, target)
        loop.backward(loss)
        average_gradients(child.parameters(), ctx.world_size)
        loop.step("child")
        return {"loss": loss.detach(), "top1": top1(out, target)}

    def on_epoch_start(loop_, epoch):
        if epoch < stop:
            if early_fix is not None:
                new = early_fix.epoch_start(alpha.log_alpha.data)
                if new and ctx.is_main:
                    logger.log({"phase": "early_fix", "epoch": epoch, "fixed": early_fix.choices()})
            return
        if epoch == stop and chosen.arch is None:
            if early_fix is not None:
                early_fix.epoch_start(alpha.log_alpha.data)  # the fixed rows as stored
            chosen.arch = chosen_arch(alpha.log_alpha, early_fix, space.fixed)
            chosen.switch_lr = float(weights_opt.param_groups[0]["lr"])
            if ctx.is_main:
                save_checkpoint({"supernet": supernet.state_dict(), "log_alpha": alpha.log_alpha.detach().cpu(),
                                 "arch": chosen.arch, "epoch": epoch}, run_dir / "supernet.pt")
                logger.log({"phase": "switch", "epoch": epoch, "arch": chosen.arch, "lr": chosen.switch_lr,
                            "retrain": ch["retrain"]})
            install_child(loop_, fresh=True)

    def rebuild(loop_):
        if chosen.arch is not None:  # resumed after the switch: the child exists, its weights load next
            install_child(loop_, fresh=False)

    def eval_fn(epoch):
        val = loader(epoch, train=False)
        if epoch < stop:
            arch = chosen_arch(alpha.log_alpha, early_fix, space.fixed)
            supernet.eval()
            metrics = evaluate(lambda x: supernet(x, arch), val, ctx)
            supernet.train()
            probs = torch.softmax(alpha.log_alpha.detach().cpu().double(), -1)
            history.records.append({"epoch": epoch, "probs": probs.tolist(), "arch": arch,
                                    "fixed": early_fix.choices() if early_fix is not None else {},
                                    "held": space.fixed})
            return {f"max_child_{k}": v for k, v in metrics.items()}
        child = loop.modules["child"]
        child.eval()
        metrics = evaluate(child, val, ctx)
        child.train()
        return {f"child_{k}": v for k, v in metrics.items()}

    loop = Loop(ctx=ctx, ckpt_path=job.ckpt("search"), epochs=total_epochs,
                modules={"supernet": supernet, "alpha": alpha},
                optimizers={"weights": weights_opt, "arch": arch_opt},
                schedulers={"weights": weights_sched},
                phases=[Phase("search", loader=lambda e: loader(e), step=search_step, when=lambda e: e < stop),
                        Phase("child", loader=lambda e: loader(e), step=child_step, when=lambda e: e >= stop)],
                state={"history": history, "chosen": chosen,
                       **({"early_fix": early_fix} if early_fix is not None else {})},
                rngs={"gates": gate_rng}, build=rebuild, on_epoch_start=on_epoch_start, eval_fn=eval_fn,
                amp=False, clip_grad=None, ckpt_every=cfg["engine"]["ckpt_every"], logger=logger, desc="dsnas")
    records = loop.run()

    if chosen.arch is None:  # child.epochs == 0 and the run stopped at the switch
        on_epoch_start(loop, stop)
    child = loop.modules["child"]
    final = records[-1] if records else {}
    summary = (f"DSNAS {cfg['name']}: choices {chosen.arch}, {space.cost(chosen.arch) / 1e6:.3f} "
               f"MMACs at {image_size} px; early-fixed {len(early_fix.choices()) if early_fix else 0}/"
               f"{space.num_layers - len(space.fixed)} searched layers"
               + (f" ({len(space.fixed)} held by the space)" if space.fixed else "")
               + f"; child top-1 {final.get('child_top1', float('nan')):.2f}")
    # the child's keys pass child_state_dict unchanged (it slices only supernet `layers.*` keys)
    entry = write_entry(job, space, chosen.arch, supernet_state=child.state_dict(),
                        provenance={"method": "dsnas", "supernet": "supernet.pt", "stop_epoch": stop,
                                    "child_epochs": ch["epochs"], "retrain": ch["retrain"],
                                    "fixed_layers": early_fix.choices() if early_fix else {}})
    if ch["baselines"]:
        write_baselines(job, space, chosen.arch, n=ch["baselines"], seed=seed)
    if ctx.is_main:
        atomic_write_text(run_dir / "alpha_history.json", json.dumps(history.records))
        _figure(run_dir, history.records, space.num_layers)
    return {"status": "done", "entry": str(entry), "name": cfg["name"], "arch": chosen.arch,
            "macs": space.cost(chosen.arch) / 1e6, "summary": summary, **final}


def _figure(run_dir: Path, records: List[dict], num_layers: int) -> None:
    """alpha probabilities per layer over the search epochs, fixed layers marked (matplotlib optional)."""
    try:
        from ..plots import plot_alpha_history
        plot_alpha_history(records, num_layers, run_dir / "alpha.png")
    except Exception as e:  # noqa: BLE001  (a figure never fails a finished run)
        import warnings
        warnings.warn(f"alpha figure not drawn: {type(e).__name__}: {e}")


def top1(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (logits.detach().argmax(-1) == target).float().mean() * 100


def _plot(run_dir):
    from ..plots import plot_dsnas
    return plot_dsnas(run_dir)


METHOD = Method(name="dsnas", help="DSNAS: search and train the chosen child in one run (ShuffleNetV2 space)",
                schema=SCHEMA, check=check_config, run=run, plot=_plot,
                flags={"--retrain": ("child.retrain=true", "train the chosen child from scratch, not from the "
                                                           "supernet's weights (official --retrain)")})
