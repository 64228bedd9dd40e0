"""Cost models for architecture search: parameters, MACs and latency, per whole model or per candidate op.

Whole models: `count_params` and `count_macs` (from `nas_zoo.cost`: `torch.utils.flop_counter` on the meta
device, MACs = conv + matmul multiply-accumulates).

Layer-wise search spaces (DNA, SPOS, Cream, ...): describe each searched layer by its candidate ops and its input
size (`ChoiceLayer`), measure every op once (`measure_cost_tables`), and price any candidate by table lookup
(`CostTable`): millions of candidates per second, none of them built. For MACs and parameters the lookup is exact:
a child network costs ``fixed + sum of its ops``, because every op's cost depends only on its input shape.
Latency tables sum standalone op timings measured on the current device, the usual lookup-table estimate.

A table is saved as JSON::

    {"stages": [[[cost per op] per layer] per stage], "fixed": cost outside the searched layers, "unit": "MACs"}

Other top-level keys (``meta``, ``image_size``, ...) are information for people and are kept as they are.

A stage may instead map depths to their own rows (``{"3": [[...], [...], [...]], "4": [...]}``) when a depth-d
candidate does not simply cost the first d rows.
"""
from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from nas_zoo.cost import _to_meta, count_macs, count_params
from nas_zoo.errors import NasZooError

__all__ = ["CostTable", "CostTableError", "ChoiceLayer", "FixedPart", "OpSpec", "count_params", "count_macs",
           "measure_cost_tables", "measure_op", "chain_layers", "fixed_parts", "timm_block", "METRICS", "UNITS",
           "Budget", "unit_factor", "format_cost", "check_budget"]

METRICS = ("macs", "params", "latency")
UNITS = {"macs": "MACs", "params": "parameters", "latency": "ms"}
TABLE_KEYS = ("stages", "fixed", "unit", "meta")


class CostTableError(NasZooError):
    """A malformed cost table. The message names the source and the field."""


# --------------------------------------------------------------------------------------------------------------
# Cost tables


def _cost_value(value: Any, source: str, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise CostTableError(source, path, f"expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise CostTableError(source, path, f"expected a finite cost >= 0, got {value!r}")
    return value


def _layer_rows(rows: Any, source: str, path: str) -> Tuple[np.ndarray, np.ndarray]:
    """(costs padded with NaN to (layers, max ops), ops per layer) of one stage's `[[cost per op] per layer]`."""
    if not isinstance(rows, (list, tuple)) or not rows:
        raise CostTableError(source, path, "expected a non-empty list of layers, each a list of op costs")
    values = []
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple, np.ndarray)) or len(row) == 0:
            raise CostTableError(source, f"{path}[{i}]", f"expected a non-empty list of op costs, got {row!r}")
        values.append([_cost_value(v, source, f"{path}[{i}][{j}]") for j, v in enumerate(row)])
    num_ops = np.array([len(v) for v in values])
    table = np.full((len(values), num_ops.max()), np.nan)
    for i, v in enumerate(values):
        table[i, :len(v)] = v
    return table, num_ops


