"""DNA's constrained architecture selection: the exact optimum over per-stage potentials under a cost budget.

DNA rates every candidate of every stage by its distillation loss (the "architecture potential") and then picks
one candidate per stage so that the summed potential is minimal and the total cost stays within a budget. That is
a multiple-choice knapsack. The official ``process_potential.py`` walks it with a pruned best-first traversal that
can miss the optimum; this module solves it exactly:

1. per stage, keep the Pareto front of its candidates' (cost, potential): a candidate that costs at least as much
   as another and scores no better can never be part of a better answer;
2. combine the stages one by one: all sums of the front so far with the next stage's front, drop the sums that
   cannot be completed within the budget even by the cheapest rest, keep the Pareto front of the rest;
3. the answer is the lowest-potential point of the last front.

Floating-point sums are formed in the same order as a brute force would form them (stage by stage), and rounded
addition is monotone, so dominance and the budget test are exact for the floats themselves, not only for reals.

Files: the official potential YAML (``potential-<stage>.yaml``: metric -> list over
``itertools.product(range(6), repeat=L)``) and our own format (see `save_potentials` and docs/dna_select.md).
Costs: a `nas_zoo.search.cost.CostTable` (``--cost-table FILE.json`` or the search run's ``cost-<metric>.json``).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import yaml

from nas_zoo.errors import NasZooError
from ..cost import Budget, CostTable, CostTableError, UNITS

__all__ = ["StagePotentials", "Selection", "pareto_front", "CostTable", "CostTableError", "PotentialFileError",
           "InfeasibleBudgetError", "load_potentials", "load_potential_file", "save_potentials", "select", "main",
           "PRIMITIVES", "OFFICIAL_NUM_OPS"]

# op order of the official supernet (searching/process_potential.py, dna/student_supernet.py)
PRIMITIVES = ("MB6_3x3_se0.25", "MB6_5x5_se0.25", "MB6_7x7_se0.25", "MB3_3x3_se0.25", "MB3_5x5_se0.25",
              "MB3_7x7_se0.25")
OFFICIAL_NUM_OPS = len(PRIMITIVES)
OUR_KEYS = ("stage", "depth", "primitives", "candidates", "meta")
NOT_A_LOSS = {"top_index": "a ranking, not a metric", "prec1": "an accuracy (higher is better; the official code "
                                                                 "writes 0)"}
PathLike = Union[str, Path]


class PotentialFileError(NasZooError):
    """A malformed or inconsistent potential file. The message names the file and the field."""


class InfeasibleBudgetError(NasZooError):
    """No architecture fits the budget."""

    def __init__(self, budget: float, minimum: float, unit: str = "", shown: str = ""):
        self.budget, self.minimum = budget, minimum
        unit = f"; unit: {unit}" if unit else ""
        shown = f" ({shown})" if shown else ""
        super().__init__(f"no architecture fits the budget {_fmt(budget)}{shown}: the cheapest one costs "
                         f"{_fmt(minimum)} (fixed part plus the cheapest candidate of every stage{unit})")


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.6g}"


@dataclass
class StagePotentials:
    """The evaluated candidates of one stage at one depth.

    ``ops[i]`` (shape (n, depth)) is candidate i's op index per layer; ``metrics[name][i]`` its potentials.
    """

    stage: int
    depth: int
    ops: np.ndarray
    metrics: Dict[str, np.ndarray]
    source: str = "<memory>"
    primitives: Optional[List[str]] = None

    def __post_init__(self):
        self.ops = np.asarray(self.ops, dtype=np.int64)
        if self.ops.ndim != 2 or self.ops.shape[1] != self.depth:
            raise PotentialFileError(self.source, "ops", f"expected shape (candidates, {self.depth}), "
                                                         f"got {self.ops.shape}")
        self.metrics = {k: np.asarray(v, dtype=np.float64) for k, v in self.metrics.items()}
        for k, v in self.metrics.items():
            if v.shape != (len(self.ops),):
                raise PotentialFileError(self.source, k, f"has {v.size} values for {len(self.ops)} candidates")

    def __len__(self) -> int:
        return len(self.ops)

    def metric(self, name: str) -> np.ndarray:
        """The values of metric `name`, checked to be usable as a potential (finite, not all zero)."""
        if name in NOT_A_LOSS:
            raise PotentialFileError(self.source, name, f"is {NOT_A_LOSS[name]}; choose a loss: "
                                                        f"{', '.join(self._losses())}")
        if name not in self.metrics:
            raise PotentialFileError(self.source, name, f"missing; the file has {', '.join(self._losses()) or 'none'}")
        values = self.metrics[name]
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise PotentialFileError(self.source, f"{name}[{bad[0]}]", f"expected a finite number, got {values[bad[0]]}")
        if values.size > 1 and not values.any():
            raise PotentialFileError(
                self.source, name, "every value is 0: the official single-process evaluation does not accumulate "
                                   "cl_loss/gr_loss/rela_loss (only the distributed one does); choose another "
                                   "metric such as 'loss'")
        return values

    def _losses(self) -> List[str]:
        return sorted(k for k in self.metrics if k not in NOT_A_LOSS)

    def save(self, path: PathLike) -> Path:
        return save_potentials(path, self)


@dataclass
class Selection:
    """The chosen architecture: op indices per stage, its summed potential and its total cost (fixed part included)."""

    stages: List[List[int]]
    score: float
    cost: float
    fronts: List[int] = field(default_factory=list, repr=False, compare=False)  # front sizes, for diagnostics

    def to_json(self) -> str:
        return json.dumps({"stages": self.stages, "score": self.score, "cost": self.cost})


# --------------------------------------------------------------------------------------------------------------
# Reading potential files

_STAGE_FROM_NAME = re.compile(r"^potential-(\d+)\.ya?ml$")
# Fast paths for exactly what the writers emit: the official files (yaml.safe_dump of a mapping of number lists,
# block style) and ours (save_potentials: one flow mapping per candidate line). Numbers are restricted to forms on
# which YAML 1.1 and Python agree (ints without leading zeros, floats with a dot); any other text goes through the
# YAML parser, which gives the same values, only slower (seconds for the README's 46,656 candidates per stage).
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_INT = r"(?:0|[1-9][0-9]*)"
_NUM = rf"-?(?:{_INT}|[0-9]+\.[0-9]*(?:[eE][-+][0-9]+)?)"
_HEADER = re.compile(rf"^({_NAME}):\n", re.M)
_NUMBER_LINES = re.compile(rf"(?:- {_NUM}\n)+")
_CANDIDATE_LINE = re.compile(rf"- \{{ops: \[({_INT}(?:, {_INT})*)\]((?:, {_NAME}: {_NUM})+)\}}\n")


def _fast_number_lists(text: str) -> Optional[Dict[str, np.ndarray]]:
    """The official layout: {metric: float array}, or None when the text is not in exactly that form."""
    heads = list(_HEADER.finditer(text))
    if not heads or heads[0].start() != 0:
        return None
    out: Dict[str, np.ndarray] = {}
    for i, head in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[head.end():end]
        if head.group(1) in out or not _NUMBER_LINES.fullmatch(body):
            return None
        out[head.group(1)] = np.array(body.split()[1::2], dtype=np.float64)
    return out


def _fast_candidates(text: str) -> Optional[Tuple[dict, np.ndarray, Dict[str, np.ndarray]]]:
    """Our layout: (header mapping, ops (n, depth), {metric: values}), or None when not in exactly that form."""
    head, sep, body = text.partition("\ncandidates:\n")
    if not sep:
        return None
    try:
        header = _yaml_load(head + "\n")
    except yaml.YAMLError:
        return None
    depth = header.get("depth") if isinstance(header, dict) else None
    if "candidates" in header or not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        return None
    ops_text, metric_text, pos = [], [], 0
    while pos < len(body):
        m = _CANDIDATE_LINE.match(body, pos)
        if m is None:
            return None
        ops_text.append(m.group(1))
        metric_text.append(m.group(2))
        pos = m.end()
    n = len(ops_text)
    if not n or any(t.count(",") != depth - 1 for t in ops_text):
        return None
    tokens = " ".join(metric_text).replace(",", " ").split()  # name: value name: value ...
    k = metric_text[0].count(":")
    names = np.array(tokens[0::2])
    if len(names) != n * k:
        return None
    names = names.reshape(n, k)
    keys = [name[:-1] for name in names[0]]
    if len(set(keys)) != k or not (names == names[0]).all():
        return None
    values = np.array(tokens[1::2], dtype=np.float64).reshape(n, k)
    ops = np.array(" ".join(ops_text).replace(",", " ").split(), dtype=np.int64).reshape(n, depth)
    return header, ops, {key: values[:, j] for j, key in enumerate(keys)}


def _yaml_load(text: str) -> Any:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: same results, faster
    return yaml.load(text, Loader=loader)


def _read(path: Path) -> Tuple[Any, Any]:
    """(parsed content, fast-path arrays or None). With arrays, content is the header of our format
    (ops and metrics in the arrays) or the official {metric: float array} mapping itself."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PotentialFileError(str(path), "", "no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PotentialFileError(str(path), "", f"cannot read it ({e})") from None
    official = _fast_number_lists(text)
    if official is not None:
        return official, official
    ours = _fast_candidates(text)
    if ours is not None:
        header, ops, metrics = ours
        return dict(header, candidates=None), (ops, metrics)
    try:
        return _yaml_load(text), None
    except yaml.YAMLError as e:
        raise PotentialFileError(str(path), "", f"not valid YAML ({str(e).splitlines()[0]})") from None


