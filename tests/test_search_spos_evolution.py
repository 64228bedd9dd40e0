"""SPOS: the FLOPs-bin sampler and the evolutionary search on the ShuffleNetV2 space (resumable mid-search)."""
import copy

import numpy as np
import pytest

from nas_zoo.search.evolution import EvolutionSearch, FlopsBinSampler, default_bins
from nas_zoo.search.spaces.shufflenet import ShuffleNetSpace


@pytest.fixture(scope="module")
def space():
    return ShuffleNetSpace()


def mmacs(space):
    return lambda arch: space.cost(arch, "macs") / 1e6


def test_paper_bins_under_the_paper_budget(space):
    bins = default_bins((270.0, 400.0), 330.0)
    assert bins[0][0] == pytest.approx(290) and bins[-1][1] == pytest.approx(360) and len(bins) == 7
    assert all(b - a == pytest.approx(10) for a, b in bins)
    # a budget outside the space falls back to the space's range
    assert default_bins((270.0, 400.0), 100.0)[0][0] == 270.0


def test_flops_bin_sampler_draws_inside_bins_and_covers_them(space):
    cost = mmacs(space)
    bins = default_bins((c / 1e6 for c in space.cost_range()), 330.0)
    sampler = FlopsBinSampler(space, bins, cost)
    rng = np.random.RandomState(0)
    seen = set()
    for _ in range(60):
        arch = sampler(rng)
        c = cost(arch)
        idx = [i for i, (lo, hi) in enumerate(bins) if lo <= c <= hi]
        assert idx, c
        seen.update(idx)
    assert seen == set(range(len(bins)))  # uniform over bins, not over paths (which pile up mid-range)


def test_bins_without_paths_are_dropped_and_none_left_is_a_clear_error(space):
    sampler = FlopsBinSampler(space, [(1.0, 2.0), (300.0, 320.0)], mmacs(space), probe=500)
    assert sampler.bins == [(300.0, 320.0)]
    with pytest.raises(ValueError, match="no cost bin holds a path"):
        FlopsBinSampler(space, [(1.0, 2.0)], mmacs(space), probe=200)
    with pytest.raises(RuntimeError, match="cost bin"):  # a bin the probe reached but the draws do not
        FlopsBinSampler(space, [(1.0, 2.0)], mmacs(space), max_tries=50, probe=0)(np.random.RandomState(0))


def toy_score(arch):
    # a deterministic score with a known best under a budget: more 7x7 / xception is better
    return float(sum(c in (2, 3) for c in arch)) + 0.01 * sum(arch)


def make_search(space, **kw):
    args = dict(population=12, select=4, mutations=6, crossovers=6, prob=0.1, generations=5, seed=3)
    args.update(kw)
    return EvolutionSearch(space, mmacs(space), 330.0, **args)


def test_evolution_improves_and_respects_the_budget(space):
    search = make_search(space)
    best, score = search.run(toy_score)
    assert mmacs(space)(best) <= 330.0
    firsts = [max(c["score"] for c in g["candidates"]) for g in search.history]
    assert score == max(search.scores.values()) and score >= firsts[0]
    assert all(c["cost"] <= 330.0 for g in search.history for c in g["candidates"])
    assert len(search.history) == 5 and all(len(g["candidates"]) == 12 for g in search.history)
    # no candidate is scored twice
    assert sum(len(g["candidates"]) for g in search.history) == len(search.scores)
    tops = [g["top_score"] for g in search.history]
    assert tops == sorted(tops)


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", [1, 7, 13, 40])
def test_evolution_resumes_mid_search_identically(space, kill_at):
    whole = make_search(space)
    expected = whole.run(toy_score)

    saved = {}
    calls = {"n": 0}
    first = make_search(space)

    def checkpoint():
        saved["state"] = copy.deepcopy(first.state_dict())
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise Killed

    with pytest.raises(Killed):
        first.run(toy_score, on_progress=checkpoint)
    again = make_search(space, seed=999)  # the seed is in the state
    again.load_state_dict(saved["state"])
    assert again.run(toy_score) == expected
    assert again.history == whole.history