@dataclass
class CostTable:
    """Per-op costs of a layer-wise search space plus the fixed cost of everything else.

    ``stages[s]`` is ``[[cost per op] per layer]``; a depth-d candidate of stage s costs its ops in the first d
    rows (the official DNA convention). ``stages[s]`` may also be ``{depth: [[cost per op] per layer]}`` to give
    each depth its own rows. Layers may have different numbers of ops.
    """

    stages: List[Any]
    fixed: float = 0.0
    unit: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)
    extra: Dict[str, Any] = field(default_factory=dict)  # other top-level keys of the file, kept as they are
    source: str = field(default="", compare=False, repr=False)

    def __post_init__(self):
        src = self.source
        if not isinstance(self.stages, (list, tuple)) or not self.stages:
            raise CostTableError(src, "stages", "expected a non-empty list of stages, each [[cost per op] per layer]")
        self.fixed = _cost_value(self.fixed, src, "fixed")
        if not isinstance(self.unit, str):
            raise CostTableError(src, "unit", f"expected a string such as 'MACs', got {self.unit!r}")
        if not isinstance(self.meta, Mapping):
            raise CostTableError(src, "meta", f"expected a mapping, got {self.meta!r}")
        self._rows: List[Union[Tuple[np.ndarray, np.ndarray], Dict[int, Tuple[np.ndarray, np.ndarray]]]] = []
        for s, stage in enumerate(self.stages):
            if isinstance(stage, Mapping):
                if not stage:
                    raise CostTableError(src, f"stages[{s}]", "expected at least one depth")
                by_depth = {}
                for key, rows in stage.items():
                    try:
                        depth = int(key)
                    except (TypeError, ValueError):
                        depth = 0
                    if depth < 1 or str(depth) != str(key).strip():
                        raise CostTableError(src, f"stages[{s}]",
                                             f"depth keys must be positive integers, got {key!r}")
                    table, num_ops = _layer_rows(rows, src, f"stages[{s}][{key!r}]")
                    if len(table) != depth:
                        raise CostTableError(src, f"stages[{s}][{key!r}]",
                                             f"depth {depth} needs {depth} layer rows, got {len(table)}")
                    by_depth[depth] = (table, num_ops)
                self._rows.append(by_depth)
            else:
                self._rows.append(_layer_rows(stage, src, f"stages[{s}]"))

    # ---- I/O

    @classmethod
    def from_dict(cls, data: Any, source: str = "") -> "CostTable":
        if not isinstance(data, Mapping):
            raise CostTableError(source, "<top level>",
                                 'expected a JSON object {"stages": [[[cost per op] per layer] per stage], '
                                 '"fixed": cost}')
        for key in ("stages", "fixed"):
            if key not in data:
                raise CostTableError(source, key, "missing (required keys: stages, fixed)")
        return cls(stages=data["stages"], fixed=data["fixed"], unit=data.get("unit", ""),
                   meta=dict(data.get("meta") or {}), extra={k: v for k, v in data.items() if k not in TABLE_KEYS},
                   source=source)

    @classmethod
    def from_json(cls, path: Union[str, Path]) -> "CostTable":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise CostTableError(str(path), "<file>", f"cannot read the cost table: {e.strerror or e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise CostTableError(str(path), "<file>", f"not valid JSON ({e})") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"stages": _plain(self.stages), "fixed": _plain(self.fixed)}
        if self.unit:
            out["unit"] = self.unit
        if self.meta:
            out["meta"] = _plain(self.meta)
        out.update((k, v) for k, v in self.extra.items() if k not in out)
        return out

    def save(self, path: Union[str, Path]) -> Path:
        """Write the table as JSON (atomically: a temporary file, then a rename)."""
        from nas_zoo.io import atomic_write_text
        return atomic_write_text(path, json.dumps(self.to_dict()) + "\n")

    # ---- lookups

    @property
    def num_stages(self) -> int:
        return len(self._rows)

    def depths(self, stage: int) -> Optional[List[int]]:
        """The depths stage `stage` defines explicitly, or None when any depth up to its row count is allowed."""
        rows = self._rows[stage]
        return sorted(rows) if isinstance(rows, dict) else None

    def max_depth(self, stage: int) -> int:
        rows = self._rows[stage]
        return max(rows) if isinstance(rows, dict) else len(rows[0])

    def layer_costs(self, stage: int, depth: int) -> Tuple[np.ndarray, np.ndarray]:
        """(costs (depth, max ops) padded with NaN, ops per layer) that price a depth-`depth` candidate of `stage`."""
        if not 0 <= stage < self.num_stages:
            raise CostTableError(self.source, "stages", f"has {self.num_stages} stages; no stage {stage}")
        rows = self._rows[stage]
        if isinstance(rows, dict):
            if depth not in rows:
                raise CostTableError(self.source, f"stages[{stage}]",
                                     f"defines depths {sorted(rows)}; no rows for depth {depth}")
            return rows[depth]
        table, num_ops = rows
        if not 1 <= depth <= len(table):
            raise CostTableError(self.source, f"stages[{stage}]",
                                 f"has {len(table)} layer rows; cannot price a candidate of depth {depth}")
        return table[:depth], num_ops[:depth]

    def candidate_costs(self, stage: int, ops: np.ndarray) -> np.ndarray:
        """Cost of each row of `ops` (shape (n, depth): op index per layer) in stage `stage`, summed layer by layer."""
        ops = np.asarray(ops)
        if ops.ndim != 2:
            raise ValueError(f"ops must have shape (candidates, layers), got {ops.shape}")
        table, num_ops = self.layer_costs(stage, ops.shape[1])
        _check_ops(ops, num_ops, f"stage {stage}", self.source, f"stages[{stage}]")
        cost = np.zeros(len(ops))
        for layer in range(ops.shape[1]):
            cost = cost + table[layer, ops[:, layer]]
        return cost

    def price(self, arch: Sequence[Sequence[int]]) -> float:
        """Cost of one architecture: ``fixed`` plus, stage by stage, the summed costs of its ops."""
        if len(arch) != self.num_stages:
            raise ValueError(f"the architecture has {len(arch)} stages; the cost table has {self.num_stages}")
        total = self.fixed
        for s, ops in enumerate(arch):
            total = total + float(self.candidate_costs(s, np.asarray([list(ops)], dtype=np.int64))[0])
        return total

    def price_batch(self, ops: np.ndarray) -> np.ndarray:
        """Costs of many architectures at once: `ops` has shape (N, total layers), every stage at full depth."""
        ops = np.asarray(ops)
        layers = [self.layer_costs(s, self.max_depth(s)) for s in range(self.num_stages)]
        width = max(t.shape[1] for t, _ in layers)
        table = np.concatenate([np.pad(t, ((0, 0), (0, width - t.shape[1])), constant_values=np.nan)
                                for t, _ in layers])
        num_ops = np.concatenate([n for _, n in layers])
        if ops.ndim != 2 or ops.shape[1] != len(table):
            raise ValueError(f"ops must have shape (N, {len(table)}), got {ops.shape}")
        _check_ops(ops, num_ops, "the architectures", self.source, "stages")
        # stage by stage, as `price` adds them, so both give bit-identical totals
        total = np.full(len(ops), self.fixed)
        start = 0
        for t, _ in layers:
            stage_cost = np.zeros(len(ops))
            for layer in range(start, start + len(t)):
                stage_cost = stage_cost + table[layer, ops[:, layer]]
            total = total + stage_cost
            start += len(t)
        return total


def _check_ops(ops: np.ndarray, num_ops: np.ndarray, what: str, source: str, path: str) -> None:
    if ops.size and (ops.min() < 0 or (ops >= num_ops[None, :]).any()):
        bad = np.argwhere((ops < 0) | (ops >= num_ops[None, :]))[0]
        raise CostTableError(source, path, f"{what}: op index {int(ops[tuple(bad)])} at layer {int(bad[1])} is out "
                                           f"of range; that layer has {int(num_ops[bad[1]])} ops")


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays to Python, integral floats to int (tables of MACs stay readable)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return int(value) if value.is_integer() and abs(value) < 2 ** 53 else value
    return value


# --------------------------------------------------------------------------------------------------------------
# Measuring ops

OpSpec = Union[str, Callable[[], nn.Module]]  # a timm block string or a module factory


@dataclass(frozen=True)
class ChoiceLayer:
    """One searched layer: its candidate ops and the size of its input (without the batch dimension).

    An op is a timm block string such as ``'ir_r1_k3_s2_e6_c24_se0.25'`` (built with this layer's input
    channels) or a zero-argument factory returning an ``nn.Module``.
    """

    ops: Tuple[OpSpec, ...]
    input_size: Tuple[int, ...]

    def __init__(self, ops: Sequence[OpSpec], input_size: Sequence[int]):
        if not ops:
            raise ValueError("a choice layer needs at least one op")
        object.__setattr__(self, "ops", tuple(ops))
        object.__setattr__(self, "input_size", tuple(int(s) for s in input_size))


@dataclass(frozen=True)
class FixedPart:
    """A part of the network outside the searched layers (stem, fixed stages, head) and its input size."""

    module: Union[nn.Module, Callable[[], nn.Module]]
    input_size: Tuple[int, ...]


def timm_block(block_str: str, in_chs: int, *, act_layer: str = "swish", bn_eps: float = 1e-5,
               se_layer: Optional[Mapping] = None, se_from_exp: bool = False, pad_type: str = "",
               channel_multiplier: float = 1.0, device: Any = None) -> nn.Module:
    """One timm EfficientNet block from its string, by the `efficientnet` family's own builder."""
    from nas_zoo.families.efficientnet import build_block

    arch = {"model": "mobilenetv3" if se_from_exp else "efficientnet", "block_args": [[block_str]],
            "stem_size": in_chs, "num_features": 0, "act_layer": act_layer, "bn_eps": bn_eps, "pad_type": pad_type,
            "channel_multiplier": channel_multiplier}
    if se_layer is not None:
        arch["se_layer"] = dict(se_layer)
    try:
        return build_block(arch, block_str, in_chs, device=device)
    except ValueError:
        raise
    except Exception as e:  # timm raises assorted errors for malformed strings
        raise ValueError(f"not a valid timm block string {block_str!r} ({type(e).__name__}: {e})") from None


def _build(op: OpSpec, input_size: Tuple[int, ...], device: Any, block_kwargs: Mapping):
    if isinstance(op, str):
        return timm_block(op, input_size[0], device=device, **block_kwargs)
    if isinstance(op, torch.nn.Module):  # measured on a copy: the caller's module stays where it is
        return _meta_copy(op) if torch.device(device).type == "meta" else copy.deepcopy(op).to(device)
    if callable(op):
        with torch.device(device):
            module = op()
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"op factory {op!r} returned {type(module).__name__}, expected an nn.Module")
        return module
    raise TypeError(f"an op is a timm block string or a factory returning an nn.Module, got {op!r}")


