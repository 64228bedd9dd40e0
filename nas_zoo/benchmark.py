"""Throughput and peak memory of a model, measured the way timm's benchmark.py does it.

Method (timm benchmark.py, InferenceBenchmarkRunner / TrainBenchmarkRunner): a fixed random batch on the
device, `warmup` untimed steps, then `iters` timed steps; the device is synchronized before the clock is read,
so queued kernels are counted. Throughput = images / wall time of the timed loop; step time = mean of the
per-step times. Peak memory is the accelerator's allocator high-water mark over the timed loop (CPU: not
measured, reported as None).
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import torch
from timm.optim import create_optimizer_v2

__all__ = ["BenchResult", "benchmark", "synchronize", "prepare_model"]


@dataclass
class BenchResult:
    model: str
    mode: str                # 'infer' or 'train'
    batch_size: int
    img_size: int
    samples_per_sec: float
    step_ms: float
    peak_mem_mb: Optional[float]
    params_m: float
    device: str
    amp: str                 # '' or the autocast dtype
    channels_last: bool
    compiled: bool

    def row(self) -> dict:
        return asdict(self)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.memory.reset_peak_memory_stats(device)


def _peak_mb(device: torch.device) -> Optional[float]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    if device.type != "cpu" and hasattr(torch, "accelerator"):
        return torch.accelerator.memory.max_memory_allocated(device) / 2 ** 20
    return None


def prepare_model(model: torch.nn.Module, device, channels_last: bool = False, compile: bool = False,
                  train: bool = False) -> torch.nn.Module:
    model = model.to(device).train(train)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model


def benchmark(model: torch.nn.Module, name: str, input_size: Sequence[int], batch_size: int = 32,
              device="cpu", amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
              compile: bool = False, train: bool = False, warmup: int = 10, iters: int = 40,
              num_classes: Optional[int] = None) -> BenchResult:
    """Benchmark one model (inference, or a full train step: SGD, cross-entropy on random targets when `train`)."""
    device = torch.device(device)
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    model = prepare_model(model, device, channels_last, compile, train)
    x = torch.randn((batch_size, *input_size), device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                else nullcontext())
    if train:
        step = _train_step(model, x, autocast, num_classes or getattr(model, "num_classes", 1000), device)
    else:
        def step():
            with torch.no_grad(), autocast:
                model(x)

    def timed_step() -> float:
        start = time.perf_counter()
        step()
        synchronize(device)
        return time.perf_counter() - start

    for _ in range(warmup):
        timed_step()
    synchronize(device)
    _reset_peak(device)
    total_step = 0.0
    start = time.perf_counter()
    for _ in range(iters):
        total_step += timed_step()
    synchronize(device)
    elapsed = time.perf_counter() - start
    return BenchResult(model=name, mode="train" if train else "infer", batch_size=batch_size,
                       img_size=int(input_size[-1]), samples_per_sec=batch_size * iters / elapsed,
                       step_ms=1000 * total_step / iters, peak_mem_mb=_peak_mb(device), params_m=params_m,
                       device=str(device), amp=str(amp_dtype).replace("torch.", "") if amp_dtype else "",
                       channels_last=channels_last, compiled=compile)


def _train_step(model, x, autocast, num_classes: int, device) -> Callable[[], None]:
    target = torch.randint(0, num_classes, (x.shape[0],), device=device)
    loss_fn = torch.nn.CrossEntropyLoss()
    optimizer = create_optimizer_v2(model, opt="sgd", lr=1e-4)  # as timm's benchmark.py
    scaler = torch.amp.GradScaler(device.type, enabled=getattr(autocast, "fast_dtype", None) == torch.float16)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = loss_fn(model(x), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return step
