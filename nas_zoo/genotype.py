"""DARTS genotypes: the cell architecture as data, read without ever executing the text it comes in.

A genotype describes two cells, the *normal* cell and the *reduction* cell. Each cell has two inputs (state 0: the
cell before the previous one, state 1: the previous cell) and a list of intermediate nodes (states 2, 3, ...).
A node is the sum of its edges; an edge is ``(op, source)``: one of `PRIMITIVES` applied to an earlier state.
The cell output concatenates the states listed in ``*_concat``.

Three spellings are read, all into the same `Genotype`:

* the official text, as DARTS / CDARTS print and store it::

      Genotype(normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], ...], normal_concat=range(2, 6),
               reduce=[[('max_pool_3x3', 0), ...], ...], reduce_concat=range(2, 6))

  (the original DARTS flat edge list ``normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ...]``, two edges per
  node, is read too). The text is parsed with `ast.parse` and a whitelist walk: only the ``Genotype(...)`` call,
  lists, tuples, strings, integers and ``range(a, b)``; anything else is refused, nothing is evaluated.
* the official cells file (``cells/*.json``): ``{"0": "Genotype(...)", "1": ..., "2": ...}``, one genotype per stage;
* our YAML/JSON mapping::

      normal: [[[sep_conv_3x3, 0], [sep_conv_3x3, 1]], ...]   # one list of [op, source] edges per node
      normal_concat: [2, 3, 4, 5]
      reduce: [...]
      reduce_concat: [2, 3, 4, 5]

Every problem is one `GenotypeError` naming the source and the place (``normal[1][0]``, ``line 1, column 5``).
"""
from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import NasZooError

__all__ = ["PRIMITIVES", "Genotype", "GenotypeError", "parse_genotype", "genotype_from_data", "read_genotype_file"]

# The eight candidate ops of the DARTS search space, in the official order (CDARTS lib/models/ops.py:PRIMITIVES).
PRIMITIVES = (
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "none",
)
FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
MAX_NODES = 32  # far above any published cell; keeps a hostile range(10**12) from allocating anything

Edge = Tuple[str, int]
Nodes = Tuple[Tuple[Edge, ...], ...]


class GenotypeError(NasZooError):
    """A malformed genotype. The message names the source and where in it the problem is."""

    def render(self) -> str:
        return f"{self.source}: {self.field}: {self.problem}" if self.field else f"{self.source}: {self.problem}"

    @property
    def where(self) -> str:
        return self.field


@dataclass(frozen=True)
class Genotype:
    normal: Nodes
    normal_concat: Tuple[int, ...]
    reduce: Nodes
    reduce_concat: Tuple[int, ...]

    def cell(self, reduction: bool) -> Tuple[Nodes, Tuple[int, ...]]:
        """(nodes, concat) of the reduction or the normal cell."""
        return (self.reduce, self.reduce_concat) if reduction else (self.normal, self.normal_concat)

    def to_dict(self) -> dict:
        """Our YAML form (plain lists, safe for yaml.safe_dump)."""
        return {
            "normal": [[[op, src] for op, src in node] for node in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[[op, src] for op, src in node] for node in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_str(self) -> str:
        """The official text, as ``str(Genotype)`` prints it in the DARTS / CDARTS code."""
        def nodes(ns):
            return "[" + ", ".join("[" + ", ".join(f"('{op}', {src})" for op, src in node) + "]" for node in ns) + "]"

        def concat(c):
            if len(c) > 1 and list(c) == list(range(c[0], c[-1] + 1)):
                return f"range({c[0]}, {c[-1] + 1})"
            return "[" + ", ".join(str(i) for i in c) + "]"

        return (f"Genotype(normal={nodes(self.normal)}, normal_concat={concat(self.normal_concat)}, "
                f"reduce={nodes(self.reduce)}, reduce_concat={concat(self.reduce_concat)})")

    def __str__(self) -> str:
        return self.to_str()


# ---------------------------------------------------------------------------------------------------------------
# structure checks shared by every spelling


def _build(values: Mapping[str, Any], source: str, prefix: str = "") -> Genotype:
    normal = _nodes(values["normal"], source, f"{prefix}normal")
    reduce = _nodes(values["reduce"], source, f"{prefix}reduce")
    normal_concat = _concat(values["normal_concat"], len(normal), source, f"{prefix}normal_concat")
    reduce_concat = _concat(values["reduce_concat"], len(reduce), source, f"{prefix}reduce_concat")
    return Genotype(normal, normal_concat, reduce, reduce_concat)


def _is_edge(item) -> bool:
    return isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str)


def _nodes(value, source: str, where: str) -> Nodes:
    if not isinstance(value, (list, tuple)) or not value:
        raise GenotypeError(source, where, f"expected a non-empty list of nodes, each a list of (op, input) "
                                           f"edges, got {_describe(value)}")
    if all(_is_edge(item) for item in value):
        # the original DARTS spelling: a flat edge list, two edges per node
        if len(value) % 2:
            raise GenotypeError(source, where, f"a flat edge list needs two edges per node, got {len(value)} edges")
        value = [value[i:i + 2] for i in range(0, len(value), 2)]
    if len(value) > MAX_NODES:
        raise GenotypeError(source, where, f"{len(value)} nodes; at most {MAX_NODES} are supported")
    nodes = []
    for n, node in enumerate(value):
        node_where = f"{where}[{n}]"
        if not isinstance(node, (list, tuple)) or not node:
            raise GenotypeError(source, node_where, f"expected a non-empty list of (op, input) edges, "
                                                    f"got {_describe(node)}")
        edges = []
        for j, edge in enumerate(node):
            edge_where = f"{node_where}[{j}]"
            if not (isinstance(edge, (list, tuple)) and len(edge) == 2):
                raise GenotypeError(source, edge_where, f"expected an (op, input) pair, got {_describe(edge)}")
            op, src = edge
            if op not in PRIMITIVES:
                raise GenotypeError(source, edge_where, f"unknown op {op!r}; expected one of {list(PRIMITIVES)}")
            if not isinstance(src, int) or isinstance(src, bool) or not 0 <= src < n + 2:
                raise GenotypeError(source, edge_where, f"input of node {n} must be an integer in [0, {n + 1}] "
                                                        f"(0, 1: the cell inputs; 2..: earlier nodes), got "
                                                        f"{_describe(src)}")
            edges.append((op, src))
        nodes.append(tuple(edges))
    return tuple(nodes)


def _concat(value, n_nodes: int, source: str, where: str) -> Tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise GenotypeError(source, where, f"expected a non-empty list of state indices such as [2, 3, 4, 5] "
                                           f"or range(2, 6), got {_describe(value)}")
    out = []
    for i, idx in enumerate(value):
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < n_nodes + 2:
            raise GenotypeError(source, f"{where}[{i}]", f"expected a state index in [0, {n_nodes + 1}], "
                                                         f"got {_describe(idx)}")
        if idx in out:
            raise GenotypeError(source, f"{where}[{i}]", f"state {idx} is listed twice")
        out.append(idx)
    return tuple(out)


def _describe(v) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text if len(text) < 60 else text[:57] + '...'}"


