"""The DARTS cell search space as CDARTS searches it: one network holding the search network, the evaluation
network of the current genotype and the parameter pool, plus the shared alphas.

Every op is built by the `darts_cell` family's own builders (`OPS`, `ReLUConvBN`, `FactorizedReduce`, `DartsCell`,
`build_stem`), so the evaluation network is the zoo model's cell network (at search width, BN affine off) and the
entry written at the end is built from the very same code.

- Search network (`search_cells`): cells `search_cells_per_stage` ([3, 3, 2]); the last cell of every stage but the
  last reduces. Every edge is a `MixedOp` (softmax(alpha)-weighted sum of the 8 ops, BN affine off); a node is the
  mean of its incoming edges (CDARTS' fixed, uniform softmax(beta)).
- Alphas (`Alphas`): `normal[i]`, `reduce[i]` of shape (i + 2, 8), 1e-3 * randn, one set shared by every stage
  (CDARTS `--repeat_cell`).
- Evaluation network (`eval_cells`): `DartsCell`s of the current genotype at evaluation depth ([7, 7, 6] CIFAR,
  [5, 5, 4] ImageNet), rebuilt each cycle (`build_eval`).
- Parameter pool (`pool_cells`): a MixedOp network at evaluation depth that the evaluation network inherits its
  selected ops' weights from (`inherit_from_pool`) and writes them back to (`write_back_to_pool`). Parameters only;
  BN buffers are not copied.
- Stem, the two distillation heads (on the outputs of stages 0 and 1) and `ensemble_param` are shared by both
  networks; each network has its own classifier (`fc_search`, `fc_eval`).
"""
from __future__ import annotations

import copy
import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nas_zoo.families.darts_cell import (OPS, PRIMITIVES, DartsCell, DartsCellNet, FactorizedReduce, ReLUConvBN, _map_cell_key,
                                         _STEM_KEYS, build_stem, network_plan)
from nas_zoo.genotype import Genotype, genotype_from_data

from . import Space, SpaceError, register_space

__all__ = ["MixedOp", "SearchCell", "DistillHead", "Alphas", "CdartsNetwork", "derive_genotype", "alpha_l1",
           "regulariser_decay", "interactive_loss", "INTERACTIVE_TYPES", "REGULARISED_OPS", "LAYOUTS",
           "from_official_state_dict", "random_genotype", "DartsCellSpace"]

N_NODES = 4
REGULARISED_OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect")
INTERACTIVE_TYPES = ("kl", "cosine", "mse", "smooth_l1")  # the official interactive_type 0..3
# search / evaluation depth, stem and distillation-head pool sizes of the official model types
LAYOUTS = {
    "cifar": dict(stem="cifar", stem_multiplier=3, search_cells_per_stage=[3, 3, 2], eval_cells_per_stage=[7, 7, 6],
                  head_pool=[6, 6]),
    "imagenet": dict(stem="imagenet", stem_multiplier=1, search_cells_per_stage=[3, 3, 2],
                     eval_cells_per_stage=[5, 5, 4], head_pool=[6, 5]),
}


class MixedOp(nn.Module):
    """One edge of the search network: the weighted sum of every candidate op (BN affine off by default)."""

    def __init__(self, chs: int, stride: int, affine: bool = False, primitives: Sequence[str] = PRIMITIVES,
                 device=None, dtype=None):
        super().__init__()
        self.primitives = tuple(primitives)
        self.ops = nn.ModuleList([OPS[p](chs, stride, affine, device=device, dtype=dtype) for p in self.primitives])

    def forward(self, x, weights):
        out = weights[0] * self.ops[0](x)
        for w, op in zip(weights[1:], self.ops[1:]):
            out = out + w * op(x)
        return out