def measure_latency(module: nn.Module, input_size: Sequence[int], device: Any = "cpu",
                    batch_size: int = 1, min_run_time: float = 0.2) -> float:
    """Median forward time in milliseconds (eval mode, no autograd) on `device`, after a warm-up."""
    from torch.utils.benchmark import Timer

    module = module.to(device).eval()
    x = torch.randn((batch_size, *input_size), device=device)
    with torch.inference_mode():
        for _ in range(3):  # warm-up: allocator, cuDNN algorithm choice, lazy init
            module(x)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        # Timer synchronises CUDA around each measured block
        timer = Timer(stmt="module(x)", globals={"module": module, "x": x}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def measure_op(op: OpSpec, input_size: Sequence[int], metrics: Sequence[str] = ("macs", "params"), *,
               device: Any = "cpu", batch_size: int = 1, min_run_time: float = 0.2,
               block_kwargs: Optional[Mapping] = None) -> Dict[str, float]:
    """Cost of one op on an input of `input_size` (no batch dimension). MACs and params are counted on the meta
    device (nothing allocated); latency runs the op on `device`."""
    _check_metrics(metrics)
    input_size = tuple(int(s) for s in input_size)
    block_kwargs = dict(block_kwargs or {})
    out: Dict[str, float] = {}
    if "macs" in metrics or "params" in metrics:
        module = _build(op, input_size, "meta", block_kwargs)
        if "macs" in metrics:
            out["macs"] = count_macs(module, input_size)
        if "params" in metrics:
            out["params"] = count_params(module)
    if "latency" in metrics:
        module = _build(op, input_size, device, block_kwargs)
        out["latency"] = measure_latency(module, input_size, device, batch_size, min_run_time)
    return out


def _meta_copy(module: nn.Module) -> nn.Module:
    return _to_meta(module)  # a structural copy on the meta device (the module itself if already there)


def _check_metrics(metrics: Sequence[str]) -> None:
    if isinstance(metrics, str) or not metrics:
        raise ValueError(f"metrics must be a non-empty list drawn from {METRICS}, got {metrics!r}")
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown cost metric {m!r}; expected one of {', '.join(METRICS)}")


def _output_size(op: OpSpec, input_size: Tuple[int, ...], block_kwargs: Mapping) -> Tuple[int, ...]:
    module = _build(op, input_size, "meta", block_kwargs).eval()
    with torch.no_grad():
        y = module(torch.zeros((1, *input_size), device="meta"))
    return tuple(y.shape[1:])


def chain_layers(stages: Sequence[Sequence[Sequence[OpSpec]]], input_size: Sequence[int], *,
                 block_kwargs: Optional[Mapping] = None) -> List[List[ChoiceLayer]]:
    """Choice layers of a chain of stages (`stages[s][l]` = candidate ops of layer l of stage s), each layer's
    input size inferred from the previous layer's output on the meta device. Every op of a layer must produce the
    same output size, as in any layer-wise space."""
    block_kwargs = dict(block_kwargs or {})
    size = tuple(int(s) for s in input_size)
    out: List[List[ChoiceLayer]] = []
    for s, stage in enumerate(stages):
        layers = []
        for l, ops in enumerate(stage):
            layer = ChoiceLayer(ops, size)
            sizes = {_output_size(op, size, block_kwargs) for op in layer.ops}
            if len(sizes) != 1:
                raise ValueError(f"stage {s} layer {l}: the ops produce different output sizes {sorted(sizes)}; "
                                 "every op of a choice layer must produce the same size")
            layers.append(layer)
            size = sizes.pop()
        out.append(layers)
    return out


def fixed_parts(model: nn.Module, input_size: Sequence[int], names: Sequence[str]) -> List[FixedPart]:
    """The named submodules of `model` (e.g. ``['conv_stem', 'bn1', 'blocks.0', 'conv_head', 'bn2',
    'global_pool', 'classifier']``) with the input sizes they see in one forward pass (traced on the meta device)."""
    meta = _meta_copy(model).eval()
    modules = dict(meta.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"the model has no submodule {missing[0]!r}")
    sizes: Dict[str, Tuple[int, ...]] = {}

    def record(name):
        def hook(module, args):
            sizes.setdefault(name, tuple(args[0].shape[1:]))  # first call; returns None: inputs unchanged
        return hook

    hooks = [modules[n].register_forward_pre_hook(record(n)) for n in names]
    try:
        with torch.no_grad():
            meta(torch.zeros((1, *input_size), device="meta"))
    finally:
        for h in hooks:
            h.remove()
    real = dict(model.named_modules())
    never = [n for n in names if n not in sizes]
    if never:
        raise ValueError(f"submodule {never[0]!r} is not called in the forward pass")
    return [FixedPart(real[n], sizes[n]) for n in names]


def measure_cost_tables(stages: Sequence[Sequence[ChoiceLayer]], metrics: Sequence[str] = ("macs", "params"), *,
                        fixed: Union[Sequence[FixedPart], Mapping[str, float], None] = None,
                        device: Any = "cpu", batch_size: int = 1, min_run_time: float = 0.2,
                        block_kwargs: Optional[Mapping] = None, progress: bool = False) -> Dict[str, CostTable]:
    """One `CostTable` per metric for a layer-wise space: every distinct (op, input size) is measured once.

    `fixed` is the rest of the network, as `FixedPart`s to measure (see `fixed_parts`) or as a number per metric.
    """
    _check_metrics(metrics)
    block_kwargs = dict(block_kwargs or {})
    device = torch.device(device)
    metas = {"macs": {"counter": "torch.utils.flop_counter (conv + matmul MACs per image)"},
             "params": {},
             "latency": {"device": _device_name(device), "batch_size": batch_size, "torch": torch.__version__,
                         "estimate": "sum of standalone op medians (torch.utils.benchmark)"}}
    if device.type == "cpu":
        metas["latency"]["num_threads"] = torch.get_num_threads()
    cache: Dict[Any, Dict[str, float]] = {}

    def cost_of(op, size):
        key = (op if isinstance(op, str) else id(op), size)
        if key not in cache:
            cache[key] = measure_op(op, size, metrics, device=device, batch_size=batch_size,
                                    min_run_time=min_run_time, block_kwargs=block_kwargs)
        return cache[key]

    layers = [(s, l, layer) for s, stage in enumerate(stages) for l, layer in enumerate(stage)]
    if progress:
        from tqdm import tqdm
        layers = tqdm(layers, desc="measuring ops", unit="layer")
    rows = {m: [[None] * len(stage) for stage in stages] for m in metrics}
    for s, l, layer in layers:
        costs = [cost_of(op, layer.input_size) for op in layer.ops]
        for m in metrics:
            rows[m][s][l] = [c[m] for c in costs]

    fixed_cost = {m: 0.0 for m in metrics}
    if isinstance(fixed, Mapping):
        for m in metrics:
            if m not in fixed:
                raise ValueError(f"fixed costs given for {sorted(fixed)} but not for {m!r}")
            fixed_cost[m] = fixed[m]
    elif fixed is not None:
        for part in fixed:
            c = measure_op(part.module, part.input_size, metrics, device=device, batch_size=batch_size,
                           min_run_time=min_run_time, block_kwargs=block_kwargs)
            for m in metrics:
                fixed_cost[m] = fixed_cost[m] + c[m]
    return {m: CostTable(stages=rows[m], fixed=fixed_cost[m], unit=UNITS[m], meta=dict(metas[m], metric=m))
            for m in metrics}


def _device_name(device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    import platform
    return f"cpu: {platform.processor() or platform.machine()}"


# --------------------------------------------------------------------------------------------------------------
# Budgets: a number with its unit, the same in configs, on the command line and in tables

_UNITS = {  # unit -> (metric, factor to the metric's base unit: MACs, parameters, ms)
    "macs": ("macs", 1.0), "kmacs": ("macs", 1e3), "kmac": ("macs", 1e3), "mmacs": ("macs", 1e6),
    "mmac": ("macs", 1e6), "gmacs": ("macs", 1e9), "gmac": ("macs", 1e9),
    "params": ("params", 1.0), "parameters": ("params", 1.0), "kparams": ("params", 1e3),
    "mparams": ("params", 1e6), "ms": ("latency", 1.0), "s": ("latency", 1e3), "us": ("latency", 1e-3),
}
_BUDGET_RE = re.compile(r"^\s*([0-9.eE+-]+)\s*([A-Za-z][A-Za-z ]*?)\s*$")


def _unit_key(unit: str) -> str:
    return unit.replace(" ", "").lower()


def unit_factor(unit: str) -> Tuple[str, float]:
    """(metric, factor to the base unit) of a unit name such as 'MMACs', 'M params', 'ms' or a cost table's unit
    ('MACs', 'parameters', 'KMac (official ...)': its first word)."""
    key = _unit_key(unit.split("(")[0])
    if key not in _UNITS:
        raise ValueError(f"unknown unit {unit!r}; expected one of MACs, KMACs, MMACs, GMACs, params, K params, "
                         "M params, ms")
    return _UNITS[key]


@dataclass(frozen=True)
class Budget:
    """A cost limit with its unit: ``Budget.parse('6 MMACs')``, ``'3.4 M params'``, ``'12 ms'``."""

    metric: str      # macs | params | latency
    value: float     # in the metric's base unit (MACs, parameters, ms)
    text: str = ""   # as written

    @classmethod
    def parse(cls, text: Any, source: str = "<budget>", key: str = "budget") -> "Budget":
        from .config import ConfigError
        m = _BUDGET_RE.match(str(text)) if isinstance(text, str) else None
        if m is None:
            raise ConfigError(source, key, f"expected a number with its unit, e.g. '6 MMACs', '3.4 M params' or "
                                           f"'12 ms', got {text!r}")
        try:
            number = float(m.group(1))
            metric, factor = unit_factor(m.group(2))
        except ValueError as e:
            raise ConfigError(source, key, f"{text!r}: {e}") from None
        if not math.isfinite(number) or number <= 0:
            raise ConfigError(source, key, f"expected a number > 0 with its unit, got {text!r}")
        return cls(metric, number * factor, str(text).strip())

    def in_unit(self, unit: str) -> float:
        """The budget expressed in `unit` (e.g. a cost table's own unit)."""
        metric, factor = unit_factor(unit)
        if metric != self.metric:
            raise ValueError(f"the budget {self} limits {self.metric}, the cost table counts {metric} ({unit})")
        return self.value / factor

    def __str__(self) -> str:
        return self.text or format_cost(self.value, self.metric)


DISPLAY_UNITS = {"macs": (1e6, "MMACs"), "params": (1e6, "M params"), "latency": (1.0, "ms")}


def format_cost(value: float, metric: str) -> str:
    """A cost in the unit people read: MMACs, M params, ms."""
    if metric == "macs":
        return f"{value / 1e6:.4g} MMACs"
    if metric == "params":
        return f"{value / 1e6:.4g} M params"
    return f"{value:.4g} ms"


def check_budget(budget: Budget, lo: float, hi: float, source: str, key: str = "search.budget") -> None:
    """A budget no architecture of the space fits fails here, before any training."""
    from .config import ConfigError
    if budget.value < lo:
        raise ConfigError(source, key, f"{budget} ({budget.metric}) is below the cheapest architecture of the "
                                       f"space ({format_cost(lo, budget.metric)}; the most expensive costs "
                                       f"{format_cost(hi, budget.metric)}): no architecture fits")
