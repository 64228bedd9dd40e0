"""SPOS pieces that work on any space with sample / mutate / crossover / cost: the FLOPs-bin path sampler of
supernet training and the evolutionary search (official megvii-model/SinglePathOneShot `src/Supernet/train.py`
`get_random_cand` and `src/Search/search.py:EvolutionSearcher`).

The search state (generation, population, scores of every visited candidate, the queue still to score, the RNG) is
plain data in `state_dict()`, saved after every scored candidate, so a killed search resumes where it stopped and
ends with the identical result.
"""
from __future__ import annotations

import json
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["FlopsBinSampler", "EvolutionSearch", "default_bins"]


def _key(arch) -> str:
    return json.dumps(arch, separators=(",", ":"))


def default_bins(cost_range: Tuple[float, float], budget: Optional[float], count: int = 7) -> List[Tuple[float, float]]:
    """The paper's bins, 290-360 MMACs in 10M steps under a 330M budget, scaled to this space and budget:
    [budget * 290/330, budget * 360/330] clipped to the space's cost range, in `count` equal bins."""
    lo_space, hi_space = cost_range
    if budget is None:
        lo, hi = lo_space, hi_space
    else:
        lo, hi = max(lo_space, budget * 290 / 330), min(hi_space, budget * 360 / 330)
        if lo >= hi:
            lo, hi = lo_space, hi_space
    edges = np.linspace(lo, hi, count + 1)
    return [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]


class FlopsBinSampler:
    """Draw a cost bin uniformly, then rejection-sample uniform paths until one falls inside it.

    Bins that `probe` uniform paths (a fixed RNG) never reach are dropped first: a small space (or one whose
    paths' costs cluster) may hold no path in some bins, where rejection sampling would never end."""

    def __init__(self, space, bins: Sequence[Tuple[float, float]], cost: Callable, max_tries: int = 100000,
                 probe: int = 5000):
        if not bins:
            raise ValueError("FlopsBinSampler: expected at least one bin")
        self.space, self.cost, self.max_tries = space, cost, max_tries
        bins = [tuple(b) for b in bins]
        if probe:
            rng = np.random.RandomState(0)
            costs = np.array([cost(space.sample(rng)) for _ in range(probe)])
            reached = [b for b in bins if ((costs >= b[0]) & (costs <= b[1])).any()]
            if not reached:
                raise ValueError(f"no cost bin holds a path of the space: bins {bins[0][0]:.4g}-{bins[-1][1]:.4g}, "
                                 f"{probe} sampled paths cost {costs.min():.4g}-{costs.max():.4g}")
            bins = reached
        self.bins = bins

    def __call__(self, rng: np.random.RandomState):
        lo, hi = self.bins[rng.randint(len(self.bins))]
        for _ in range(self.max_tries):
            arch = self.space.sample(rng)
            if lo <= self.cost(arch) <= hi:
                return arch
        raise RuntimeError(f"no path of the space found in the cost bin [{lo:.4g}, {hi:.4g}] after "
                           f"{self.max_tries} draws; widen sampler.bins")