class SearchCell(nn.Module):
    """A cell of MixedOps: node i has one MixedOp from every earlier state (2 + i edges) and is their mean."""

    def __init__(self, in_chs_pp: int, in_chs_p: int, chs: int, reduction: bool, reduction_prev: bool,
                 n_nodes: int = N_NODES, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.reduction = reduction
        self.preproc0 = (FactorizedReduce(in_chs_pp, chs, affine=False, **dd) if reduction_prev
                         else ReLUConvBN(in_chs_pp, chs, 1, 1, affine=False, **dd))
        self.preproc1 = ReLUConvBN(in_chs_p, chs, 1, 1, affine=False, **dd)
        self.dag = nn.ModuleList([
            nn.ModuleList([MixedOp(chs, 2 if reduction and j < 2 else 1, **dd) for j in range(2 + i)])
            for i in range(n_nodes)])
        self.out_chs = chs * n_nodes

    def forward(self, s0, s1, weights: Sequence[torch.Tensor]):
        states = [self.preproc0(s0), self.preproc1(s1)]
        for edges, w in zip(self.dag, weights):
            scale = 1.0 / len(edges)
            node = scale * edges[0](states[0], w[0])
            for j in range(1, len(edges)):
                node = node + scale * edges[j](states[j], w[j])
            states.append(node)
        return torch.cat(states[2:], dim=1)


class DistillHead(nn.Module):
    """CDARTS `DistillHeadCIFAR` / `DistillHeadImagenet` (BN affine off): ReLU, avg-pool(pool, stride 2), 1x1 conv
    to 128, BN, ReLU, 2x2 conv to 768, BN, ReLU, global average pool, linear."""

    def __init__(self, in_chs: int, pool: int, num_classes: int, device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.features = nn.Sequential(
            nn.ReLU(), nn.AvgPool2d(pool, stride=2, padding=0, count_include_pad=False),
            nn.Conv2d(in_chs, 128, 1, bias=False, **dd), nn.BatchNorm2d(128, affine=False, **dd), nn.ReLU(),
            nn.Conv2d(128, 768, 2, bias=False, **dd), nn.BatchNorm2d(768, affine=False, **dd), nn.ReLU())
        self.classifier = nn.Linear(768, num_classes, **dd)

    def forward(self, x):
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class Alphas(nn.Module):
    """The architecture parameters, shared by every stage: normal[i] and reduce[i] of shape (i + 2, n_ops)."""

    def __init__(self, n_nodes: int = N_NODES, n_ops: int = len(PRIMITIVES), generator=None):
        super().__init__()
        self.normal = nn.ParameterList([nn.Parameter(1e-3 * torch.randn(i + 2, n_ops, generator=generator))
                                        for i in range(n_nodes)])
        self.reduce = nn.ParameterList([nn.Parameter(1e-3 * torch.randn(i + 2, n_ops, generator=generator))
                                        for i in range(n_nodes)])

    def weights(self) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
        return ([F.softmax(a, dim=-1) for a in self.normal], [F.softmax(a, dim=-1) for a in self.reduce])

    @torch.no_grad()
    def reset(self, generator=None) -> None:
        """CDARTS `--clean_arch`: fresh 1e-3 * randn values."""
        for a in list(self.normal) + list(self.reduce):
            a.copy_(1e-3 * torch.randn(a.shape, generator=generator, dtype=a.dtype).to(a.device))


def _stage_layout(cells_per_stage: Sequence[int]) -> Tuple[List[bool], List[int]]:
    """Per cell: is it a reduction cell; and the index of the last cell of each stage."""
    reductions, ends, last = [], [], len(cells_per_stage) - 1
    for s, n in enumerate(cells_per_stage):
        reductions += [c == n - 1 and s < last for c in range(n)]
        ends.append(len(reductions) - 1)
    return reductions, ends


class CdartsNetwork(nn.Module):
    """Stem, search network, evaluation network, parameter pool, distillation heads and the two classifiers."""

    def __init__(self, num_classes: int, init_channels: int = 16, stem: str = "cifar", stem_multiplier: int = 3,
                 search_cells_per_stage: Sequence[int] = (3, 3, 2), eval_cells_per_stage: Sequence[int] = (7, 7, 6),
                 head_pool: Sequence[int] = (6, 6), in_chans: int = 3, device=None, dtype=None):
        super().__init__()
        if len(search_cells_per_stage) != 3 or len(eval_cells_per_stage) != 3:
            raise ValueError("CDARTS networks have three stages (the distillation heads sit on stages 0 and 1)")
        dd = {"device": device, "dtype": dtype}
        self.num_classes = num_classes
        self.init_channels, self.stem_type, self.stem_multiplier = init_channels, stem, stem_multiplier
        self.search_cells_per_stage = list(search_cells_per_stage)
        self.eval_cells_per_stage = list(eval_cells_per_stage)
        self.stem0, self.stem1 = build_stem(stem, in_chans, init_channels * stem_multiplier, **dd)
        self.search_cells, search_out = self._mixed_cells(self.search_cells_per_stage, dd)
        self.pool_cells, _ = self._mixed_cells(self.eval_cells_per_stage, dd)
        _, self.search_ends = _stage_layout(self.search_cells_per_stage)
        _, self.eval_ends = _stage_layout(self.eval_cells_per_stage)
        self.head1 = DistillHead(search_out[0], head_pool[0], num_classes, **dd)
        self.head2 = DistillHead(search_out[1], head_pool[1], num_classes, **dd)
        self.fc_search = nn.Linear(search_out[-1], num_classes, **dd)
        self.fc_eval = nn.Linear(search_out[-1], num_classes, **dd)
        self.ensemble_param = nn.Parameter(0.333 * torch.rand(3, **dd))
        self.eval_cells = nn.ModuleList()
        self.genotype: Optional[Genotype] = None

    def _mixed_cells(self, cells_per_stage, dd):
        reductions, ends = _stage_layout(cells_per_stage)
        stem_chs = self.init_channels * self.stem_multiplier
        chs_pp = chs_p = stem_chs
        chs, reduction_prev = self.init_channels, self.stem_type == "imagenet"
        cells = nn.ModuleList()
        for reduction in reductions:
            if reduction:
                chs *= 2
            cell = SearchCell(chs_pp, chs_p, chs, reduction, reduction_prev, **dd)
            cells.append(cell)
            chs_pp, chs_p, reduction_prev = chs_p, cell.out_chs, reduction
        return cells, [cells[e].out_chs for e in ends]

    # -- the evaluation network --------------------------------------------------------------------------------

    def eval_plan(self, genotype) -> dict:
        genotype = genotype_from_data(genotype)
        return network_plan(self.stem_type, self.init_channels, self.stem_multiplier, self.eval_cells_per_stage,
                            [genotype] * len(self.eval_cells_per_stage))

    def build_eval(self, genotype) -> None:
        """(Re)build the evaluation network from `genotype` (all stages), with fresh weights."""
        genotype = genotype_from_data(genotype)
        p = next(self.parameters())
        dd = {"device": p.device, "dtype": p.dtype}
        self.eval_cells = nn.ModuleList([
            DartsCell(c["nodes"], c["concat"], c["in_chs_pp"], c["in_chs_p"], c["chs"], c["reduction"],
                      c["reduction_prev"], affine=False, **dd) for c in self.eval_plan(genotype)["cells"]])
        self.eval_cells.train(self.training)
        self.genotype = genotype

    def _cell_pairs(self, official_break: bool):
        """(cell index, eval module, pool module, their names) pairs the evaluation network shares with the pool, in the official order.

        `official_break`: stop a node's copy at an identity edge, as CDARTS' copy loop does (its second edge is
        then neither inherited nor written back)."""
        if self.genotype is None:
            raise RuntimeError("build_eval(genotype) first")
        for i, (cell, pool) in enumerate(zip(self.eval_cells, self.pool_cells)):
            yield i, cell.preproc0, pool.preproc0, "preproc0", "preproc0"
            yield i, cell.preproc1, pool.preproc1, "preproc1", "preproc1"
            nodes, _ = self.genotype.cell(cell.reduction)
            k = 0
            for n, node in enumerate(nodes):
                for j, (name, src) in enumerate(node):
                    op = cell.ops[k + j]
                    if isinstance(op, nn.Identity):
                        if official_break:
                            break
                        continue
                    op_index = PRIMITIVES.index(name)
                    yield i, op, pool.dag[n][src].ops[op_index], f"ops.{k + j}", f"dag.{n}.{src}.ops.{op_index}"
                k += len(node)

    @torch.no_grad()
    def inherit_from_pool(self, official_break: bool = False) -> List[Tuple[str, str, List[str]]]:
        """Copy the pool's weights of every selected op (and the preprocessing) into the evaluation network.
        Returns the copy log: (eval module, pool module, parameter names) per copy."""
        return self._copy(to_pool=False, official_break=official_break)

    @torch.no_grad()
    def write_back_to_pool(self, official_break: bool = False) -> List[Tuple[str, str, List[str]]]:
        """The reverse of `inherit_from_pool`: the evaluation network's trained weights into the pool."""
        return self._copy(to_pool=True, official_break=official_break)

    def _copy(self, to_pool: bool, official_break: bool):
        log = []
        for i, ours, theirs, our_name, their_name in self._cell_pairs(official_break):
            src, dst = (ours, theirs) if to_pool else (theirs, ours)
            src_params = dict(src.named_parameters())
            names = []
            for n, p in dst.named_parameters():
                if n in src_params:
                    p.copy_(src_params[n])
                    names.append(n)
            log.append((f"eval_cells.{i}.{our_name}", f"pool_cells.{i}.{their_name}", names))
        return log

    # -- forwards ----------------------------------------------------------------------------------------------

    def _exits(self, x, cells, run_cell, ends, fc):
        s0 = self.stem0(x)
        s1 = self.stem1(s0)
        exits = []
        for i, cell in enumerate(cells):
            s0, s1 = s1, run_cell(cell, s0, s1)
            if i == ends[0]:
                exits.append(self.head1(s1))
            elif i == ends[1]:
                exits.append(self.head2(s1))
        logits = fc(torch.flatten(F.adaptive_avg_pool2d(s1, 1), 1))
        exits.append(logits)
        w = F.softmax(self.ensemble_param, dim=0)
        # the three exits, each scaled by its ensemble weight, concatenated along the batch (CDARTS em_output)
        return logits, torch.cat([w[k] * exits[k] for k in range(3)], dim=0)

    def forward_search(self, x, alphas: Alphas) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, ensemble outputs) of the search network."""
        normal, reduce = alphas.weights()
        return self._exits(x, self.search_cells, lambda c, s0, s1: c(s0, s1, reduce if c.reduction else normal),
                           self.search_ends, self.fc_search)

    def forward_eval(self, x) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, ensemble outputs) of the evaluation network."""
        if self.genotype is None:
            raise RuntimeError("build_eval(genotype) first")
        return self._exits(x, self.eval_cells, lambda c, s0, s1: c(s0, s1), self.eval_ends, self.fc_eval)

    # -- parameter groups (the official optimizers) -------------------------------------------------------------

    def shared_parameters(self) -> List[nn.Parameter]:
        """Stem, distillation heads and ensemble_param: trained by both the search and the evaluation optimizer."""
        return (list(self.stem0.parameters()) + list(self.stem1.parameters()) + [self.ensemble_param]
                + list(self.head1.parameters()) + list(self.head2.parameters()))

    def search_parameters(self) -> List[nn.Parameter]:
        return self.shared_parameters() + list(self.search_cells.parameters()) + list(self.fc_search.parameters())

    def eval_parameters(self) -> List[nn.Parameter]:
        return self.shared_parameters() + list(self.eval_cells.parameters()) + list(self.fc_eval.parameters())

    def fix_heads(self) -> None:
        """CDARTS `--fix_head`: the distillation heads stay fixed random projections (no gradients)."""
        for p in list(self.head1.parameters()) + list(self.head2.parameters()):
            p.requires_grad_(False)


# ---------------------------------------------------------------------------------------------------------------
# genotype, regulariser, distillation loss


def _parse_cell(alphas: Sequence[torch.Tensor], k: int = 2):
    """Per node: softmax over ops, `none` ignored, edge score = its best op's weight, the top-k edges (best first)
    each with its argmax op. torch.topk as the official `parse` (its tie order on CPU)."""
    nodes, connects = [], []
    for a in alphas:
        w = F.softmax(a.detach(), dim=-1)[:, :PRIMITIVES.index("none")]
        edge_max, op_index = torch.topk(w, 1)
        _, top_edges = torch.topk(edge_max.view(-1), k)
        node = [(PRIMITIVES[int(op_index[e])], int(e)) for e in top_edges]
        nodes.append(node)
        connects.append([(src, PRIMITIVES.index(op)) for op, src in node])
    return nodes, connects


def derive_genotype(alphas: Alphas) -> Tuple[Genotype, dict]:
    """The genotype of the current alphas (CDARTS `generate_genotype`) and its connects {normal, reduce}:
    [(source, op index), ...] per node."""
    normal, c_normal = _parse_cell(alphas.normal)
    reduce, c_reduce = _parse_cell(alphas.reduce)
    concat = list(range(2, 2 + len(normal)))
    genotype = genotype_from_data({"normal": normal, "normal_concat": concat, "reduce": reduce,
                                   "reduce_concat": concat})
    return genotype, {"normal": c_normal, "reduce": c_reduce}


def random_genotype(rng: np.random.RandomState, n_nodes: int = N_NODES) -> Genotype:
    """A genotype of the space drawn uniformly: two distinct earlier states per node, a non-`none` op on each."""
    ops = [p for p in PRIMITIVES if p != "none"]
    cells = {}
    for kind in ("normal", "reduce"):
        nodes = []
        for i in range(n_nodes):
            sources = rng.choice(i + 2, 2, replace=False)
            nodes.append([[ops[rng.randint(len(ops))], int(s)] for s in sources])
        cells[kind] = nodes
    concat = list(range(2, 2 + n_nodes))
    return genotype_from_data(dict(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"],
                                   reduce_concat=concat))


def regulariser_decay(epoch: int, coeff: float, pretrain_epochs: int, search_iters: int, iter_epochs: int,
                      ratio: float) -> float:
    """The L1 coefficient, decaying linearly from `coeff` to 0 over the first `ratio` of the search epochs."""
    span = (search_iters - pretrain_epochs) * iter_epochs * ratio
    return max(coeff * (1.0 - float(epoch - pretrain_epochs) / span), 0.0)


def alpha_l1(alphas: Sequence[torch.Tensor], decay: float, ops: Sequence[str] = REGULARISED_OPS,
             count: int = 1) -> torch.Tensor:
    """decay * count * sum |alpha[op]| over every edge and each of `ops` (raw alpha values).

    `count` 3 reproduces the official code, which adds the shared alphas once per stage under --repeat_cell."""
    idx = [PRIMITIVES.index(o) for o in ops]
    total = sum(a[:, idx].abs().sum() for a in alphas)
    return total * (count * decay)


def interactive_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 2.0,
                     kind: str = "smooth_l1") -> torch.Tensor:
    """CDARTS `Loss_interactive`: the distillation term between the two networks' ensemble outputs, every type
    times T^2. kl: KLDiv(log_softmax(s/T), softmax(t/T)) with elementwise-mean reduction; cosine: -mean cosine
    similarity (dim 1, eps 1e-6); mse; smooth_l1. Neither side is detached."""
    if kind == "kl":
        loss = F.kl_div(F.log_softmax(student / temperature, dim=1), F.softmax(teacher / temperature, dim=1),
                        reduction="mean")
    elif kind == "cosine":
        loss = -F.cosine_similarity(student, teacher, dim=1, eps=1e-6).mean()
    elif kind == "mse":
        loss = F.mse_loss(student, teacher)
    elif kind == "smooth_l1":
        loss = F.smooth_l1_loss(student, teacher)
    else:
        raise ValueError(f"interactive loss must be one of {INTERACTIVE_TYPES}, got {kind!r}")
    return loss * (temperature * temperature)