# ---------------------------------------------------------------------------------------------------------------
# the official text


def parse_genotype(text: str, source: str = "<genotype text>") -> Genotype:
    """Parse ``Genotype(normal=..., normal_concat=..., reduce=..., reduce_concat=...)`` without evaluating it."""
    if not isinstance(text, str):
        raise GenotypeError(source, "", f"expected the genotype text, got {_describe(text)}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise GenotypeError(source, "", f"line {e.lineno}, column {e.offset}: not a Genotype(...) expression "
                                        f"({e.msg})") from None
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
        raise GenotypeError(source, "", f"{_at(call)}: expected Genotype(normal=..., normal_concat=..., reduce=..., "
                                               f"reduce_concat=...), got {_node_kind(call)}")
    if len(call.args) > len(FIELDS):
        raise GenotypeError(source, "", f"{_at(call)}: Genotype takes {len(FIELDS)} fields, got {len(call.args)} "
                                               "positional arguments")
    values: Dict[str, Any] = {}
    for name, arg in zip(FIELDS, call.args):
        values[name] = _literal(arg, source)
    for kw in call.keywords:
        if kw.arg is None:
            raise GenotypeError(source, "", f"{_at(kw.value)}: '**' arguments are not allowed in a genotype")
        if kw.arg not in FIELDS:
            raise GenotypeError(source, "", f"{_at(kw.value)}: unknown Genotype field {kw.arg!r}; "
                                            f"expected {list(FIELDS)}")
        if kw.arg in values:
            raise GenotypeError(source, "", f"{_at(kw.value)}: Genotype field {kw.arg!r} is given twice")
        values[kw.arg] = _literal(kw.value, source)
    missing = [f for f in FIELDS if f not in values]
    if missing:
        raise GenotypeError(source, "", f"{_at(call)}: Genotype is missing the field(s) {missing}")
    return _build(values, source)