def _number_column(values: Any, source: str, key: str) -> np.ndarray:
    if not isinstance(values, list):
        raise PotentialFileError(source, key, f"expected a list of numbers, got {type(values).__name__}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise PotentialFileError(source, f"{key}[{i}]", f"expected a number, got {v!r}")
    return np.array(values, dtype=np.float64)


def _depth_of(n: int, num_ops: int) -> Optional[int]:
    depth, size = 0, 1
    while size < n:
        size *= num_ops
        depth += 1
    return depth if size == n and depth >= 1 else None


def _product_ops(depth: int, num_ops: int) -> np.ndarray:
    """Rows of ``itertools.product(range(num_ops), repeat=depth)`` (first layer most significant), as an array."""
    grids = np.indices((num_ops,) * depth).reshape(depth, -1)
    return grids.T.astype(np.int64)


def _official(data: Mapping, fast: bool, source: str, stage: Optional[int], num_ops: int) -> StagePotentials:
    if stage is None:
        raise PotentialFileError(source, "", "cannot tell which stage this official-format file belongs to: name "
                                             "it potential-<stage>.yaml or group the files by stage (--stage)")
    columns = {}
    for key, values in data.items():
        if not isinstance(key, str):
            raise PotentialFileError(source, str(key), "expected metric names as keys")
        columns[key] = values if fast else _number_column(values, source, key)
    lengths = {k: len(v) for k, v in columns.items()}
    n = max(lengths.values())
    short = [k for k, m in lengths.items() if m != n]
    if short:
        raise PotentialFileError(source, short[0], f"has {lengths[short[0]]} values; the other fields have {n}")
    depth = _depth_of(n, num_ops)
    if depth is None:
        raise PotentialFileError(source, next(iter(columns)),
                                 f"has {n} values; expected {num_ops}^L (one per candidate of an L-layer stage, "
                                 f"in itertools.product order)")
    return StagePotentials(stage=stage, depth=depth, ops=_product_ops(depth, num_ops), metrics=columns,
                           source=source, primitives=list(PRIMITIVES) if num_ops == OFFICIAL_NUM_OPS else None)


def _int_field(data: Mapping, key: str, source: str, low: int) -> int:
    if key not in data:
        raise PotentialFileError(source, key, "missing")
    v = data[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise PotentialFileError(source, key, f"expected an integer >= {low}, got {v!r}")
    return v


def _ours(data: Mapping, source: str, arrays: Optional[Tuple[np.ndarray, Dict[str, np.ndarray]]]) -> StagePotentials:
    unknown = [k for k in data if k not in OUR_KEYS]
    if unknown:
        raise PotentialFileError(source, str(unknown[0]), f"unknown key; allowed: {', '.join(OUR_KEYS)}")
    stage = _int_field(data, "stage", source, 0)
    depth = _int_field(data, "depth", source, 1)
    primitives = data.get("primitives")
    if primitives is not None and (not isinstance(primitives, list) or not primitives
                                   or not all(isinstance(p, str) for p in primitives)):
        raise PotentialFileError(source, "primitives", f"expected a non-empty list of op names, got {primitives!r}")
    if data.get("meta") is not None and not isinstance(data["meta"], Mapping):
        raise PotentialFileError(source, "meta", f"expected a mapping, got {data['meta']!r}")
    ops, values = arrays if arrays is not None else _candidate_arrays(data["candidates"], depth, source)
    if primitives and ops.max() >= len(primitives):
        i, layer = np.argwhere(ops >= len(primitives))[0]
        raise PotentialFileError(source, f"candidates[{i}].ops", f"op index {ops[i, layer]} is beyond the "
                                                                 f"{len(primitives)} primitives")
    unique, first = np.unique(ops, axis=0, return_index=True)
    if len(unique) != len(ops):
        dup = min(set(range(len(ops))) - set(first.tolist()))
        raise PotentialFileError(source, f"candidates[{dup}].ops", f"{ops[dup].tolist()} appears twice")
    return StagePotentials(stage=stage, depth=depth, ops=ops, metrics=values, source=source, primitives=primitives)


def _candidate_arrays(candidates: Any, depth: int, source: str) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """ops (n, depth) and {metric: values} from the parsed `candidates` list, checking every entry."""
    if not isinstance(candidates, list) or not candidates:
        raise PotentialFileError(source, "candidates", "expected a non-empty list of {ops: [...], <metric>: ...}")
    names: Optional[List[str]] = None
    ops = np.empty((len(candidates), depth), dtype=np.int64)
    values: Dict[str, List[float]] = {}
    for i, cand in enumerate(candidates):
        where = f"candidates[{i}]"
        if not isinstance(cand, Mapping) or "ops" not in cand:
            raise PotentialFileError(source, where, f"expected a mapping with 'ops' and metric values, got {cand!r}")
        row = cand["ops"]
        if (not isinstance(row, list) or len(row) != depth
                or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in row)):
            raise PotentialFileError(source, f"{where}.ops", f"expected {depth} op indices >= 0, got {row!r}")
        ops[i] = row
        keys = sorted(str(k) for k in cand if k != "ops")
        if names is None:
            names = keys
            if not names:
                raise PotentialFileError(source, where, "has no metric values (e.g. cl_loss: 0.31)")
            values = {k: [] for k in names}
        elif keys != names:
            raise PotentialFileError(source, where, f"has metrics {keys}; candidates[0] has {names}")
        for k in names:
            v = cand[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise PotentialFileError(source, f"{where}.{k}", f"expected a number, got {v!r}")
            values[k].append(v)
    return ops, {k: np.array(v, dtype=np.float64) for k, v in values.items()}


def load_potential_file(path: PathLike, stage: Optional[int] = None,
                        num_ops: int = OFFICIAL_NUM_OPS) -> StagePotentials:
    """One potential file, official or ours. `stage` overrides the stage implied by an official file's name;
    it must agree with our format's ``stage`` field. `num_ops` is the number of ops per layer of official files."""
    path = Path(path)
    source = str(path)
    data, arrays = _read(path)
    if not isinstance(data, Mapping) or not data:
        raise PotentialFileError(source, "", "expected a mapping: the official format (metric -> list of values) "
                                             "or ours (stage, depth, candidates)")
    if "candidates" in data:
        pot = _ours(data, source, arrays)
        if stage is not None and stage != pot.stage:
            raise PotentialFileError(source, "stage", f"is {pot.stage}, but the file was given for stage {stage}")
        named = _STAGE_FROM_NAME.match(path.name)
        if stage is None and named and int(named.group(1)) != pot.stage:
            raise PotentialFileError(source, "stage", f"is {pot.stage}, but the file name says stage "
                                                      f"{int(named.group(1))}")
        return pot
    if stage is None:
        named = _STAGE_FROM_NAME.match(path.name)
        stage = int(named.group(1)) if named else None
    return _official(data, arrays is not None, source, stage, num_ops)


def load_potentials(paths: Sequence[Union[PathLike, Sequence[PathLike]]],
                    num_ops: int = OFFICIAL_NUM_OPS) -> List[StagePotentials]:
    """Load potential files, official or ours, one `StagePotentials` per file.

    `paths` is either flat (each file's stage comes from its name ``potential-<stage>.yaml`` or our format's
    ``stage`` field) or grouped: ``paths[s]`` lists the files of stage s. Several files of one stage are several
    depths of it (the DNA recipe for larger spaces); two files with the same stage and depth are an error.
    """
    if isinstance(paths, (str, Path)):
        raise TypeError("paths must be a list of files (or a list of per-stage lists of files)")
    grouped = [not isinstance(p, (str, Path)) for p in paths]
    if any(grouped) and not all(grouped):
        raise TypeError("paths must be all files or all per-stage lists of files, not a mix")
    if paths and all(grouped):
        loaded = [load_potential_file(p, stage=s, num_ops=num_ops) for s, group in enumerate(paths) for p in group]
        empty = [s for s, group in enumerate(paths) if not list(group)]
        if empty:
            raise ValueError(f"stage {empty[0]} has no potential files")
    else:
        loaded = [load_potential_file(p, num_ops=num_ops) for p in paths]
    seen: Dict[Tuple[int, int], str] = {}
    for pot in loaded:
        key = (pot.stage, pot.depth)
        if key in seen:
            raise PotentialFileError(pot.source, "", f"stage {pot.stage} at depth {pot.depth} was already given by "
                                                     f"{seen[key]}; give one file per stage and depth")
        seen[key] = pot.source
    return loaded


def save_potentials(path: PathLike, potentials: StagePotentials) -> Path:
    """Write `potentials` in our format (atomically), one candidate per line::

        stage: 1
        depth: 4
        primitives: [MB6_3x3_se0.25, ...]     # optional: the op names, by index
        candidates:
        - {ops: [0, 0, 0, 0], cl_loss: 0.3468771752027281, loss: 1.3657539925118989}
        ...
    """
    path = Path(path)
    names = sorted(potentials.metrics)
    bad = [n for n in names if not re.fullmatch(_NAME, n)]
    if bad:
        raise ValueError(f"metric names must be identifiers (letters, digits, _), got {bad[0]!r}")
    header: Dict[str, Any] = {"stage": int(potentials.stage), "depth": int(potentials.depth)}
    if potentials.primitives:
        header["primitives"] = list(potentials.primitives)
    lines = [yaml.safe_dump(header, default_flow_style=None, sort_keys=False, width=1 << 16), "candidates:\n"]
    columns = [[_yaml_float(v) for v in potentials.metrics[n].tolist()] for n in names]
    for i, row in enumerate(potentials.ops.tolist()):
        metrics = ", ".join(f"{n}: {col[i]}" for n, col in zip(names, columns))
        lines.append(f"- {{ops: [{', '.join(map(str, row))}], {metrics}}}\n")
    from nas_zoo.io import atomic_write_text
    return atomic_write_text(path, "".join(lines))


def _yaml_float(x: float) -> str:
    """A float as PyYAML's SafeDumper writes it (repr, with '.0' added before a bare exponent)."""
    if x != x:
        return ".nan"
    if x in (math.inf, -math.inf):
        return ".inf" if x > 0 else "-.inf"
    text = repr(float(x)).lower()
    return text.replace("e", ".0e", 1) if "." not in text and "e" in text else text


# --------------------------------------------------------------------------------------------------------------
# Selection


def _pareto(cost: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Indices of the Pareto front (lower cost, lower score), by increasing cost and strictly decreasing score.
    Of equal points the first (lowest index) is kept."""
    order = np.lexsort((score, cost))
    s = score[order]
    keep = np.empty(len(s), dtype=bool)
    keep[:1] = True
    keep[1:] = s[1:] < np.minimum.accumulate(s)[:-1]
    return order[keep]


@dataclass
class _Stage:
    cost: np.ndarray      # per candidate (all depths of the stage)
    score: np.ndarray
    ops: List[np.ndarray]  # per depth file
    offsets: np.ndarray    # first candidate index of each depth file

    def arch(self, index: int) -> List[int]:
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.ops[k][index - self.offsets[k]].tolist()


def _stages(potentials: Sequence[StagePotentials], costs: CostTable, metric: str) -> List[_Stage]:
    by_stage: Dict[int, List[StagePotentials]] = {}
    for pot in potentials:
        by_stage.setdefault(pot.stage, []).append(pot)
    if not by_stage:
        raise ValueError("no potential files given")
    expected = list(range(costs.num_stages))
    if sorted(by_stage) != expected:
        missing = sorted(set(expected) - set(by_stage))
        extra = sorted(set(by_stage) - set(expected))
        problem = (f"stage {missing[0]} has no potential file" if missing else
                   f"potentials are given for stage {extra[0]} ({by_stage[extra[0]][0].source}), which the table "
                   f"does not price")
        raise CostTableError(costs.source, "stages", f"prices stages 0..{costs.num_stages - 1}, but {problem}; put "
                                                     "the cost of unsearched stages into 'fixed'")
    out = []
    for s in expected:
        pots = sorted(by_stage[s], key=lambda p: p.depth)
        cost, score = [], []
        for pot in pots:
            values = pot.metric(metric)
            try:
                cost.append(costs.candidate_costs(s, pot.ops))
            except CostTableError as e:  # say which potential file asked for it
                raise CostTableError(e.source, e.field, f"{e.problem} (needed by {pot.source})") from None
            score.append(values)
        offsets = np.cumsum([0] + [len(p) for p in pots[:-1]])
        out.append(_Stage(np.concatenate(cost), np.concatenate(score), [p.ops for p in pots], offsets))
    return out


def select(stages: Sequence[StagePotentials], costs: CostTable, budget: float, metric: str = "cl_loss") -> Selection:
    """The architecture with the minimum sum of per-stage `metric` whose total cost (``costs.fixed`` plus every
    stage's candidate) is at most `budget`. Exact; raises `InfeasibleBudgetError` when nothing fits."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)) \
            or not math.isfinite(budget):
        raise ValueError(f"budget must be a finite number, got {budget!r}")
    data = _stages(stages, costs, metric)
    front = _front(data, costs, float(budget))
    best = int(np.argmin(front.score))  # fronts have strictly decreasing scores: this is the last point
    return Selection(stages=front.arch(data, best), score=float(front.score[best]), cost=float(front.cost[best]),
                     fronts=front.sizes)


def pareto_front(stages: Sequence[StagePotentials], costs: CostTable, metric: str = "cl_loss"
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """Every architecture that no other beats in both cost and summed `metric`: (costs, scores), by increasing
    cost and strictly decreasing score. `select` at budget b returns the last point with cost <= b."""
    data = _stages(stages, costs, metric)
    front = _front(data, costs, math.inf)
    return front.cost, front.score


@dataclass
class _Front:
    cost: np.ndarray
    score: np.ndarray
    choice: List[np.ndarray]   # per stage: candidate index of each front point
    parent: List[np.ndarray]   # per stage: index into the previous stage's front
    sizes: List[int]

    def arch(self, data: Sequence[_Stage], k: int) -> List[List[int]]:
        arch: List[List[int]] = []
        for s in range(len(data) - 1, -1, -1):
            arch.append(data[s].arch(int(self.choice[s][k])))
            if s:
                k = int(self.parent[s][k])
        return arch[::-1]


def _front(data: Sequence[_Stage], costs: CostTable, budget: float) -> _Front:
    """The Pareto front of whole architectures within `budget`, stage by stage (see docs/dna_select.md)."""
    min_cost = [float(st.cost.min()) for st in data]
    cheapest = costs.fixed
    for c in min_cost:
        cheapest = cheapest + c
    if cheapest > budget:
        raise InfeasibleBudgetError(budget, cheapest, costs.unit)

    fronts = [_pareto(st.cost, st.score) for st in data]
    front_cost = costs.fixed + data[0].cost[fronts[0]]
    front_score = data[0].score[fronts[0]]
    keep = _completable(front_cost, min_cost[1:], budget)
    front_cost, front_score = front_cost[keep], front_score[keep]
    choice = [fronts[0][keep]]
    parent: List[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    sizes = [len(front_cost)]
    for s in range(1, len(data)):
        stage_cost, stage_score = data[s].cost[fronts[s]], data[s].score[fronts[s]]
        front_cost, front_score, prev, pick = _merge(front_cost, front_score, stage_cost, stage_score,
                                                     min_cost[s + 1:], budget)
        parent.append(prev)
        choice.append(fronts[s][pick])
        sizes.append(len(front_cost))
    return _Front(front_cost, front_score, choice, parent, sizes)


def _completable(cost: np.ndarray, rest_min: Sequence[float], budget: float) -> np.ndarray:
    """Whether each partial cost can still be completed within the budget by the cheapest remaining candidates,
    summed in the same order as the final total (rounded addition is monotone, so this test is exact)."""
    bound = cost
    for c in rest_min:
        bound = bound + c
    return bound <= budget


_CHUNK = 1 << 22  # pairs per block when combining fronts, to bound memory


def _merge(cost_a, score_a, cost_b, score_b, rest_min, budget):
    """Pareto front of all feasible (a + b) pairs: (cost, score, index into a, index into b)."""
    rows = max(1, _CHUNK // max(1, len(cost_b)))
    parts = []
    for start in range(0, len(cost_a), rows):
        ca = cost_a[start:start + rows, None]
        cost = (ca + cost_b[None, :]).ravel()
        score = (score_a[start:start + rows, None] + score_b[None, :]).ravel()
        flat = np.flatnonzero(_completable(cost, rest_min, budget))
        cost, score = cost[flat], score[flat]
        ia, ib = np.divmod(flat, len(cost_b))
        keep = _pareto(cost, score)
        parts.append((cost[keep], score[keep], ia[keep] + start, ib[keep]))
    cost, score, ia, ib = (np.concatenate(x) for x in zip(*parts))
    keep = _pareto(cost, score) if len(parts) > 1 else np.arange(len(cost))
    return cost[keep], score[keep], ia[keep], ib[keep]


# --------------------------------------------------------------------------------------------------------------
# Command line

PROG = "nas-zoo-search dna select"
DESCRIPTION = """\
Pick one candidate per searched stage so that the summed potential (distillation loss) is minimal and the total
cost is at most the budget: the exact optimum of DNA's constrained search. Prints one JSON line:
{"stages": [[op, ...], ...], "score": ..., "cost": ...} (op indices in PRIMITIVES order:
MB6_3x3, MB6_5x5, MB6_7x7, MB3_3x3, MB3_5x5, MB3_7x7 for the official space)."""
EPILOG = """\
potential files: the official potential-<stage>.yaml (metric -> values over itertools.product(range(6),
repeat=L)) or ours (stage, depth, candidates: [{ops: [...], cl_loss: ...}]). Several files of one stage are
several depths of it. Costs: --cost-table FILE.json {"stages": [[[cost per op] per layer] per stage],
"fixed": cost outside the searched stages}, in the budget's unit; without it, cost-<--cost>.json from the
folder of the first potential file (written by the search run). See docs/dna_select.md.

examples:
  nas-zoo-search dna select --potentials run/potential-{0,1,2,3,4}.yaml --budget "394000 KMACs" \\
      --cost-table cost_table.json
  nas-zoo-search dna select run/potential-*.yaml --budget "4 M params" --cost params
  nas-zoo-search dna select --stage a/potential-0.yaml --stage b/d3.yaml b/d4.yaml --budget "400 MMACs"
"""


def _default_unit(cost: str) -> str:
    return UNITS[cost]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", metavar="FILE", help="potential files (the same as --potentials)")
    files = p.add_mutually_exclusive_group()
    files.add_argument("--potentials", nargs="+", metavar="FILE",
                       help="potential files; the stage of each comes from its name (potential-<stage>.yaml) or "
                            "from our format's 'stage' field")
    files.add_argument("--stage", nargs="+", action="append", metavar="FILE", dest="groups",
                       help="the potential files of one stage (one per depth); repeat once per stage, in order")
    p.add_argument("--budget", required=True, metavar="N UNIT",
                   help="maximum total cost, fixed part included, with its unit: '5 MMACs', '394000 KMACs', "
                        "'3.4 M params', '12 ms' (converted to the cost table's unit)")
    costs = p.add_mutually_exclusive_group()
    costs.add_argument("--cost-table", type=Path, metavar="FILE.json", help="per-op cost table (JSON)")
    costs.add_argument("--cost", choices=("macs", "params", "latency"), default="macs",
                       help="which of the search run's tables (cost-<COST>.json beside the potential files) to use "
                            "when --cost-table is not given (default: macs)")
    p.add_argument("--metric", default="cl_loss",
                   help="the potential to minimise (default: cl_loss, as the official search; e.g. loss)")
    p.add_argument("--num-ops", type=int, default=OFFICIAL_NUM_OPS, metavar="K",
                   help="ops per layer in official-format files (default: 6)")
    p.add_argument("-v", "--verbose", action="store_true", help="report sizes and timings on stderr")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.files and (args.potentials or args.groups):
        parser.error("give the potential files either as arguments, with --potentials or with --stage, not mixed")
    args.potentials = args.potentials or args.files
    if not args.potentials and not args.groups:
        parser.error("no potential files: give them as arguments, with --potentials FILE... or --stage FILE...")
    try:
        t0 = time.perf_counter()
        paths = args.groups if args.groups else args.potentials
        potentials = load_potentials(paths, num_ops=args.num_ops)
        first = Path(args.groups[0][0] if args.groups else args.potentials[0])
        table_path = args.cost_table or first.parent / f"cost-{args.cost}.json"
        if args.cost_table is None and not table_path.exists():
            raise CostTableError(str(table_path), "<file>", "no --cost-table given and the search run's table is not "
                                                             "there; pass --cost-table FILE.json")
        costs = CostTable.from_json(table_path)
        budget = Budget.parse(args.budget, "--budget", "budget")
        t1 = time.perf_counter()
        try:
            result = select(potentials, costs, budget.in_unit(costs.unit or _default_unit(args.cost)), args.metric)
        except InfeasibleBudgetError as e:
            raise InfeasibleBudgetError(e.budget, e.minimum, costs.unit, shown=str(budget)) from None
        t2 = time.perf_counter()
    except (NasZooError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    print(result.to_json(), flush=True)
    if args.verbose:
        counts = {}
        for pot in potentials:
            counts.setdefault(pot.stage, []).append(f"{len(pot)} (depth {pot.depth})")
        for s in sorted(counts):
            print(f"stage {s}: {' + '.join(counts[s])} candidates", file=sys.stderr)
        print(f"fronts after each stage: {result.fronts}", file=sys.stderr)
        print(f"load {t1 - t0:.3f} s, search {t2 - t1:.3f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
