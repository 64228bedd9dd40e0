"""The training engine shared by every search method: the strategy lives in the methods, the mechanics here.

* Distribution: `setup_distributed` reads torchrun's env:// variables (gloo on CPU, NCCL on GPU); one process
  without them. Metrics are reduced across ranks; `SyncBatchNorm` (or `AllReduceBatchNorm` where torch's
  SyncBatchNorm does not run, e.g. gloo on CPU) makes N processes compute what one process does with the
  same global batch.
* Checkpoints: `save_checkpoint` writes a temp file and renames it over the old one (never half-written);
  the content is tensors and containers only, so ``torch.load(weights_only=True)`` reads it. RNG states
  (python, numpy, torch, cuda) are stored as tensors/lists, per rank.
* `Loop`: epochs made of named `Phase`s (each its loader(s) and step), named modules / optimizers / schedulers
  (timm or torch), automatic or manual steps (`loop.backward`, gradient surgery, `loop.step(name)`), epoch hooks,
  AMP, clipping, a NaN/inf guard (every N steps), checkpoints holding the phase and batch position, method state
  (shared and per rank), two-stage restore, tqdm progress on rank 0 and JSONL logs (+ TensorBoard when
  installed). Killed at any moment and run again, it continues from the last checkpoint and ends with the same
  result as an uninterrupted run. `TrainLoop(...)` is the one-model, one-optimizer case.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from nas_zoo.errors import NasZooError

__all__ = ["DistContext", "setup_distributed", "RunError", "NonFiniteLossError", "save_checkpoint",
           "load_checkpoint", "get_rng_state", "set_rng_state", "numpy_rng_to_state", "numpy_rng_from_state",
           "seed_everything", "RunLogger", "TrainLoop", "AllReduceBatchNorm", "convert_sync_batchnorm",
           "wrap_ddp", "unwrap", "Loop", "Phase", "all_reduce_grads"]


class RunError(NasZooError):
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
    """torch.save through nas_zoo.io.atomic_write: never half-written, whenever the process dies."""
    from nas_zoo.io import atomic_write
    return atomic_write(path, lambda f: torch.save(dict(state), f))


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
def all_reduce_grads(params: Iterable[torch.Tensor], ctx: DistContext) -> None:
    """Average the .grad of `params` over the ranks (one flat all-reduce): for parameters kept outside DDP or
    whose gradients come from autograd.grad / hand-made estimators. Parameters without a grad count as zero."""
    if not ctx.distributed:
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not params:
        return
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    dist.all_reduce(flat)
    flat /= ctx.world_size
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


@dataclass
class Phase:
    """One part of an epoch: its batches and what a step does with each.

    loader(epoch) -> an iterable with len() (or a tuple of them, read in lock-step: the batch is then a tuple and
    the phase is as long as the shortest). With `optimizer` the step is automatic: step(batch) returns the loss
    (or (loss, {metric: tensor})) and the loop zero-grads, back-propagates, clips and steps that optimizer. Without
    it the step is manual: step(batch) returns {"loss": tensor, ...} and calls loop.zero_grad / loop.backward /
    loop.step itself (gradient surgery goes between backward and step). `when(epoch)` switches the phase off for
    some epochs (e.g. architecture steps only after the warm-up).
    """

    name: str
    loader: Callable[[int], Any]
    step: Callable[[Any], Any]
    optimizer: Optional[str] = None
    when: Optional[Callable[[int], bool]] = None

    def active(self, epoch: int) -> bool:
        return self.when is None or bool(self.when(epoch))


def _stateful(obj) -> bool:
    return hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")


def _rng_state(rng) -> Any:
    if isinstance(rng, np.random.RandomState):
        return {"kind": "numpy", "state": numpy_rng_to_state(rng.get_state())}
    if isinstance(rng, torch.Generator):
        return {"kind": "torch", "state": rng.get_state()}
    if isinstance(rng, random.Random):
        version, internal, gauss = rng.getstate()
        return {"kind": "python", "state": torch.tensor(internal, dtype=torch.int64), "version": int(version),
                "gauss": gauss}
    raise TypeError(f"cannot checkpoint an RNG of type {type(rng).__name__}")


def _set_rng(rng, saved: Mapping) -> None:
    if saved["kind"] == "numpy":
        rng.set_state(numpy_rng_from_state(saved["state"]))
    elif saved["kind"] == "torch":
        rng.set_state(saved["state"])
    else:
        rng.setstate((saved["version"], tuple(int(v) for v in saved["state"].tolist()), saved["gauss"]))


def _is_timm_scheduler(sched) -> bool:
    return hasattr(sched, "step_update")


def _skip(loader, start: int, epoch: int, skip_batches) -> Iterator:
    """An iterator over `loader` from batch `start` on: the resumable sampler starts there, else draw and drop
    (the RNG state restored afterwards undoes what drawing consumed)."""
    if start == 0:
        return iter(loader)
    if skip_batches is not None:
        skip_batches(loader, start)
        return iter(loader)
    sampler = getattr(loader, "sampler", None)
    if sampler is not None and hasattr(sampler, "start_batch"):  # nas_zoo.search.data's ResumableSampler
        sampler.set_epoch(epoch, start_batch=start)
        return iter(loader)
    it = iter(loader)
    for _ in range(start):
        next(it)
    return it


class Loop:
    """The engine's training loop: epochs made of named phases, several named modules / optimizers / schedulers,
    automatic or manual steps, hooks, DDP-aware checkpoints that resume anywhere, logs.

    Checkpoint content (``torch.load(weights_only=True)``-readable): the position (epoch, phase, batch inside the
    phase), every named module / optimizer / scheduler / GradScaler, `state` (same on every rank: rank 0's copy),
    `rank_state` and `rngs` (one copy per rank) and the global RNG states per rank. Restore is two-stage: `state`
    and `rank_state` first, then `build(loop)` (rebuild modules / optimizers from method state, e.g. a network
    derived from the current genotype), then the weights of whatever `modules` / `optimizers` then hold.

    AMP: one GradScaler for all optimizers (torch's recipe for several optimizers: `scaler.step(opt)` skips only the
    optimizer whose gradients overflowed, `update()` once per iteration); a no-op off CUDA, where AMP is bf16.
    """

    FORMAT = "nas_zoo.search/loop-v2"

    def __init__(self, *, ctx: DistContext, ckpt_path: Union[str, os.PathLike], epochs: int,
                 phases: Sequence[Phase], modules: Optional[Dict[str, nn.Module]] = None,
                 optimizers: Optional[Dict[str, torch.optim.Optimizer]] = None,
                 schedulers: Optional[Dict[str, Any]] = None, sched_interval: Optional[Dict[str, str]] = None,
                 state: Optional[Dict[str, Any]] = None, rank_state: Optional[Dict[str, Any]] = None,
                 rngs: Optional[Dict[str, Any]] = None, build: Optional[Callable[["Loop"], None]] = None,
                 on_epoch_start: Optional[Callable[["Loop", int], None]] = None,
                 on_epoch_end: Optional[Callable[["Loop", int, dict], None]] = None,
                 after_step: Optional[Callable[["Loop", str], None]] = None,
                 eval_fn: Optional[Callable[[int], Dict[str, float]]] = None, eval_every: int = 1,
                 amp: bool = False, clip_grad: Union[float, Dict[str, float], None] = None, ckpt_every: int = 0,
                 nan_check_every: int = 1, logger: Optional[RunLogger] = None, desc: str = "train",
                 skip_batches: Optional[Callable[[Any, int], None]] = None, train_modules: bool = True):
        if not phases:
            raise ValueError("a loop needs at least one phase")
        names = [p.name for p in phases]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must be unique, got {names}")
        self.ctx, self.ckpt_path, self.epochs = ctx, Path(ckpt_path), int(epochs)
        self.phases = list(phases)
        self.modules: Dict[str, nn.Module] = dict(modules or {})
        self.optimizers: Dict[str, torch.optim.Optimizer] = dict(optimizers or {})
        self.schedulers: Dict[str, Any] = dict(schedulers or {})
        self.sched_interval = dict(sched_interval or {})
        for name, sched in self.schedulers.items():
            interval = self.sched_interval.setdefault(name, "step" if _is_timm_scheduler(sched) else "epoch")
            if interval not in ("step", "epoch"):
                raise ValueError(f"sched_interval[{name!r}] must be 'step' or 'epoch', got {interval!r}")
        self.state = dict(state or {})
        self.rank_state = dict(rank_state or {})
        self.rngs = dict(rngs or {})
        self.build, self.on_epoch_start, self.on_epoch_end = build, on_epoch_start, on_epoch_end
        self.after_step, self.eval_fn, self.eval_every = after_step, eval_fn, max(1, int(eval_every))
        self.amp, self.clip_grad, self.ckpt_every = amp, clip_grad, int(ckpt_every)
        self.nan_check_every = max(1, int(nan_check_every))
        self.logger, self.desc, self.skip_batches = logger, desc, skip_batches
        self.train_modules = train_modules
        self.epoch, self.phase_index, self.batch_in_phase, self.global_step = 0, 0, 0, 0
        self.num_updates: Dict[str, int] = {}
        self.history: List[Dict[str, float]] = []
        self.scaler = torch.amp.GradScaler("cuda", enabled=amp and ctx.device.type == "cuda")
        self.amp_dtype = torch.float16 if ctx.device.type == "cuda" else torch.bfloat16
        self._sums: Dict[str, float] = {}
        self._counts: Dict[str, int] = {}
        self._stepped = False
        self._bad: Optional[torch.Tensor] = None
        self._bad_at: Optional[tuple] = None
        self._pending_rng = None
        self._started = False

    # -- the step API (manual optimisation)
    @property
    def phase(self) -> Phase:
        return self.phases[self.phase_index]

    def zero_grad(self, *names: str) -> None:
        for name in names or tuple(self.optimizers):
            self.optimizers[name].zero_grad(set_to_none=True)

    def backward(self, loss: torch.Tensor, *, create_graph: bool = False, retain_graph: Optional[bool] = None,
                 inputs=None) -> None:
        self.scaler.scale(loss).backward(create_graph=create_graph, retain_graph=retain_graph, inputs=inputs)

    def _clip_value(self, name: str) -> Optional[float]:
        if isinstance(self.clip_grad, Mapping):
            return self.clip_grad.get(name)
        return self.clip_grad

    def step(self, name: str) -> None:
        """Unscale, clip, step optimizer `name`, then its per-step scheduler."""
        opt = self.optimizers[name]
        clip = self._clip_value(name)
        if clip:
            self.scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(opt)
        self._stepped = True
        self.num_updates[name] = self.num_updates.get(name, 0) + 1
        sched = self.schedulers.get(name)
        if sched is not None and self.sched_interval[name] == "step":
            if _is_timm_scheduler(sched):
                sched.step_update(self.num_updates[name])
            else:
                sched.step()

    def lrs(self) -> Dict[str, float]:
        out = {}
        for name, opt in self.optimizers.items():
            groups = opt.param_groups
            if len(groups) == 1 or len({g["lr"] for g in groups}) == 1:
                out[f"lr_{name}"] = groups[0]["lr"]
            else:
                out.update({f"lr_{name}_{i}": g["lr"] for i, g in enumerate(groups)})
        return out

    def autocast(self):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.ctx.device.type, dtype=self.amp_dtype)

    # -- checkpoints
    def state_dict(self) -> dict:
        ranks = self.ctx.all_gather_object({
            "rng": get_rng_state(),
            "rngs": {k: _rng_state(r) for k, r in self.rngs.items()},
            "rank_state": {k: v.state_dict() for k, v in self.rank_state.items()}})
        return {
            "format": self.FORMAT,
            "loop": {"epoch": self.epoch, "phase": self.phase_index, "phase_name": self.phase.name,
                     "batch_in_phase": self.batch_in_phase, "global_step": self.global_step,
                     "num_updates": dict(self.num_updates), "world_size": self.ctx.world_size,
                     "sums": dict(self._sums), "counts": dict(self._counts), "history": list(self.history)},
            "modules": {k: unwrap(m).state_dict() for k, m in self.modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "state": {k: v.state_dict() for k, v in self.state.items()},
            "ranks": ranks,
        }

    def save(self) -> None:
        """Checkpoint (a collective: every rank calls it); refuses to overwrite a good one after a NaN/inf."""
        self._check_finite(force=True)
        state = self.state_dict()
        if self.ctx.is_main:
            save_checkpoint(state, self.ckpt_path)
        self.ctx.barrier()

    @staticmethod
    def peek(ckpt_path: Union[str, os.PathLike], key: str, rank: int = 0) -> Any:
        """The saved `state[key]` (or `rank_state[key]` of `rank`) of a checkpoint, or None when there is none: what
        a method reads to rebuild modules before constructing the loop."""
        path = Path(ckpt_path)
        if not path.exists():
            return None
        ckpt = load_checkpoint(path)
        if key in ckpt.get("state", {}):
            return ckpt["state"][key]
        ranks = ckpt.get("ranks", [])
        return ranks[rank]["rank_state"].get(key) if rank < len(ranks) else None

    def _restore(self, ckpt: dict) -> None:
        if ckpt.get("format") != self.FORMAT:
            raise RunError(f"{self.ckpt_path}: not a checkpoint of this loop (format {ckpt.get('format')!r}, "
                           f"expected {self.FORMAT!r}); remove it to start over")
        loop = ckpt["loop"]
        if loop["world_size"] != self.ctx.world_size:
            raise RunError(f"{self.ckpt_path}: written by {loop['world_size']} process(es), resumed with "
                           f"{self.ctx.world_size}; resume with the same number of processes")
        mine = ckpt["ranks"][self.ctx.rank]
        for k, v in self.state.items():  # stage 1: method state
            v.load_state_dict(ckpt["state"][k])
        for k, v in self.rank_state.items():
            v.load_state_dict(mine["rank_state"][k])
        if self.build is not None:       # stage 2: modules built from it
            self.build(self)
            self._built = True
        for kind, target in (("modules", self.modules), ("optimizers", self.optimizers),
                             ("schedulers", self.schedulers)):  # stage 3: their weights
            saved = ckpt[kind]
            if set(saved) != set(target):
                raise RunError(f"{self.ckpt_path}: holds {kind} {sorted(saved)}, this run has {sorted(target)}")
            for k, obj in target.items():
                (unwrap(obj) if kind == "modules" else obj).load_state_dict(saved[k])
        if ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        for k, r in self.rngs.items():
            _set_rng(r, mine["rngs"][k])
        self.epoch, self.phase_index = loop["epoch"], loop["phase"]
        self.batch_in_phase, self.global_step = loop["batch_in_phase"], loop["global_step"]
        self.num_updates = dict(loop["num_updates"])
        self._sums, self._counts = dict(loop["sums"]), dict(loop["counts"])
        self.history = list(loop["history"])
        self._pending_rng = mine["rng"]

    def resume(self) -> bool:
        """Load the checkpoint if there is one (else run `build` for a fresh start); True when resuming."""
        self._started = True
        self._built = False
        if self.ckpt_path.exists():
            self._restore(load_checkpoint(self.ckpt_path))
            return True
        if self.build is not None:
            self.build(self)
        return False

    @property
    def finished(self) -> bool:
        return self.epoch >= self.epochs

    # -- the loop
    def _check_finite(self, force: bool = False) -> None:
        if self._bad is None or (not force and self.global_step % self.nan_check_every):
            return
        bad = self.ctx.all_reduce_sum(self._bad.float().reshape(1).to(self.ctx.device))
        self._bad = None
        if float(bad) > 0:
            epoch, phase, batch, step, value = self._bad_at or (self.epoch, self.phase.name, self.batch_in_phase,
                                                                 self.global_step, float("nan"))
            checked = "" if self.nan_check_every == 1 else f", found by the check every {self.nan_check_every} steps"
            raise NonFiniteLossError(
                f"{self.desc}: the loss became {value} at epoch {epoch}, batch {batch} of phase {phase!r} (step "
                f"{step}{checked}); stopping. The last good checkpoint "
                f"{self.ckpt_path} is kept; lower the learning rate or enable gradient clipping "
                "(engine.clip_grad) and resume.")

    def _note_loss(self, loss: torch.Tensor) -> None:
        finite = torch.isfinite(loss.detach()).all()
        if self.nan_check_every == 1:
            if not bool(finite) and self._bad_at is None:
                self._bad_at = (self.epoch, self.phase.name, self.batch_in_phase, self.global_step,
                                float(loss.detach().float().mean()))
        self._bad = ~finite if self._bad is None else (self._bad | ~finite)
        if self.nan_check_every == 1:
            self._check_finite(force=True)

    def _run_step(self, phase: Phase, batch) -> Dict[str, torch.Tensor]:
        self._stepped = False
        if phase.optimizer is not None:
            with self.autocast():
                out = phase.step(batch)
            loss, metrics = (out if isinstance(out, tuple) else (out, {}))
            self._note_loss(loss)
            self.zero_grad(phase.optimizer)
            self.backward(loss)
            self.step(phase.optimizer)
        else:
            metrics = dict(phase.step(batch))
            if "loss" not in metrics:
                raise RunError(f"{self.desc}: the step of phase {phase.name!r} returned no 'loss' "
                               f"(got {sorted(metrics)})")
            loss = metrics.pop("loss")
            self._note_loss(loss)
        if self._stepped:
            self.scaler.update()
        return {"loss": loss.detach(), **{k: v.detach() if isinstance(v, torch.Tensor) else v
                                          for k, v in metrics.items()}}

    def _epoch_record(self) -> dict:
        keys = sorted(self._sums)
        values = self.ctx.all_reduce_mean(torch.tensor([self._sums[k] for k in keys], dtype=torch.float64)) \
            if keys else torch.zeros(0)
        record = {"epoch": self.epoch + 1, "step": self.global_step}
        for k, v in zip(keys, values.tolist()):
            phase = k.split("/", 1)[0]
            record[k.replace("/", "_")] = v / max(1, self._counts.get(phase, 1))
        record.update(self.lrs())
        return record

    def run(self) -> List[Dict[str, float]]:
        """Train to the end (resuming first if a checkpoint exists); return the per-epoch history."""
        if not self._started:
            self.resume()
        while self.epoch < self.epochs:
            fresh_epoch = self.phase_index == 0 and self.batch_in_phase == 0
            if fresh_epoch:
                if self._pending_rng is not None:  # resumed at an epoch boundary: hooks draw what they drew
                    set_rng_state(self._pending_rng)
                    self._pending_rng = None
                for name, sched in self.schedulers.items():
                    if _is_timm_scheduler(sched):
                        sched.step(self.epoch)
                if self.on_epoch_start is not None:
                    self.on_epoch_start(self, self.epoch)
            while self.phase_index < len(self.phases):
                phase = self.phase
                if phase.active(self.epoch):
                    self._run_phase(phase)
                self.phase_index += 1
                self.batch_in_phase = 0
            self._finish_epoch()
        self._check_finite(force=True)
        return self.history

    def _run_phase(self, phase: Phase) -> None:
        made = phase.loader(self.epoch)
        loaders = made if isinstance(made, tuple) else (made,)
        total = min(len(ld) for ld in loaders)
        start = self.batch_in_phase
        iters = [_skip(ld, start, self.epoch, self.skip_batches) for ld in loaders]
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        if self.train_modules:
            for m in self.modules.values():
                m.train()
        batches = zip(*iters) if len(iters) > 1 else iters[0]
        label = f"{self.desc} {self.epoch + 1}/{self.epochs}" + (f" {phase.name}" if len(self.phases) > 1 else "")
        bar = progress(batches, self.ctx, total=total, initial=start, desc=label)
        for batch in bar:
            if self.batch_in_phase >= total:
                break
            metrics = self._run_step(phase, batch)
            self.batch_in_phase += 1
            self.global_step += 1
            if self.after_step is not None:
                self.after_step(self, phase.name)
            self._counts[phase.name] = self._counts.get(phase.name, 0) + 1
            for k, v in metrics.items():
                key = f"{phase.name}/{k}"
                self._sums[key] = self._sums.get(key, 0.0) + float(v)
            if hasattr(bar, "set_postfix") and self.global_step % 5 == 0:
                bar.set_postfix(loss=f"{float(metrics['loss']):.4g}")
            if self.ckpt_every and self.batch_in_phase % self.ckpt_every == 0 and self.batch_in_phase < total:
                self.save()
        if hasattr(bar, "close"):
            bar.close()
        self._check_finite(force=True)

    def _finish_epoch(self) -> None:
        record = self._epoch_record()
        for name, sched in self.schedulers.items():
            if not _is_timm_scheduler(sched) and self.sched_interval[name] == "epoch":
                sched.step()
        if self.eval_fn is not None and ((self.epoch + 1) % self.eval_every == 0 or self.epoch + 1 == self.epochs):
            record.update(self.eval_fn(self.epoch))
        if self.on_epoch_end is not None:
            self.on_epoch_end(self, self.epoch, record)
        self.history.append(record)
        if self.logger is not None:
            self.logger.log({"phase": self.desc, **record}, step=self.global_step, prefix=f"{self.desc}/")
        self.epoch += 1
        self.phase_index, self.batch_in_phase = 0, 0
        self._sums, self._counts = {}, {}
        self.save()


def TrainLoop(*, ctx: DistContext, ckpt_path, model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int,
              make_loader: Callable[[int], Iterable], step_fn: Callable, scheduler=None,
              state: Optional[Dict[str, Any]] = None, rng_extra: Optional[Dict[str, Any]] = None, amp: bool = False,
              clip_grad: Optional[float] = None, ckpt_every: int = 0, logger: Optional[RunLogger] = None,
              desc: str = "train", eval_fn=None, eval_every: int = 1,
              after_step: Optional[Callable[[int], None]] = None, skip_batches=None) -> Loop:
    """The common case: one model, one optimizer (+ scheduler), one automatic phase named 'train'."""
    loop = Loop(ctx=ctx, ckpt_path=ckpt_path, epochs=epochs, modules={"model": model},
                optimizers={"model": optimizer}, schedulers={"model": scheduler} if scheduler is not None else {},
                phases=[Phase("train", make_loader, step_fn, optimizer="model")], state=state, rngs=rng_extra,
                after_step=(lambda lp, _phase: after_step(lp.global_step)) if after_step is not None else None,
                amp=amp, clip_grad=clip_grad, ckpt_every=ckpt_every, logger=logger, desc=desc, eval_fn=eval_fn,
                eval_every=eval_every, skip_batches=skip_batches)
    loop.model = model
    return loop
