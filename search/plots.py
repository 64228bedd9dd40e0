"""Figures of a run directory, written beside its files when matplotlib is installed (`pip install nas-zoo[plot]`):

* a DNA search -> `search.png`: the best summed potential within every budget (the exact cost/potential front
  of the whole space, `dna_select.pareto_front`), the budget and the chosen architecture; and each stage's
  distillation loss per epoch;
* a training run -> `curves.png`: train/val loss and val top-1 (and the EMA's) per epoch;
* the main job -> `compare.png`: val top-1 per epoch of the found model and the zoo model.

`nas-zoo-search plot RUN_DIR` draws them again for a finished run.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Union

__all__ = ["plot_run", "plot_dna_search", "plot_training", "plot_comparison", "have_matplotlib"]

PathLike = Union[str, os.PathLike]


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed, none opened
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    """Write the figure through a temporary file (a reader never sees half a PNG), then free it."""
    import matplotlib.pyplot as plt
    from nas_zoo.io import atomic_write
    try:
        return atomic_write(path, lambda f: fig.savefig(f, dpi=130, bbox_inches="tight", format="png"))
    finally:
        plt.close(fig)


def _epoch_axis(ax, ylabel: str, legend: bool = True) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=8)


def _log_rows(run_dir: Path) -> List[dict]:
    path = run_dir / "log.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_dna_search(run_dir: PathLike) -> Path:
    """`RUN_DIR/search.png` for a finished DNA search (needs entry.yaml, the potentials and the cost tables)."""
    import yaml
    from .cost import DISPLAY_UNITS
    from .methods.dna_select import load_potentials, pareto_front
    from .cost import CostTable

    run_dir = Path(run_dir)
    entry = yaml.safe_load((run_dir / "entry.yaml").read_text())
    prov = entry["provenance"]
    kind, metric = prov["cost"]["kind"], prov["score"]["metric"]
    pot_dir = run_dir / "potentials"  # the run's own copy, also when the directory was moved
    stages = load_potentials([pot_dir / Path(p).name for p in prov["potentials"]])
    table = CostTable.from_json(pot_dir / f"cost-{kind}.json")
    front_cost, front_score = pareto_front(stages, table, metric)
    scale, unit = DISPLAY_UNITS[kind]
    x = front_cost / scale

    fig, (ax, bx) = _pyplot().subplots(1, 2, figsize=(12, 4.4))
    ax.step(x, front_score, where="post", color="tab:blue", lw=1.5,
            label=f"best architecture within the budget ({len(x)} on the front)")
    ax.plot(x, front_score, ".", color="tab:blue", ms=3)
    ax.axvline(prov["cost"]["budget_value"], color="tab:gray", ls="--", lw=1, label=f"budget {prov['cost']['budget']}")
    ax.plot([prov["cost"]["value"]], [prov["score"]["sum"]], "*", color="tab:red", ms=14,
            label=f"{entry['name']}: {prov['cost']['value']:.3g} {unit}")
    ax.set_xlabel(f"{kind} at {prov['cost']['image_size']} px ({unit})")
    ax.set_ylabel(f"sum of stage {metric} (lower is better)")
    ax.set_title("DNA search: exact cost / potential front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    losses: Dict[int, Dict[int, float]] = {}
    for row in _log_rows(run_dir):
        phase = str(row.get("phase", ""))
        if phase.startswith("stage ") and "train_loss" in row:
            losses.setdefault(int(phase.split()[1]), {})[int(row["epoch"])] = float(row["train_loss"])
    for s in sorted(losses):
        epochs = sorted(losses[s])
        bx.plot(epochs, [losses[s][e] for e in epochs], "o-", ms=3, label=f"stage {s}")
    bx.set_title("block-wise distillation")
    _epoch_axis(bx, "distillation loss (MSE to the teacher block)", legend=bool(losses))
    return _save(fig, run_dir / "search.png")


def _model_name(run_dir: Path) -> str:
    """The trained model's name: the entry's for an entry file or search run, else as given (teacher: the folder)."""
    import yaml
    try:
        model = json.loads((run_dir / "run.json").read_text())["model"]
    except (OSError, ValueError, KeyError):
        return run_dir.name
    entry = Path(model) if str(model).endswith((".yaml", ".yml")) else Path(model) / "entry.yaml"
    try:
        return str(yaml.safe_load(entry.read_text())["name"])
    except (OSError, yaml.YAMLError, TypeError, KeyError):
        return str(model)


def plot_training(run_dir: PathLike) -> Path:
    """`RUN_DIR/curves.png` from a training run's metrics.json."""
    run_dir = Path(run_dir)
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    epochs = [h["epoch"] for h in history]
    fig, (ax, bx) = _pyplot().subplots(1, 2, figsize=(11, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val"), ("val_ema_loss", "val (EMA)")):
        if any(key in h for h in history):
            ax.plot(epochs, [h.get(key) for h in history], "o-", ms=3, label=label)
    for key, label in (("val_top1", "val"), ("val_ema_top1", "val (EMA)")):
        if any(key in h for h in history):
            bx.plot(epochs, [h.get(key) for h in history], "o-", ms=3, label=label)
    _epoch_axis(ax, "loss")
    _epoch_axis(bx, "top-1 (%)")
    fig.suptitle(f"training {_model_name(run_dir)}")
    return _save(fig, run_dir / "curves.png")


def plot_comparison(runs: Dict[str, PathLike], out: PathLike, title: str = "") -> Path:
    """Val top-1 per epoch of several training runs ({label: run_dir}) in one figure: `out` (PNG)."""
    fig, ax = _pyplot().subplots(figsize=(6.5, 4))
    for label, run_dir in runs.items():
        history = json.loads((Path(run_dir) / "metrics.json").read_text())["history"]
        ax.plot([h["epoch"] for h in history], [h["val_top1"] for h in history], "o-", ms=3, label=label)
    ax.set_title(title)
    _epoch_axis(ax, "val top-1 (%)")
    return _save(fig, Path(out))


def plot_run(run_dir: PathLike) -> Path:
    """The figure of a finished run; needs matplotlib (see `have_matplotlib`). A search run is drawn by its method
    (`Method.plot`, found through the run's own record, run.json), a training run as its curves."""
    run_dir = Path(run_dir)
    command = None
    if (run_dir / "run.json").is_file():
        command = json.loads((run_dir / "run.json").read_text()).get("command")
    if command not in (None, "train"):
        from .methods import methods
        method = methods().get(command)
        figure = method.plot(run_dir) if method is not None and method.plot is not None else None
        if figure is not None:
            return Path(figure)
    if (run_dir / "metrics.json").exists():  # a training run (also a search's teacher/ folder)
        return plot_training(run_dir)
    raise FileNotFoundError(f"{run_dir}: neither a finished search nor a finished training run (metrics.json)")


def plot_dsnas(run_dir: PathLike) -> Optional[Path]:
    run_dir = Path(run_dir)
    if not (run_dir / "alpha_history.json").exists():
        return None
    records = json.loads((run_dir / "alpha_history.json").read_text())
    return plot_alpha_history(records, len(records[0]["probs"]) if records else 0, run_dir / "alpha.png")


def plot_spos(run_dir: PathLike) -> Optional[Path]:
    run_dir = Path(run_dir)
    if not (run_dir / "population.json").exists():
        return None
    meta = json.loads((run_dir / "population.json").read_text())
    return plot_population(meta["history"], run_dir / "population.png", budget=meta.get("budget"),
                           unit=meta.get("unit", "MMACs"), chosen=meta.get("chosen"))


def plot_dna(run_dir: PathLike) -> Optional[Path]:
    run_dir = Path(run_dir)
    if not ((run_dir / "entry.yaml").exists() and (run_dir / "potentials").is_dir()):
        return None
    return plot_dna_search(run_dir)


OP_NAMES = ("3x3", "5x5", "7x7", "xception")


def plot_alpha_history(records: List[dict], num_layers: int, out: PathLike) -> Path:
    """DSNAS: softmax(alpha) of every layer per epoch (one panel per layer, one line per op); the epoch a layer
    was fixed by early fix is marked, and the fixed op drawn thick; layers the space holds at one op are greyed."""
    plt = _pyplot()
    cols = min(5, num_layers)
    rows = (num_layers + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 1.9 * rows), sharex=True, sharey=True, squeeze=False)
    epochs = [r["epoch"] + 1 for r in records]
    held = {int(k): v for k, v in (records[0].get("held", {}) if records else {}).items()}
    for layer in range(num_layers):
        ax = axes[layer // cols][layer % cols]
        if layer in held:  # the space holds this layer at one op: alpha is not learnt there
            ax.set_title(f"layer {layer} (held: {OP_NAMES[held[layer]]})", fontsize=8, color="0.45")
            ax.set_facecolor("0.94")
            ax.set_ylim(0, 1)
            continue
        fixed_at = next((r["epoch"] + 1 for r in records if str(layer) in r["fixed"] or layer in r["fixed"]), None)
        fixed_op = None
        if fixed_at is not None:
            last = records[-1]["fixed"]
            fixed_op = last.get(str(layer), last.get(layer))
            ax.axvline(fixed_at, color="k", ls=":", lw=1)
        for op in range(len(records[0]["probs"][layer]) if records else 0):
            ax.plot(epochs, [r["probs"][layer][op] for r in records], lw=2.2 if op == fixed_op else 1,
                    label=OP_NAMES[op] if op < len(OP_NAMES) else str(op))
        ax.set_title(f"layer {layer}" + (f" (fixed: {OP_NAMES[fixed_op]})" if fixed_op is not None else ""),
                     fontsize=8)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for k in range(num_layers, rows * cols):
        axes[k // cols][k % cols].axis("off")
    learnt = [layer for layer in range(num_layers) if layer not in held]
    if learnt:
        axes[learnt[0] // cols][learnt[0] % cols].legend(fontsize=6)
    fig.supxlabel("epoch")
    fig.supylabel("softmax(alpha)")
    return _save(fig, Path(out))


def plot_population(history: List[dict], out: PathLike, budget: float = None, unit: str = "MMACs",
                    chosen: dict = None) -> Path:
    """SPOS: every scored candidate's cost vs held-out score, coloured by generation; the budget and the winner."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    cmap = plt.get_cmap("viridis")
    n = max(1, len(history) - 1)
    for g in history:
        cs = g["candidates"]
        ax.scatter([c["cost"] for c in cs], [c["score"] for c in cs], s=10, color=cmap(g["generation"] / n),
                   label=f"gen {g['generation']}" if g["generation"] in (0, len(history) - 1) else None)
    if budget is not None:
        ax.axvline(budget, color="r", ls="--", lw=1, label="budget")
    if chosen is not None:
        ax.scatter([chosen["cost"]], [chosen["score"]], marker="*", s=160, color="r", label="chosen")
    ax.set_xlabel(f"cost ({unit})")
    ax.set_ylabel("held-out top-1 after BN recalibration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(out))
