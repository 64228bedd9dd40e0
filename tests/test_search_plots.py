"""Figures of finished runs (`nas_zoo.search.plots`, `nas-zoo-search plot`)."""
import json

import yaml

from nas_zoo.search import cli as search_cli
from nas_zoo.search import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _training_run(path, epochs=3):
    path.mkdir(parents=True)
    (path / "entry.yaml").write_text(yaml.safe_dump({"name": "my_found_model"}))
    (path / "run.json").write_text(json.dumps({"command": "train", "model": str(path / "entry.yaml")}))
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.1 / e, "val_top1": 30.0 + 10 * e}
               for e in range(1, epochs + 1)]
    (path / "metrics.json").write_text(json.dumps({"final": history[-1], "history": history}))
    return path


def test_training_curves_and_the_model_name(tmp_path):
    run = _training_run(tmp_path / "train")
    assert plots._model_name(run) == "my_found_model"
    path = plots.plot_run(run)
    assert path == run / "curves.png" and path.read_bytes()[:8] == PNG
    assert not list(run.glob(".*.tmp.png"))  # written through a temporary file, then renamed


def test_plot_command_on_a_directory_that_is_no_run(tmp_path, capsys):
    assert search_cli.main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a finished search" in err[0]


def test_without_matplotlib_a_run_says_how_to_get_figures(tmp_path, monkeypatch, capsys):
    run = _training_run(tmp_path / "train")
    monkeypatch.setattr(plots, "have_matplotlib", lambda: False)
    search_cli._figures(run, type("Ctx", (), {"is_main": True})())
    assert "pip install nas-zoo[plot]" in capsys.readouterr().out
    assert not (run / "curves.png").exists()
    assert search_cli.main(["plot", str(run)]) == 2
    assert "plot needs matplotlib" in capsys.readouterr().err


def test_a_broken_figure_warns_and_keeps_the_run(tmp_path, capsys):
    run = _training_run(tmp_path / "train")
    (run / "metrics.json").write_text("{}")  # no history
    search_cli._figures(run, type("Ctx", (), {"is_main": True})())
    assert "figures: not drawn (KeyError" in capsys.readouterr().err
