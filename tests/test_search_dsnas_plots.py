"""The DSNAS alpha figure and the SPOS population figure, drawn by `plot_run` through the run's method."""
import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")
from nas_zoo.search.plots import plot_run  # noqa: E402


def test_plot_run_draws_dsnas_alpha_and_spos_population(tmp_path):
    rng = np.random.RandomState(0)
    records = [{"epoch": e, "probs": rng.dirichlet([1] * 4, size=6).tolist(), "arch": [0] * 6,
                "fixed": {"2": 1} if e > 1 else {}} for e in range(4)]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "run.json").write_text('{"command": "dsnas"}')  # plot_run asks the run's method
    (tmp_path / "d" / "alpha_history.json").write_text(json.dumps(records))
    assert plot_run(tmp_path / "d").name == "alpha.png" and (tmp_path / "d" / "alpha.png").stat().st_size > 1000
    history = [{"generation": g, "candidates": [{"arch": [0], "cost": float(c), "score": float(s)}
                                                for c, s in rng.rand(5, 2)]} for g in range(3)]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "run.json").write_text('{"command": "spos"}')
    (tmp_path / "s" / "population.json").write_text(json.dumps(
        {"history": history, "budget": 0.8, "unit": "MMACs", "chosen": {"cost": 0.5, "score": 0.9}}))
    assert plot_run(tmp_path / "s").name == "population.png"