def _literal(node: ast.AST, source: str):
    """The value of a whitelisted expression: str / int constants, lists, tuples and range(...)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(elt, source) for elt in node.elts]
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        if node.keywords or not 1 <= len(node.args) <= 3:
            raise GenotypeError(source, "", f"{_at(node)}: range() takes 1 to 3 integer arguments")
        bounds = [_literal(a, source) for a in node.args]
        if not all(isinstance(b, int) for b in bounds):
            raise GenotypeError(source, "", f"{_at(node)}: range() takes integers, got {bounds}")
        r = range(*bounds)
        if len(r) > MAX_NODES + 2:
            raise GenotypeError(source, "", f"{_at(node)}: range of {len(r)} states; a cell has at most "
                                            f"{MAX_NODES + 2}")
        return list(r)
    if isinstance(node, ast.Call):
        raise GenotypeError(source, "", f"{_at(node)}: call to {_call_name(node)} is not allowed in a genotype (only "
                                               "Genotype(...) and range(...)); nothing was executed")
    raise GenotypeError(source, "", f"{_at(node)}: {_node_kind(node)} is not allowed in a genotype; expected lists of "
                                           "('op', input) pairs, integers and range(a, b)")


def _at(node: ast.AST) -> str:
    return f"line {getattr(node, 'lineno', '?')}, column {getattr(node, 'col_offset', -1) + 1}"


def _call_name(node: ast.Call) -> str:
    try:
        return f"'{ast.unparse(node.func)}'"
    except Exception:  # pragma: no cover - ast.unparse handles every expression node
        return "a function"


def _node_kind(node: ast.AST) -> str:
    if isinstance(node, ast.Constant):
        return f"the constant {node.value!r}"
    if isinstance(node, ast.Name):
        return f"the name {node.id!r}"
    if isinstance(node, ast.Call):
        return f"a call to {_call_name(node)}"
    return f"a {type(node).__name__} expression"


# ---------------------------------------------------------------------------------------------------------------
# our YAML / JSON mapping


def genotype_from_data(data: Any, source: str = "<genotype>", where: str = "") -> Genotype:
    """A genotype from parsed YAML/JSON: our mapping, or a string in the official text form."""
    if isinstance(data, Genotype):
        return data
    if isinstance(data, str):
        try:
            return parse_genotype(data, source)
        except GenotypeError as e:
            raise GenotypeError(source, ".".join(p for p in (where, e.where) if p), e.problem) from None
    if not isinstance(data, Mapping):
        raise GenotypeError(source, where, f"expected a mapping with fields {list(FIELDS)} or the official "
                                           f"'Genotype(...)' text, got {_describe(data)}")
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in FIELDS:
            raise GenotypeError(source, f"{prefix}{key}", f"unknown field; expected one of {list(FIELDS)}")
    for key in FIELDS:
        if key not in data:
            raise GenotypeError(source, f"{prefix}{key}", "missing (required)")
    return _build(data, source, prefix)


# ---------------------------------------------------------------------------------------------------------------
# files


def read_genotype_file(path: Union[str, os.PathLike]) -> List[Genotype]:
    """Read a genotype file; returns one genotype per stage (usually a single one).

    Accepted: the official cells file (``{"0": "Genotype(...)", ...}``, keys are stage indices), a text file holding
    ``Genotype(...)``, or our YAML/JSON (a genotype mapping, ``{genotype: ...}`` or ``{stage_genotypes: [...]}``).
    """
    import yaml

    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise GenotypeError(source, "", f"cannot read the genotype file ({e.strerror})") from None
    stripped = text.strip()
    if not stripped:
        raise GenotypeError(source, "", "the file is empty")
    if stripped.startswith("Genotype"):
        return [parse_genotype(stripped, source)]
    try:
        data = json.loads(stripped) if path.suffix == ".json" else yaml.safe_load(stripped)
    except (ValueError, yaml.YAMLError) as e:
        kind = "JSON" if path.suffix == ".json" else "YAML"
        raise GenotypeError(source, "", f"not valid {kind} ({str(e).splitlines()[0]}); expected a cells file "
                                        '{"0": "Genotype(...)", ...}, Genotype(...) text or a genotype '
                                        "mapping") from None
    return _genotypes_from_document(data, source)


def _genotypes_from_document(data: Any, source: str) -> List[Genotype]:
    if isinstance(data, str):
        return [genotype_from_data(data, source)]
    if not isinstance(data, Mapping):
        raise GenotypeError(source, "", f"expected a cells file {{\"0\": \"Genotype(...)\", ...}} or a genotype "
                                        f"mapping, got {_describe(data)}")
    if set(data) and all(isinstance(k, (str, int)) and str(k).isdigit() for k in data):
        stages = sorted(data, key=lambda k: int(k))
        if [int(k) for k in stages] != list(range(len(stages))):
            raise GenotypeError(source, "", f"cells-file keys are stage indices 0, 1, ...; got {list(data)}")
        return [genotype_from_data(data[k], source, f"[{k!r}]") for k in stages]
    if "genotype" in data or "stage_genotypes" in data:
        extra = [k for k in data if k not in ("genotype", "stage_genotypes")]
        if extra or len(data) != 1:
            raise GenotypeError(source, "", f"expected one of 'genotype' or 'stage_genotypes' alone, got fields "
                                            f"{list(data)}")
        if "genotype" in data:
            return [genotype_from_data(data["genotype"], source, "genotype")]
        stages = data["stage_genotypes"]
        if not isinstance(stages, list) or not stages:
            raise GenotypeError(source, "stage_genotypes", f"expected a non-empty list of genotypes, got "
                                                           f"{_describe(stages)}")
        return [genotype_from_data(g, source, f"stage_genotypes[{i}]") for i, g in enumerate(stages)]
    return [genotype_from_data(data, source)]


def same_genotype(genotypes: Sequence[Genotype]) -> Optional[Genotype]:
    """The genotype all stages share, or None when they differ."""
    first = genotypes[0]
    return first if all(g == first for g in genotypes[1:]) else None
