"""`nas-zoo plot`: ImageNet top-1 against MACs and parameters for the zoo and your own entries (PNG).

MACs and parameters are counted (conv+linear MACs at each model's eval resolution, as `nas-zoo list`); top-1 is
the paper's, or a number of yours (an entry's ``paper.top1``, or ``--top1 NAME=VALUE`` from `nas-zoo validate`).
Needs matplotlib: ``pip install nas-zoo[plot]``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Dict, List, Optional


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="accuracy vs MACs and params of the zoo plus your entries, as a PNG",
                       description="Plot ImageNet top-1 against counted MACs and parameters for every registered "
                                   "zoo model, plus any entries you add, so you can see where a searched model "
                                   "lands. Entries without a top-1 are drawn as a vertical line at their cost.")
    p.add_argument("--out", default="nas_zoo.png", help="PNG file to write (default: nas_zoo.png)")
    p.add_argument("--entries", nargs="*", default=[], metavar="PATH",
                   help="entry YAML files or directories of them to highlight (NAS_ZOO_ENTRIES ones are "
                        "highlighted too)")
    p.add_argument("--top1", nargs="*", default=[], metavar="NAME=VALUE",
                   help="top-1 for a model, e.g. from `nas-zoo validate` (overrides the paper's)")
    p.add_argument("--family", help="only entries of this family")
    p.add_argument("--dpi", type=int, default=150)
    p.set_defaults(func=run)


def collect(user_paths: List[str], top1_overrides: Dict[str, float], family: Optional[str] = None) -> List[dict]:
    """One record per model: name, method, params, macs, top1 (None when unknown), user (highlighted)."""
    from ..registry import ENTRIES_ENV, builtin_entry_dir, list_entries, register_directory, register_entry
    from .zoo import measure

    user = set()
    for path in user_paths:
        path = Path(path)
        user.update(register_directory(path) if path.is_dir() else [register_entry(path)])
    builtin = {p.stem for p in builtin_entry_dir().glob("*.yaml")}
    env_dirs = [d for d in os.environ.get(ENTRIES_ENV, "").split(os.pathsep) if d.strip()]
    user.update(p.stem for d in env_dirs for p in Path(d).glob("*.yaml"))
    records = []
    for entry in sorted(list_entries(family), key=lambda e: e.name):
        cost = measure(entry)
        top1 = top1_overrides.get(entry.name, entry.paper.get("top1"))
        records.append({"name": entry.name, "method": str(entry.provenance.get("method") or entry.family),
                        "params": cost["params"] / 1e6, "macs": cost["macs"] / 1e6,
                        "res": cost["input_size"][-1], "top1": top1,
                        "user": entry.name in user or entry.name not in builtin})
    return records


def draw(records: List[dict], out: str, dpi: int = 150) -> Path:
    """Top row: the whole zoo against MACs and parameters. Where labels crowd (several models of similar cost
    and accuracy), a second row shows the boxed region in detail, so every label stays readable."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({r["method"] for r in records if not r["user"]})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    scored = [r for r in records if r["top1"] is not None]
    keys = (("macs", "MACs (M, conv+linear, counted at eval resolution; log scale)"),
            ("params", "parameters (M, log scale)"))
    fig, grid = plt.subplots(2, 2, figsize=(15, 12.5), constrained_layout=True,
                             gridspec_kw={"height_ratios": [1, 1.15]})
    top, detail = grid[0], grid[1]
    for ax, (key, label) in zip(top, keys):
        _draw_series(ax, records, key, methods, colors, big=True)
        ax.margins(x=0.08, y=0.06)  # room for the labels of the outermost models
        _log_axis(ax, [r[key] for r in records])
        ax.set_xlabel(label)
        ax.set_ylabel("ImageNet top-1 (%)")
    top[0].legend(loc="upper left", fontsize=9, title="searched by")
    fig.suptitle("nas-zoo: accuracy vs cost (top-1 as reported by the papers unless given)", fontsize=12)
    fig.canvas.draw()
    crowded = {key: _place_labels(fig, ax, scored, key, first_only=True) for ax, (key, _) in zip(top, keys)}
    if not any(crowded.values()):  # nothing crowds: one row is enough
        for ax in detail:
            fig.delaxes(ax)
        one_row = fig.add_gridspec(1, 2)
        for i, ax in enumerate(top):
            ax.set_subplotspec(one_row[0, i])
        fig.set_size_inches(15, 6.5)
    else:
        for ax, (key, label) in zip(detail, keys):
            box = _zoom_box(crowded[key] or scored, key)
            _draw_series(ax, records, key, methods, colors, big=True)
            ax.set_xlim(box[0], box[1])
            ax.set_ylim(box[2], box[3])
            _log_axis(ax, [box[0], box[1]])
            ax.set_xlabel(f"{label}: detail of the boxed region")  # a title would meet the no-top-1 names
            ax.set_ylabel("ImageNet top-1 (%)")
    fig.canvas.draw()
    fig.set_layout_engine("none")  # freeze the layout: label boxes measured from now on stay where they are
    for ax in fig.axes:  # and the limits: the box outlines must not rescale the axes
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
    for i, (key, _) in enumerate(keys):
        if not any(crowded.values()):
            _place_labels(fig, top[i], scored, key)
            continue
        x0, x1 = detail[i].get_xlim()
        y0, y1 = detail[i].get_ylim()
        top[i].add_patch(matplotlib.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="0.35", lw=1,
                                                      ls="--", zorder=1))
        inside = [r for r in scored if x0 <= r[key] <= x1 and y0 <= r["top1"] <= y1]
        _place_labels(fig, top[i], [r for r in scored if r not in inside], key)
        _place_labels(fig, detail[i], inside, key)
    from ..io import atomic_write
    fmt = Path(out).suffix.lstrip(".") or "png"
    try:
        return atomic_write(out, lambda f: fig.savefig(f, dpi=dpi, format=fmt))
    finally:
        plt.close(fig)


