"""The honest baseline of NAS: random architectures of the same space at the found architecture's cost.

A search result means something only beside what chance gives at the same cost, trained with the same recipe.
`same_cost_archs` draws them (rejection sampling within a relative cost tolerance, widened step by step when the
space has few such architectures).
"""
from __future__ import annotations

from typing import Any, List

import numpy as np

__all__ = ["same_cost_archs", "write_baselines"]


def same_cost_archs(space, arch: Any, n: int = 3, rng: np.random.RandomState | None = None, metric: str = "macs",
                    tolerance: float = 0.05, tries: int = 2000, allow_fewer: bool = False,
                    max_cost: float | None = None, **cost_kw) -> List[Any]:
    """`n` random architectures of `space`, other than `arch`, costing within `tolerance` (relative) of it and
    at most `max_cost` (a search's budget: a baseline gets no more than the search was allowed).
    A space with fewer such architectures raises ValueError, or with `allow_fewer` gives those it has."""
    rng = rng if rng is not None else np.random.RandomState(0)
    target = space.cost(arch, metric, **cost_kw)
    found: List[Any] = []
    tol = tolerance
    while len(found) < n:
        for _ in range(tries):
            cand = space.sample(rng)
            if cand == arch or cand in found:
                continue
            c = space.cost(cand, metric, **cost_kw)
            if abs(c - target) <= tol * target and (max_cost is None or c <= max_cost):
                found.append(cand)
                if len(found) == n:
                    break
        tol *= 2
        if tol > 1.0 and len(found) < n:
            if allow_fewer:
                return found
            raise ValueError(f"the space has fewer than {n} other architectures near the cost {target:g}")
    return found


def write_baselines(job, space, arch: Any, n: int = 3, metric: str = "macs", tolerance: float = 0.05,
                    seed: int | None = None, max_cost: float | None = None, **cost_kw) -> List[Any]:
    """Write `n` same-cost random architectures as entries `RUN_DIR/baselines/random<i>.yaml` (named
    `<name>_random<i>`), for `nas-zoo-search compare RUN_DIR` to train beside the found one. Returns their paths.
    A finished search is never failed here: a space with fewer than `n` such architectures gets a warning and
    the ones it has."""
    import warnings
    from pathlib import Path

    from .export import write_entry
    rng = np.random.RandomState(job.cfg.get("seed", 0) if seed is None else seed)
    archs = same_cost_archs(space, arch, n=n, rng=rng, metric=metric, tolerance=tolerance, allow_fewer=True,
                            max_cost=max_cost, **cost_kw)
    if len(archs) < n:
        warnings.warn(f"the space holds only {len(archs)} other architectures near the found one's cost; "
                      f"{len(archs)} baselines written instead of {n}")
    paths = []
    for i, cand in enumerate(archs):
        paths.append(write_entry(job, space, cand, name=f"{job.cfg['name']}_random{i}",
                                 path=Path(job.run_dir) / "baselines" / f"random{i}.yaml",
                                 description=f"A random architecture of the space of {job.cfg['name']} at its cost "
                                             f"(the baseline of the search).",
                                 provenance={"baseline": {"of": job.cfg["name"], "metric": metric,
                                                          "cost": space.cost(cand, metric, **cost_kw),
                                                          "found_cost": space.cost(arch, metric, **cost_kw)}}))
    return paths
