# TEMPORARY stand-in until the dnaselect branch lands (not committed)
import itertools, yaml
from dataclasses import dataclass
@dataclass
class StagePotentials:
    values: dict
    layers: int
    num_ops: int
def load_potentials(paths):
    out = []
    for p in paths:
        d = yaml.safe_load(open(p))
        n = len(d["cl_loss"]); L = 0; ops = 6
        while ops ** L < n: L += 1
        out.append(StagePotentials(d, L, ops))
    return out
@dataclass
class CostTable:
    stages: list
    fixed: float = 0.0
@dataclass
class Selection:
    stages: list
    score: float
    cost: float
def select(stages, costs, budget, metric="cl_loss"):
    fronts = [[(0.0, 0.0, [])]]
    front = [(0.0, 0.0, [])]
    for s, sp in enumerate(stages):
        cands = list(itertools.product(range(sp.num_ops), repeat=sp.layers))
        new = []
        for c, (cost, loss, paths) in itertools.product(range(len(cands)), front):
            cc = cost + sum(costs.stages[s][l][o] for l, o in enumerate(cands[c]))
            new.append((cc, loss + sp.values[metric][c], paths + [list(cands[c])]))
        new.sort(key=lambda t: (t[0], t[1]))
        front, best = [], float("inf")
        for t in new:
            if t[1] < best: front.append(t); best = t[1]
    ok = [t for t in front if t[0] + costs.fixed <= budget]
    if not ok: raise ValueError("no architecture fits the budget")
    t = min(ok, key=lambda t: t[1])
    return Selection(t[2], t[1], t[0] + costs.fixed)