def _draw_series(ax, records, key, methods, colors, big: bool) -> None:
    for method in methods:
        pts = sorted((r for r in records if r["method"] == method and not r["user"] and r["top1"] is not None),
                     key=lambda r: r[key])
        ax.plot([r[key] for r in pts], [r["top1"] for r in pts], "o-", color=colors[method], lw=1.2,
                ms=6, alpha=0.85, label=method)
    mine = [r for r in records if r["user"] and r["top1"] is not None]
    if mine:
        ax.scatter([r[key] for r in mine], [r["top1"] for r in mine], marker="*", s=260, color="crimson",
                   edgecolor="black", linewidth=0.6, zorder=5, label="your entries")
    for r in records:
        if r["top1"] is None:  # a searched model without a measured accuracy yet: show where its cost lands
            ax.axvline(r[key], color="crimson", ls="--", lw=1)
            # named just above the axes, where no marker or label can hide it
            ax.annotate(f"{r['name']}: no top-1 yet", (r[key], 1.0), xycoords=("data", "axes fraction"),
                        textcoords="offset points", xytext=(0, 2), fontsize=8, color="crimson",
                        ha="center", va="bottom", annotation_clip=True)
    ax.grid(True, which="both", alpha=0.3)


def _log_axis(ax, values) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    shown = "23456789" if max(values) / min(values) < 20 else "25"  # more minor labels on a short axis
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _, shown=shown: f"{v:g}" if f"{v:g}"[0] in shown
                                               else ""))


def _zoom_box(crowded: List[dict], key: str):
    xs, ys = [r[key] for r in crowded], [r["top1"] for r in crowded]
    return min(xs) / 1.08, max(xs) * 1.12, min(ys) - 0.4, max(ys) + 0.4


