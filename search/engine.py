"""The training engine shared by every search method: the strategy lives in the methods, the mechanics here.

* Distribution: `setup_distributed` reads torchrun's env:// variables (gloo on CPU, NCCL on GPU); one process
  without them. Metrics are reduced across ranks; `SyncBatchNorm` (or `AllReduceBatchNorm` where torch's
  SyncBatchNorm does not run, e.g. gloo on CPU) makes N processes compute what one process does with the
  same global batch.
* Checkpoints: `save_checkpoint` writes a temp file and renames it over the old one (never half-written);
  the content is tensors and containers only, so ``torch.load(weights_only=True)`` reads it. RNG states
  (python, numpy, torch, cuda) are stored as tensors/lists, per rank.
* `TrainLoop`: epochs of optimizer steps with AMP, gradient clipping, timm schedulers, a NaN/inf guard,
  periodic checkpoints holding the position inside the epoch, tqdm progress on rank 0 and JSONL logs
  (+ TensorBoard when installed). Killed at any moment and run again, it continues from the last checkpoint
  and ends with the same weights as an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["DistContext", "setup_distributed", "RunError", "NonFiniteLossError", "save_checkpoint",
           "load_checkpoint", "get_rng_state", "set_rng_state", "numpy_rng_to_state", "numpy_rng_from_state",
           "seed_everything", "RunLogger", "TrainLoop", "AllReduceBatchNorm", "convert_sync_batchnorm",
           "wrap_ddp", "unwrap"]


class RunError(RuntimeError):
    """A run cannot go on (bad checkpoint, diverged loss, world-size mismatch ...); the message says why."""


class NonFiniteLossError(RunError):
    pass


# ----------------------------------------------------------------------------------------------- distribution
@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def all_reduce_mean(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum(tensor) / self.world_size if self.distributed else tensor

    def all_gather_object(self, obj: Any) -> List[Any]:
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup_distributed(device: str = "auto") -> DistContext:
    """Join the torchrun process group when launched by torchrun (env://), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RunError("device 'cuda' requested but no CUDA device is available")
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _distributed_training(bn: nn.Module) -> bool:
    return bn.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm of x over the batch of all ranks (training mode), updating bn's running statistics."""
    from torch.distributed.nn.functional import all_reduce

    n_local = x.numel() // x.shape[1]
    stats = torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), x.new_full((1,), float(n_local))])
    with warnings.catch_warnings():  # deprecated in favour of a private module; still the autograd-aware one
        warnings.simplefilter("ignore", FutureWarning)
        stats = all_reduce(stats)
    c = x.shape[1]
    n = stats[-1]
    mean = stats[:c] / n
    var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
    if bn.track_running_stats and bn.running_mean is not None:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
            unbiased = var * n / (n - 1).clamp_min(1)
            bn.running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            bn.running_var.mul_(1 - momentum).add_(unbiased.detach(), alpha=momentum)
    y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + bn.eps)
    if bn.affine:
        y = y * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    return y


class AllReduceBatchNorm(nn.BatchNorm2d):
    """BatchNorm over the batch of all ranks, for backends where torch's SyncBatchNorm does not run (gloo/CPU).

    Sums of x and x^2 are all-reduced with the autograd-aware collective, so gradients flow as in one big
    batch; running statistics follow nn.BatchNorm2d (unbiased variance, momentum or cumulative average).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _all_reduce_batch_norm(self, x) if _distributed_training(self) else super().forward(x)


def _batchnorm_act_classes():
    from timm.layers import BatchNormAct2d

    class AllReduceBatchNormAct2d(BatchNormAct2d):
        """timm's BatchNormAct2d (BN + drop + activation) with AllReduceBatchNorm's statistics."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not _distributed_training(self):
                return super().forward(x)
            return self.act(self.drop(_all_reduce_batch_norm(self, x)))

    return BatchNormAct2d, AllReduceBatchNormAct2d


_BN_ACT = None