# ---------------------------------------------------------------------------------------------------------------
# official CDARTSController state dict -> ours

_OFFICIAL_CELL = re.compile(r"^(super_layers|super_layers_pool|nas_layers)\.(\d+)\.(\d+)\.(.+)$")
_OFFICIAL_MIXED = re.compile(r"^dag\.(\d+)\.(\d+)\._ops\.(\d+)\.(.+)$")
_OFFICIAL_ALPHA = re.compile(r"^super_layers_arch\.0\.([01])\.(\d+)$")
_SEP = re.compile(r"^net\.([01])\.net\.([123])\.(.+)$")
_DIL = re.compile(r"^net\.([123])\.(.+)$")
_DW_PW_BN = {"1": "conv_dw", "2": "conv_pw", "3": "bn"}


def _mixed_op_tail(tail: str) -> str:
    sep, dil = _SEP.match(tail), _DIL.match(tail)
    if sep:
        return f"conv{int(sep.group(1)) + 1}.{_DW_PW_BN[sep.group(2)]}.{sep.group(3)}"
    if dil:
        return f"{_DW_PW_BN[dil.group(1)]}.{dil.group(2)}"
    return tail  # FactorizedReduce: conv1 / conv2 / bn


def _preproc(rest: str) -> Optional[str]:
    m = re.match(r"^(preproc[01])\.net\.([12])\.(.+)$", rest)
    if m:
        return f"{m.group(1)}.{'conv' if m.group(2) == '1' else 'bn'}.{m.group(3)}"
    return rest if rest.startswith(("preproc0.", "preproc1.")) else None


