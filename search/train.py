"""Train a classifier from scratch with timm's recipe parts: the `train` command, and DNA's demo teacher.

timm.optim.create_optimizer_v2, timm.scheduler.create_scheduler_v2, timm.utils.ModelEmaV3, timm.loss
(label smoothing; SoftTargetCrossEntropy with timm.data.Mixup when mixup/cutmix is set) and the data module's
pipeline, driven by the engine's resumable `TrainLoop`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

import torch.nn as nn

from .config import Opt
from .engine import DistContext, RunLogger, TrainLoop, convert_sync_batchnorm, unwrap, wrap_ddp

__all__ = ["TRAIN_SECTION", "ENGINE_SECTION", "train_classifier", "evaluate_classifier"]

TRAIN_SECTION = {
    "epochs": Opt(int, 10, low=1),
    "batch_size": Opt(int, 128, help="global batch (split over the processes)", low=1),
    "opt": Opt(str, "sgd", help="timm optimizer name"),
    "lr": Opt(float, 0.1, above=0),
    "momentum": Opt(float, 0.9, low=0, high=1),
    "weight_decay": Opt(float, 1e-5, low=0),
    "sched": Opt(str, "cosine", help="timm scheduler name"),
    "warmup_epochs": Opt(int, 0, low=0),
    "warmup_lr": Opt(float, 1e-5, low=0),
    "min_lr": Opt(float, 0.0, low=0),
    "decay_epochs": Opt(float, 2.4, above=0),
    "decay_rate": Opt(float, 0.97, above=0),
    "label_smoothing": Opt(float, 0.1, low=0, high=1),
    "mixup": Opt(float, 0.0, low=0),
    "cutmix": Opt(float, 0.0, low=0),
    "ema": Opt(bool, False),
    "ema_decay": Opt(float, 0.9998, low=0, high=1),
    "clip_grad": Opt((float, type(None)), None, above=0),
    "drop_rate": Opt((float, type(None)), None, low=0, high=1),
    "drop_path_rate": Opt((float, type(None)), None, low=0, high=1),
    "eval_every": Opt(int, 1, low=1),
    "aux_weight": Opt(float, 0.0, low=0, help="weight of the auxiliary head's loss (DARTS-cell models: 0.4); "
                                               "0: no auxiliary head"),
    "drop_path_schedule": Opt(str, "constant", choices=("constant", "linear"),
                              help="linear: drop path grows from 0 to drop_path_rate over the epochs (DARTS)"),
}

ENGINE_SECTION = {
    "device": Opt(str, "auto", choices=("auto", "cpu", "cuda")),
    "amp": Opt(bool, False),
    "workers": Opt(int, 0, low=0),
    "ckpt_every": Opt(int, 0, help="also checkpoint every N steps inside an epoch (0: at epoch ends only)",
                      low=0),
    "sync_bn": Opt(bool, True, help="BatchNorm over the global batch when distributed"),
    "tensorboard": Opt(bool, True),
    "threads": Opt((int, type(None)), None, help="torch intra-op threads (None: torch default)", low=1),
}


def _per_rank_batch(batch_size: int, ctx: DistContext, key: str) -> int:
    if batch_size % ctx.world_size:
        from .config import ConfigError
        raise ConfigError("<config>", key, f"{batch_size} is not divisible by the {ctx.world_size} processes")
    return batch_size // ctx.world_size


def evaluate_classifier(model: nn.Module, loader, ctx: DistContext, desc: str = "eval") -> Dict[str, float]:
    from .evaluate import evaluate
    model.eval()
    out = evaluate(model, loader, ctx, desc=desc)
    return {"loss": out["loss"], "top1": out["top1"]}


def train_classifier(model: nn.Module, train_cfg: dict, engine_cfg: dict, data_cfg, ctx: DistContext,
                     out_dir: os.PathLike, seed: int = 0, desc: str = "train", key: str = "train") -> Dict[str, Any]:
    """Train `model` on `data_cfg`'s train split, evaluate on its val split; resumable from out_dir/last.pt.

    Writes out_dir/{last.pt (loop checkpoint), model.pt (final weights; EMA weights as model_ema.pt),
    metrics.json, log.jsonl}. Returns the final metrics.
    """
    from timm.data import Mixup
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    from .data import build_dataset, create_loader

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_ds = build_dataset(data_cfg, "train")
    val_ds = build_dataset(data_cfg, "val")
    batch = _per_rank_batch(train_cfg["batch_size"], ctx, f"{key}.batch_size")
    workers = engine_cfg["workers"]

    model.to(ctx.device)
    if engine_cfg["sync_bn"]:
        model = convert_sync_batchnorm(model, ctx)
    ddp_model = wrap_ddp(model, ctx)
    optimizer = create_optimizer_v2(model, opt=train_cfg["opt"], lr=train_cfg["lr"],
                                    weight_decay=train_cfg["weight_decay"], momentum=train_cfg["momentum"])
    probe = create_loader(train_ds, data_cfg, batch, train=True, workers=workers, distributed=ctx.distributed,
                          seed=seed, epoch=0)
    updates_per_epoch = len(probe)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=train_cfg["sched"], num_epochs=train_cfg["epochs"], warmup_epochs=train_cfg["warmup_epochs"],
        warmup_lr=train_cfg["warmup_lr"], min_lr=train_cfg["min_lr"], decay_epochs=train_cfg["decay_epochs"],
        decay_rate=train_cfg["decay_rate"], updates_per_epoch=updates_per_epoch)
    ema = ModelEmaV3(model, decay=train_cfg["ema_decay"]) if train_cfg["ema"] else None

    mixup = None
    if train_cfg["mixup"] > 0 or train_cfg["cutmix"] > 0:
        mixup = Mixup(mixup_alpha=train_cfg["mixup"], cutmix_alpha=train_cfg["cutmix"],
                      label_smoothing=train_cfg["label_smoothing"], num_classes=train_ds.num_classes)
        criterion = SoftTargetCrossEntropy()
    elif train_cfg["label_smoothing"] > 0:
        criterion = LabelSmoothingCrossEntropy(smoothing=train_cfg["label_smoothing"])
    else:
        criterion = nn.CrossEntropyLoss()

    def make_loader(epoch: int):
        return create_loader(train_ds, data_cfg, batch, train=True, workers=workers, distributed=ctx.distributed,
                             seed=seed, epoch=epoch)

    def step(batch_):
        images, targets = batch_[0].to(ctx.device), batch_[1].to(ctx.device)
        if mixup is not None:
            images, targets = mixup(images, targets)
        out = ddp_model(images)
        if isinstance(out, tuple):  # (logits, aux_logits): a model built with its auxiliary head
            return criterion(out[0], targets) + train_cfg["aux_weight"] * criterion(out[1], targets)
        return criterion(out, targets)

    def after_step(_step: int) -> None:
        if ema is not None:
            ema.update(model)

    val_loader = create_loader(val_ds, data_cfg, batch, train=False, workers=workers, distributed=ctx.distributed,
                               seed=seed)

    def eval_fn(epoch: int) -> Dict[str, float]:
        out = {f"val_{k}": v for k, v in evaluate_classifier(model, val_loader, ctx, desc=f"{desc} eval").items()}
        if ema is not None:
            out.update({f"val_ema_{k}": v for k, v in evaluate_classifier(ema.module, val_loader, ctx,
                                                                       desc=f"{desc} eval ema").items()})
        return out

    logger = RunLogger(out_dir / "log.jsonl", ctx, tensorboard=engine_cfg["tensorboard"])
    loop = TrainLoop(ctx=ctx, ckpt_path=out_dir / "last.pt", model=model, optimizer=optimizer, epochs=train_cfg["epochs"],
                     make_loader=make_loader, step_fn=step, scheduler=scheduler,
                     state={"ema": ema} if ema is not None else {}, amp=engine_cfg["amp"],
                     clip_grad=train_cfg["clip_grad"], ckpt_every=engine_cfg["ckpt_every"], logger=logger, desc=desc,
                     eval_fn=eval_fn, eval_every=train_cfg["eval_every"], after_step=after_step)
    rate = train_cfg.get("drop_path_rate")
    if train_cfg.get("drop_path_schedule") == "linear" and rate and hasattr(model, "set_drop_path_rate"):
        # DARTS: drop_path_prob * epoch / epochs, set at every epoch start
        loop.on_epoch_start = lambda lp, epoch: model.set_drop_path_rate(rate * epoch / train_cfg["epochs"])
    history = loop.run()
    final = dict(history[-1]) if history else {}
    if not final or "val_top1" not in final:
        final.update(eval_fn(train_cfg["epochs"] - 1))
    if ctx.is_main:
        from .engine import save_checkpoint
        save_checkpoint(unwrap(model).state_dict(), out_dir / "model.pt")
        if ema is not None:
            save_checkpoint(ema.module.state_dict(), out_dir / "model_ema.pt")
        from nas_zoo.io import atomic_write_text
        atomic_write_text(out_dir / "metrics.json", json.dumps({"final": final, "history": history}, indent=1))
    logger.close()
    ctx.barrier()
    return final


TRAIN_SCHEMA = {
    "seed": Opt(int, 0),
    "data": Opt(dict, help="the data section (nas_zoo.search.data.DataConfig)"),
    "train": TRAIN_SECTION,
    "engine": ENGINE_SECTION,
}


def resolve_model(model: str):
    """ENTRY_OR_NAME -> (timm model name, entry or None): an entry YAML, a run dir with entry.yaml, or a name."""
    import timm
    from nas_zoo.entry import EntryError
    from nas_zoo.registry import get_entry, register_entry
    path = Path(model)
    if path.is_dir() and (path / "entry.yaml").is_file():
        path = path / "entry.yaml"
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise EntryError(str(path), "<file>", "entry file not found")
        name = register_entry(path, replace=True)
        return name, get_entry(name)
    if timm.is_model(model):
        try:
            return model, get_entry(model)
        except KeyError:
            return model, None
    raise EntryError(model, "<name>", "neither an entry file, a run directory with entry.yaml, nor a timm model name")


def run_training(model_spec: str, cfg: dict, run_dir: Path, ctx: DistContext) -> Dict[str, Any]:
    """The `train` command: build ENTRY_OR_NAME for the data's classes and train it from scratch."""
    import timm
    from .data import DataConfig, build_dataset
    from .engine import seed_everything

    name, _ = resolve_model(model_spec)
    data_cfg = DataConfig.from_dict(cfg["data"], where="data")
    num_classes = build_dataset(data_cfg, "train").num_classes
    seed_everything(cfg["seed"])  # same initial weights in every process
    kwargs = {k: cfg["train"][k] for k in ("drop_rate", "drop_path_rate") if cfg["train"][k] is not None}
    if cfg["train"]["aux_weight"] > 0:
        kwargs["auxiliary"] = True  # DARTS-cell models: their auxiliary classifier, trained with aux_weight
    try:
        model = timm.create_model(name, num_classes=num_classes, **kwargs)
    except TypeError as e:
        if "auxiliary" not in kwargs:
            raise
        from .config import ConfigError
        raise ConfigError("<config>", "train.aux_weight", f"{name} has no auxiliary head ({e}); set it to 0") from None
    seed_everything(cfg["seed"] + ctx.rank)
    final = train_classifier(model, cfg["train"], cfg["engine"], data_cfg, ctx, run_dir, seed=cfg["seed"],
                             desc=f"train {name}")
    return {"model": name, **final}