# label offsets (points) tried in turn; the first that overlaps no other label and no marker wins
_OFFSETS = [(6, -4), (6, 6), (6, -14), (-6, 6), (-6, -14), (6, 16), (6, -24), (-6, 16), (-6, -24), (6, 26),
            (6, -34), (-6, 26), (-6, -34), (6, 36), (-6, 36), (6, -44), (-6, -44)]


def _groups(ax, records: List[dict], key: str, tolerance: float = 10.0) -> List[List[dict]]:
    """Models drawn closer than a label is tall (pixels) share one label."""
    groups: List[List[dict]] = []
    spots = []
    for r in sorted(records, key=lambda r: (r[key], r["top1"])):
        x, y = ax.transData.transform((r[key], r["top1"]))
        for spot, group in zip(spots, groups):
            if abs(spot[0] - x) <= tolerance and abs(spot[1] - y) <= tolerance:
                group.append(r)
                break
        else:
            spots.append((x, y))
            groups.append([r])
    return groups


def _place_labels(fig, ax, records: List[dict], key: str, first_only: bool = False) -> List[dict]:
    """Greedy label placement, so clusters stay readable without a label-placement package. With `first_only`
    nothing is drawn: returns the records whose label, right beside its marker, would cover another label or
    marker (the crowded ones)."""
    from matplotlib.text import Text

    renderer = fig.canvas.get_renderer()
    groups = _groups(ax, records, key)
    markers = [ax.transData.transform((r[key], r["top1"])) for r in records]
    taken = [(x - 4, y - 4, x + 4, y + 4) for x, y in markers]
    frame = ax.get_window_extent(renderer)  # labels stay inside their axes
    crowded = []
    for group in sorted(groups, key=lambda g: (-max(r["user"] for r in g), g[0][key])):
        r = group[0]
        text = " / ".join(m["name"] + (f" @{m['res']}" if m["res"] != 224 else "") for m in group)
        placed = False
        for dx, dy in (_OFFSETS[:1] if first_only else _OFFSETS):
            label = ax.annotate(text, (r[key], r["top1"]), textcoords="offset points", xytext=(dx, dy),
                                ha="left" if dx > 0 else "right", fontsize=8,
                                color="crimson" if any(m["user"] for m in group) else "0.2",
                                arrowprops=None if (dx, dy) == _OFFSETS[0] else
                                dict(arrowstyle="-", color="0.6", lw=0.5))
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer)  # the text only, not its leader line
            rect = (box.x0, box.y0, box.x1, box.y1)
            clear = not any(_overlap(rect, t) for t in taken)
            if first_only:  # crowded: the label right beside the marker covers another label or marker
                label.remove()
                taken.append(rect)
                placed = clear
                break
            fits = clear and frame.x0 <= rect[0] and rect[2] <= frame.x1 and frame.y0 <= rect[1] and rect[3] <= frame.y1
            if fits:
                taken.append(rect)
                placed = True
                break
            label.remove()
        if first_only:
            if not placed:
                crowded.extend(group)
            continue
        if not placed:  # no free spot: keep the first choice rather than drop the name
            ax.annotate(text, (r[key], r["top1"]), textcoords="offset points", xytext=_OFFSETS[0],
                        fontsize=8, color="0.2")
    return crowded


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def parse_top1(items: List[str]) -> Dict[str, float]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"--top1 {item!r}: expected NAME=VALUE with a number, e.g. dna_a=77.1") from None
        if not sep or not name:
            raise ValueError(f"--top1 {item!r}: expected NAME=VALUE, e.g. dna_a=77.1")
    return out


def run(args) -> int:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("nas-zoo plot: error: needs matplotlib: pip install 'nas-zoo[plot]'", file=sys.stderr)
        return 2
    try:
        top1 = parse_top1(args.top1)
    except ValueError as e:
        print(f"nas-zoo plot: error: {e}", file=sys.stderr)
        return 2
    records = collect(args.entries, top1, args.family)
    path = draw(records, args.out, dpi=args.dpi)
    print(f"wrote {path} ({len(records)} models)")
    return 0