def from_official_state_dict(state: Dict[str, torch.Tensor], net: CdartsNetwork) -> Tuple[dict, dict]:
    """An official `CDARTSController.state_dict()` (with --repeat_cell) as (network state, alphas state) in our
    layout. The fixed betas and the pool's unused arch params are dropped; keys that fit nowhere raise."""
    offsets = {
        "super_layers": np.cumsum([0] + net.search_cells_per_stage).tolist(),
        "super_layers_pool": np.cumsum([0] + net.eval_cells_per_stage).tolist(),
        "nas_layers": np.cumsum([0] + net.eval_cells_per_stage).tolist(),
    }
    ours = {"super_layers": "search_cells", "super_layers_pool": "pool_cells", "nas_layers": "eval_cells"}
    simple = {"distill_aux_head1.": "head1.", "distill_aux_head2.": "head2.", "fc_super.": "fc_search.",
              "fc_nas.": "fc_eval.", **_STEM_KEYS[net.stem_type]}
    net_state, alpha_state = {}, {}
    for key, value in state.items():
        if key.startswith(("super_layers_pool_arch.", "super_layers_arch.0.2.", "super_layers_arch.0.3.")):
            continue
        m = _OFFICIAL_ALPHA.match(key)
        if m:
            alpha_state[f"{'normal' if m.group(1) == '0' else 'reduce'}.{m.group(2)}"] = value
            continue
        new = None
        m = _OFFICIAL_CELL.match(key)
        if m:
            kind, stage, cell, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
            index = offsets[kind][stage] + cell
            mapped = _preproc(rest)
            if mapped is None and kind == "nas_layers":
                mapped = _map_cell_key(rest, [0, 2, 4, 6])
            elif mapped is None:
                mm = _OFFICIAL_MIXED.match(rest)
                if mm:
                    mapped = f"dag.{mm.group(1)}.{mm.group(2)}.ops.{mm.group(3)}.{_mixed_op_tail(mm.group(4))}"
            if mapped is not None:
                new = f"{ours[kind]}.{index}.{mapped}"
        elif key == "ensemble_param":
            new = key
        else:
            for old, prefix in simple.items():
                if key.startswith(old):
                    new = prefix + key[len(old):]
        if new is None:
            raise KeyError(f"official CDARTS key {key!r} has no counterpart")
        net_state[new] = value
    return net_state, alpha_state


