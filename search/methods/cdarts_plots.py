"""CDARTS figures (matplotlib, no graphviz): the derived cells and the alpha weights over the cycles."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

from nas_zoo.genotype import PRIMITIVES, genotype_from_data

OP_COLOURS = {"max_pool_3x3": "#4c72b0", "avg_pool_3x3": "#55a868", "skip_connect": "#c44e52",
              "sep_conv_3x3": "#8172b2", "sep_conv_5x5": "#ccb974", "dil_conv_3x3": "#64b5cd",
              "dil_conv_5x5": "#937860", "none": "#999999"}


def _draw_cell(ax, nodes: Sequence, concat: Sequence[int], title: str) -> None:
    """States on a line: c_{k-2}, c_{k-1}, nodes 0..n-1, output; one labelled arc per edge."""
    n = len(nodes)
    xs = {0: 0.0, 1: 1.0, **{i + 2: 2.0 + i for i in range(n)}, "out": 2.0 + n}
    names = {0: "c_{k-2}", 1: "c_{k-1}", **{i + 2: str(i) for i in range(n)}, "out": "c_{k}"}
    for key, x in xs.items():
        ax.text(x, 0, names[key], ha="center", va="center", fontsize=9,
                bbox=dict(boxstyle="round", fc="#f0f0f0" if key in (0, 1, "out") else "#d8e8f8", ec="k"))
    for i, node in enumerate(nodes):
        for j, (op, src) in enumerate(node):
            x0, x1 = xs[src], xs[i + 2]
            sign = 1 if j == 0 else -1  # first edge above the line, second below
            ax.annotate("", xy=(x1, 0.08 * sign), xytext=(x0, 0.08 * sign),
                        arrowprops=dict(arrowstyle="->", color=OP_COLOURS.get(op, "k"),
                                        connectionstyle=f"arc3,rad={-0.45 * sign}", lw=1.6))
            # the label at the arc's apex (half the arc3 control offset, rad * chord / 2)
            ax.text((x0 + x1) / 2, sign * (0.12 + 0.225 * (x1 - x0)), op, ha="center", va="center",
                    fontsize=7, color=OP_COLOURS.get(op, "k"), bbox=dict(fc="white", ec="none", pad=0.5))
    for c in concat:
        ax.annotate("", xy=(xs["out"], -0.05), xytext=(xs[c], -0.05),
                    arrowprops=dict(arrowstyle="->", color="#bbbbbb", lw=0.6, connectionstyle="arc3,rad=0.15"))
    ax.set_xlim(-0.6, xs["out"] + 0.6)
    ax.set_ylim(-1.6, 1.6)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def plot_cells(genotype, path: Path, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    g = genotype_from_data(genotype)
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5))
    _draw_cell(axes[0], g.normal, g.normal_concat, f"{title} normal cell".strip())
    _draw_cell(axes[1], g.reduce, g.reduce_concat, f"{title} reduction cell".strip())
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_alphas(history: List[dict], path: Path) -> Path:
    """Per cell type: the mean softmax weight of every op over all edges, after each cycle."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    cycles = [h["cycle"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, kind in zip(axes, ("alpha_normal", "alpha_reduce")):
        means = np.array([np.concatenate([np.asarray(a) for a in h[kind]]).mean(0) for h in history])
        for k, op in enumerate(PRIMITIVES):
            ax.plot(cycles, means[:, k], marker="o", ms=3, label=op, color=OP_COLOURS[op])
        ax.set_title(f"{kind.split('_')[1]} cell: mean softmax(alpha) over edges")
        ax.set_xlabel("cycle")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("op weight")
    axes[1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cdarts(run_dir: Path, history: List[dict]) -> List[Path]:
    run_dir = Path(run_dir)
    if not history:
        return []
    return [plot_cells(history[-1]["genotype"], run_dir / "cells.png", "CDARTS"),
            plot_alphas(history, run_dir / "alphas.png")]