class EvolutionSearch:
    """Population `population`, the `select` best as parents, `mutations` mutants (per-gene `prob`) plus
    `crossovers` children per generation, refilled with random legal paths; `generations` rounds. Legal: cost
    <= budget and not scored before. Scores are maximised."""

    def __init__(self, space, cost: Callable, budget: Optional[float], *, population: int = 50, select: int = 10,
                 mutations: int = 25, crossovers: int = 25, prob: float = 0.1, generations: int = 20,
                 seed: int = 0, max_tries_factor: int = 10):
        self.space, self.cost, self.budget = space, cost, budget
        self.population, self.select, self.mutations, self.crossovers = population, select, mutations, crossovers
        self.prob, self.generations, self.max_tries_factor = prob, generations, max_tries_factor
        self.rng = np.random.RandomState(seed)
        self.generation = 0
        self.scores: Dict[str, float] = {}
        self.archs: Dict[str, list] = {}
        self.queue: List[list] = []        # candidates of the current generation still to be scored
        self.members: List[str] = []       # keys of the current generation's candidates
        self.top: List[str] = []           # best `select` so far
        self.history: List[dict] = []      # per generation: candidates with cost and score, top score
        self.started = False

    # ---------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"generation": self.generation, "scores": dict(self.scores), "archs": dict(self.archs),
                "queue": [list(a) for a in self.queue], "members": list(self.members), "top": list(self.top),
                "history": list(self.history), "started": self.started, "rng": _rng_state(self.rng)}

    def load_state_dict(self, state: dict) -> None:
        self.generation, self.started = int(state["generation"]), bool(state["started"])
        self.scores, self.archs = dict(state["scores"]), {k: list(v) for k, v in state["archs"].items()}
        self.queue, self.members = [list(a) for a in state["queue"]], list(state["members"])
        self.top, self.history = list(state["top"]), list(state["history"])
        self.rng.set_state(_rng_from_state(state["rng"]))

    # ---------------------------------------------------------------------------------- candidates
    def legal(self, arch, taken: set) -> bool:
        key = _key(arch)
        if key in self.scores or key in taken:
            return False
        return self.budget is None or self.cost(arch) <= self.budget

    def _collect(self, make, count: int, taken: set) -> List[list]:
        out = []
        for _ in range(self.max_tries_factor * max(count, 1)):
            if len(out) >= count:
                break
            arch = make()
            if arch is not None and self.legal(arch, taken):
                taken.add(_key(arch))
                out.append(arch)
        return out

    def _next_generation(self) -> List[list]:
        taken: set = set()
        cands: List[list] = []
        if self.top:
            parents = [self.archs[k] for k in self.top]
            cands += self._collect(lambda: self.space.mutate(parents[self.rng.randint(len(parents))], self.rng,
                                                            self.prob), self.mutations, taken)
            cands += self._collect(lambda: self.space.crossover(parents[self.rng.randint(len(parents))],
                                                               parents[self.rng.randint(len(parents))], self.rng),
                                   self.crossovers, taken)
        cands += self._collect(lambda: self.space.sample(self.rng), self.population - len(cands), taken)
        return cands

    # ---------------------------------------------------------------------------------- the search
    def run(self, score: Callable[[list], float], on_progress: Optional[Callable[[], None]] = None,
            log: Optional[Callable[[dict], None]] = None) -> Tuple[list, float]:
        """score(arch) -> float (higher is better); on_progress() after every scored candidate (checkpoint)."""
        while self.generation < self.generations:
            if not self.started:
                self.queue = self._next_generation()
                self.members = [_key(a) for a in self.queue]
                self.started = True
                if on_progress:
                    on_progress()
            while self.queue:
                arch = self.queue[0]
                key = _key(arch)
                self.scores[key] = float(score(arch))
                self.archs[key] = list(arch)
                self.queue.pop(0)
                if on_progress:
                    on_progress()
            pool = sorted(set(self.top) | set(self.members), key=lambda k: (-self.scores[k], k))
            self.top = pool[: self.select]
            record = {"generation": self.generation,
                      "candidates": [{"arch": self.archs[k], "cost": float(self.cost(self.archs[k])),
                                      "score": self.scores[k]} for k in self.members],
                      "top_score": self.scores[self.top[0]] if self.top else None}
            self.history.append(record)
            if log:
                log({"generation": self.generation, "scored": len(self.members), "top_score": record["top_score"],
                     "top_cost": float(self.cost(self.archs[self.top[0]])) if self.top else None})
            self.generation += 1
            self.started = False
            if on_progress:
                on_progress()
        if not self.top:
            raise RuntimeError("the evolutionary search found no legal candidate (budget below every path?)")
        best = self.top[0]
        return self.archs[best], self.scores[best]


def _rng_state(rng: np.random.RandomState) -> dict:
    name, keys, pos, has_gauss, cached = rng.get_state()
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _rng_from_state(state: dict) -> tuple:
    return (state["name"], np.asarray(state["keys"], dtype=np.uint32), state["pos"], state["has_gauss"],
            state["cached"])