# ---------------------------------------------------------------------------------------------------------------
# the space as data (framework Space contract): an arch is a genotype mapping (Genotype.to_dict())


class DartsCellSpace(Space):
    """The DARTS cell space of the `darts_cell` family. An arch is the genotype mapping; `entry_arch` places it in
    the family's network at the retrain layout (`layout` + overrides), `cost` counts that network's MACs or
    params (nas_zoo.cost, on the meta device)."""

    name = "darts_cell"
    family = "darts_cell"
    OPS = tuple(p for p in PRIMITIVES if p != "none")

    def __init__(self, layout: str = "cifar", num_classes: int = 10, **entry_overrides):
        self.layout, self.num_classes = layout, num_classes
        recipe = {"cifar": dict(stem="cifar", init_channels=36, stem_multiplier=3, cells_per_stage=[7, 7, 6],
                                drop_path_rate=0.3),
                  "imagenet": dict(stem="imagenet", init_channels=48, stem_multiplier=1,
                                   cells_per_stage=[5, 5, 4], drop_path_rate=0.0)}[layout]
        self.entry_layout = {**recipe, **{k: v for k, v in entry_overrides.items() if v is not None}}
        self.image_size = 32 if layout == "cifar" else 224

    def sample(self, rng: np.random.RandomState) -> dict:
        return random_genotype(rng).to_dict()

    def check_arch(self, arch) -> None:
        from nas_zoo.genotype import GenotypeError
        try:
            g = genotype_from_data(arch)
        except GenotypeError as e:
            raise SpaceError("<arch>", e.where or "genotype", e.problem) from None
        for kind in ("normal", "reduce"):
            nodes = getattr(g, kind)
            if len(nodes) != N_NODES:
                raise SpaceError("<arch>", kind, f"expected {N_NODES} nodes, got {len(nodes)}")
            for i, node in enumerate(nodes):
                if len(node) != 2 or len({src for _, src in node}) != 2:
                    raise SpaceError("<arch>", f"{kind}[{i}]", "expected two edges from two different states")
                for j, (op, src) in enumerate(node):
                    if op == "none":
                        raise SpaceError("<arch>", f"{kind}[{i}][{j}]", "'none' is never selected in this space")
                    if not 0 <= src < i + 2:
                        raise SpaceError("<arch>", f"{kind}[{i}][{j}]", f"source {src} is not an earlier state (0..{i + 1})")

    def mutate(self, arch, rng: np.random.RandomState, prob: float) -> dict:
        """Each edge independently with probability `prob`: a new op, or (half the time) a new source."""
        g = genotype_from_data(arch).to_dict()
        for kind in ("normal", "reduce"):
            for i, node in enumerate(g[kind]):
                for j in range(2):
                    if rng.rand() >= prob:
                        continue
                    if rng.rand() < 0.5:
                        node[j][0] = self.OPS[rng.randint(len(self.OPS))]
                    else:
                        other = node[1 - j][1]
                        node[j][1] = int(rng.choice([s for s in range(i + 2) if s != other]))
        return genotype_from_data(g).to_dict()

    def crossover(self, a, b, rng: np.random.RandomState) -> dict:
        """Node-wise uniform crossover (a node keeps both its edges from one parent)."""
        ga, gb = genotype_from_data(a).to_dict(), genotype_from_data(b).to_dict()
        out = copy.deepcopy(ga)
        for kind in ("normal", "reduce"):
            out[kind] = [copy.deepcopy(ga[kind][i] if rng.rand() < 0.5 else gb[kind][i]) for i in range(N_NODES)]
        return genotype_from_data(out).to_dict()

    def entry_arch(self, arch) -> dict:
        return {**copy.deepcopy(self.entry_layout), "genotype": genotype_from_data(arch).to_dict()}

    def cost(self, arch, metric: str = "macs", image_size: Optional[int] = None) -> float:
        from nas_zoo.cost import count_macs, count_params
        from nas_zoo.families.darts_cell import model_kwargs
        with torch.device("meta"):
            model = DartsCellNet(num_classes=self.num_classes, **model_kwargs(self.entry_arch(arch)))
        if metric == "params":
            return float(count_params(model))
        if metric != "macs":
            raise ValueError(f"metric must be 'macs' or 'params', got {metric!r}")
        size = image_size or self.image_size
        return float(count_macs(model, (3, size, size)))

    def cost_range(self, metric: str = "macs", image_size: Optional[int] = None) -> Tuple[float, float]:
        """Cheapest / dearest: every edge a max-pool / a sep_conv_5x5 (the costliest op) from the cell inputs."""
        def uniform(op):
            nodes = [[[op, 0], [op, 1]] for _ in range(N_NODES)]
            concat = list(range(2, 2 + N_NODES))
            return dict(normal=nodes, normal_concat=concat, reduce=nodes, reduce_concat=concat)
        return (self.cost(uniform("max_pool_3x3"), metric, image_size),
                self.cost(uniform("sep_conv_5x5"), metric, image_size))

    def supernet(self, num_classes: int) -> nn.Module:
        """The CDARTS network (search network, evaluation network, pool) at the search layout."""
        lay = LAYOUTS[self.layout]
        return CdartsNetwork(num_classes, init_channels=16, stem=lay["stem"], stem_multiplier=lay["stem_multiplier"],
                             search_cells_per_stage=lay["search_cells_per_stage"],
                             eval_cells_per_stage=lay["eval_cells_per_stage"], head_pool=lay["head_pool"])

    def child_state_dict(self, supernet_state, arch):
        raise SpaceError("<arch>", "weights", "CDARTS entries are retrained at another width (36 / 48 vs the "
                                              "search width 16): there are no inherited weights to export")


register_space("darts_cell", DartsCellSpace)