def convert_sync_batchnorm(module: nn.Module, ctx: DistContext) -> nn.Module:
    """Make BatchNorm layers (incl. timm's BatchNormAct2d) reduce over all ranks: timm's converter (torch
    SyncBatchNorm) on GPU; on CPU the layers switch class in place to the all-reduce variants (same state)."""
    global _BN_ACT
    if not ctx.distributed:
        return module
    if ctx.device.type == "cuda":
        from timm.layers import convert_sync_batchnorm as timm_convert
        return timm_convert(module)
    if _BN_ACT is None:
        _BN_ACT = _batchnorm_act_classes()
    bn_act, all_reduce_bn_act = _BN_ACT
    for m in module.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = AllReduceBatchNorm
        elif type(m) is bn_act:
            m.__class__ = all_reduce_bn_act
    return module


def wrap_ddp(module: nn.Module, ctx: DistContext, find_unused_parameters: bool = False) -> nn.Module:
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=find_unused_parameters)


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if hasattr(module, "module") and isinstance(module, nn.parallel.DistributedDataParallel) \
        else module


# ------------------------------------------------------------------------------------------------ RNG states
def numpy_rng_to_state(state: tuple) -> dict:
    """np.random.RandomState.get_state() as tensors (weights_only-loadable)."""
    name, keys, pos, has_gauss, cached = state
    return {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def numpy_rng_from_state(state: Mapping) -> tuple:
    return ("MT19937", state["keys"].numpy().astype(np.uint32), int(state["pos"]), int(state["has_gauss"]),
            float(state["cached_gaussian"]))


def get_rng_state() -> dict:
    version, internal, gauss = random.getstate()
    out = {"python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64),
                      "gauss": gauss},
           "numpy": numpy_rng_to_state(np.random.get_state()),
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(state: Mapping) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    np.random.set_state(numpy_rng_from_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(state: Mapping, path: Union[str, os.PathLike]) -> Path:
    """torch.save to a temp file in the same directory, fsync, then rename over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(dict(state), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def load_checkpoint(path: Union[str, os.PathLike]) -> dict:
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{path}: checkpoint not found") from None
    except Exception as e:  # truncated / foreign files
        raise RunError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------------ logging
class RunLogger:
    """JSONL log (one object per line) plus TensorBoard scalars when tensorboard is installed; rank 0 only."""

    def __init__(self, path: Union[str, os.PathLike], ctx: DistContext, tensorboard: bool = True):
        self.ctx = ctx
        self.path = Path(path)
        self._tb = None
        if ctx.is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self._tb = SummaryWriter(str(self.path.parent / "tb"))
                except Exception:  # tensorboard not installed: the JSONL log is the record
                    self._tb = None

    def log(self, record: Mapping[str, Any], step: Optional[int] = None, prefix: str = "") -> None:
        if not self.ctx.is_main:
            return
        record = {k: (float(v) if isinstance(v, (torch.Tensor, np.floating)) else v) for k, v in record.items()}
        record.setdefault("time", round(time.time(), 3))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None and step is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("time", "step", "epoch"):
                    self._tb.add_scalar(f"{prefix}{k}", v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def progress(iterable: Iterable, ctx: DistContext, **kwargs):
    """tqdm on rank 0 (to stderr), the bare iterable elsewhere or when NAS_ZOO_NO_PROGRESS is set."""
    if not ctx.is_main or os.environ.get("NAS_ZOO_NO_PROGRESS"):
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, dynamic_ncols=True, leave=False, **kwargs)


# ------------------------------------------------------------------------------------------------ the loop
StepFn = Callable[[Any], "torch.Tensor | tuple"]


class TrainLoop:
    """Epochs of optimizer steps, resumable from any checkpoint it wrote.

    step_fn(batch) -> loss (or (loss, {metric: tensor})): forward + loss only; this loop does backward (with
    the AMP scaler), gradient clipping, the optimizer and scheduler steps, the NaN/inf guard, checkpoints and logs.
    make_loader(epoch) -> an iterable with len() yielding the epoch's batches for this rank, in a fixed order
    (seeded by epoch). `state` holds everything else a method wants saved (name -> object with
    state_dict/load_state_dict); `rng_extra` are method RNGs (name -> np.random.RandomState).
    """

    def __init__(self, *, ctx: DistContext, ckpt_path: Union[str, os.PathLike], model: nn.Module,
                 optimizer: torch.optim.Optimizer, epochs: int, make_loader: Callable[[int], Iterable],
                 step_fn: StepFn, scheduler=None, state: Optional[Dict[str, Any]] = None,
                 rng_extra: Optional[Dict[str, np.random.RandomState]] = None, amp: bool = False,
                 clip_grad: Optional[float] = None, ckpt_every: int = 0, logger: Optional[RunLogger] = None,
                 desc: str = "train", eval_fn: Optional[Callable[[int], Dict[str, float]]] = None,
                 eval_every: int = 1, after_step: Optional[Callable[[int], None]] = None,
                 skip_batches: Optional[Callable[[Any, int], None]] = None):
        self.ctx, self.ckpt_path, self.model = ctx, Path(ckpt_path), model
        self.optimizer, self.scheduler, self.epochs = optimizer, scheduler, epochs
        self.make_loader, self.step_fn = make_loader, step_fn
        self.state = dict(state or {})
        self.rng_extra = dict(rng_extra or {})
        self.amp, self.clip_grad, self.ckpt_every = amp, clip_grad, ckpt_every
        self.logger, self.desc = logger, desc
        self.eval_fn, self.eval_every, self.after_step = eval_fn, max(1, eval_every), after_step
        self.skip_batches = skip_batches
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.history: List[Dict[str, float]] = []
        use_scaler = amp and ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.amp_dtype = torch.float16 if ctx.device.type == "cuda" else torch.bfloat16
        self._epoch_sums: Dict[str, float] = {}

    # -- checkpoint content
    def state_dict(self) -> dict:
        ranks_rng = self.ctx.all_gather_object(get_rng_state())
        extra = {name: numpy_rng_to_state(rs.get_state()) for name, rs in self.rng_extra.items()}
        return {
            "format": "nas_zoo.search/loop-v1",
            "loop": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step,
                     "world_size": self.ctx.world_size, "epoch_sums": dict(self._epoch_sums),
                     "history": list(self.history)},
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict(),
            "state": {k: v.state_dict() for k, v in self.state.items()},
            "rng": ranks_rng,
            "rng_extra": extra,
        }

    def save(self) -> None:
        state = self.state_dict()  # collective: every rank takes part
        if self.ctx.is_main:
            save_checkpoint(state, self.ckpt_path)
        self.ctx.barrier()

    def _restore(self, ckpt: dict) -> None:
        loop = ckpt["loop"]
        if loop["world_size"] != self.ctx.world_size:
            raise RunError(f"{self.ckpt_path}: written by {loop['world_size']} process(es), resumed with "
                           f"{self.ctx.world_size}; resume with the same number of processes")
        unwrap(self.model).load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"]:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"]) if ckpt["scaler"] else None
        for k, v in self.state.items():
            v.load_state_dict(ckpt["state"][k])
        for name, rs in self.rng_extra.items():
            rs.set_state(numpy_rng_from_state(ckpt["rng_extra"][name]))
        self.epoch, self.batch_in_epoch = loop["epoch"], loop["batch_in_epoch"]
        self.global_step = loop["global_step"]
        self._epoch_sums = dict(loop["epoch_sums"])
        self.history = list(loop["history"])
        self._pending_rng = ckpt["rng"][self.ctx.rank]

    def resume(self) -> bool:
        """Load the checkpoint if one exists; True when the run continues from it."""
        self._pending_rng = None
        if not self.ckpt_path.exists():
            return False
        self._restore(load_checkpoint(self.ckpt_path))
        return True

    @property
    def finished(self) -> bool:
        return self.epoch >= self.epochs

    # -- the loop
    def _amp_context(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.amp_dtype)

    def _train_step(self, batch) -> Dict[str, torch.Tensor]:
        with self._amp_context():
            out = self.step_fn(batch)
        loss, metrics = (out if isinstance(out, tuple) else (out, {}))
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0], device=loss.device)
        if float(self.ctx.all_reduce_sum(bad)) > 0:
            raise NonFiniteLossError(
                f"{self.desc}: the loss became {float(loss.detach())} at epoch {self.epoch}, batch "
                f"{self.batch_in_epoch} (step {self.global_step}); stopping. The last good checkpoint "
                f"{self.ckpt_path} is kept; lower the learning rate or enable gradient clipping "
                "(engine.clip_grad) and resume.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": loss.detach(), **{k: v.detach() for k, v in metrics.items()}}

    def run(self) -> List[Dict[str, float]]:
        """Train to the end (resuming first if a checkpoint exists); return the per-epoch history."""
        if not hasattr(self, "_pending_rng"):
            self.resume()
        while self.epoch < self.epochs:
            loader = self.make_loader(self.epoch)
            total = len(loader)
            start = self.batch_in_epoch
            it = None if start else iter(loader)
            if start:
                sampler = getattr(loader, "sampler", None)
                if self.skip_batches is not None:
                    self.skip_batches(loader, start)
                    it = iter(loader)
                elif sampler is not None and hasattr(sampler, "start_batch"):  # nas_zoo.search.data's sampler
                    sampler.set_epoch(self.epoch, start_batch=start)
                    it = iter(loader)
                else:  # generic: draw and drop; the RNG state restored below undoes what this consumed
                    it = iter(loader)
                    for _ in range(start):
                        next(it)
            if self._pending_rng is not None:
                set_rng_state(self._pending_rng)
                self._pending_rng = None
            if self.scheduler is not None and start == 0:
                self.scheduler.step(self.epoch)
            self.model.train()
            bar = progress(it, self.ctx, total=total, initial=start, desc=f"{self.desc} {self.epoch + 1}/{self.epochs}")
            for batch in bar:
                metrics = self._train_step(batch)
                self.batch_in_epoch += 1
                self.global_step += 1
                if self.scheduler is not None:
                    self.scheduler.step_update(self.global_step)
                if self.after_step is not None:
                    self.after_step(self.global_step)
                for k, v in metrics.items():
                    self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + float(v)
                if hasattr(bar, "set_postfix") and self.global_step % 5 == 0:
                    bar.set_postfix(loss=f"{float(metrics['loss']):.4g}")
                if self.ckpt_every and self.batch_in_epoch % self.ckpt_every == 0 and self.batch_in_epoch < total:
                    self.save()
            if hasattr(bar, "close"):
                bar.close()
            n = max(1, self.batch_in_epoch)
            sums = self.ctx.all_reduce_mean(torch.tensor(sorted_values(self._epoch_sums), dtype=torch.float64))
            record = {"epoch": self.epoch + 1, "step": self.global_step,
                      **{f"train_{k}": v / n for k, v in zip(sorted(self._epoch_sums), sums.tolist())},
                      "lr": self.optimizer.param_groups[0]["lr"]}
            if self.eval_fn is not None and ((self.epoch + 1) % self.eval_every == 0 or self.epoch + 1 == self.epochs):
                record.update(self.eval_fn(self.epoch))
            self.history.append(record)
            if self.logger is not None:
                self.logger.log({"phase": self.desc, **record}, step=self.global_step, prefix=f"{self.desc}/")
            self.epoch += 1
            self.batch_in_epoch = 0
            self._epoch_sums = {}
            self.save()
        return self.history


def sorted_values(d: Mapping[str, float]) -> List[float]:
    return [d[k] for k in sorted(d)]
