"""`nas-zoo plot`: top-1 against MACs and parameters for the zoo and your own entries (PNG), one row of panels
per dataset (ImageNet-1k, CIFAR-10, the data a searched entry was searched on).

MACs and parameters are counted where each model is evaluated (conv+linear MACs at its own resolution and number
of classes, as `nas-zoo list`; a searched entry at the resolution and classes of its search); top-1 is the
paper's, or a number of yours (an entry's ``paper.top1``, or ``--top1 NAME=VALUE`` from `nas-zoo validate`).
Needs matplotlib: ``pip install nas-zoo[plot]``.
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="accuracy vs MACs and params of the zoo plus your entries, as a PNG",
                       description="Plot top-1 against counted MACs and parameters for every registered zoo "
                                   "model, plus any entries you add, one row of panels per dataset, so you can "
                                   "see where a searched model lands. Entries without a top-1 are drawn as a "
                                   "vertical line at their cost.")
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
    """One record per model: name, method, dataset, params, macs, res, top1 (None when unknown), user
    (highlighted). Each model is priced where it is evaluated: its own resolution and number of classes."""
    from ..registry import builtin_entry_dir, list_entries, register_directory, register_entry
    from .zoo import measure

    user = set()
    for path in user_paths:
        path = Path(path)
        user.update(register_directory(path) if path.is_dir() else [register_entry(path)])
    builtin = {p.stem for p in builtin_entry_dir().glob("*.yaml")}  # NAS_ZOO_ENTRIES ones are not built in
    records = []
    for entry in sorted(list_entries(family), key=lambda e: e.name):
        cost = measure(entry)
        top1 = top1_overrides.get(entry.name, entry.paper.get("top1"))
        records.append({"name": entry.name, "method": str(entry.provenance.get("method") or entry.family),
                        "dataset": cost["dataset"], "params": cost["params"] / 1e6, "macs": cost["macs"] / 1e6,
                        "res": cost["input_size"][-1], "top1": top1,
                        "user": entry.name in user or entry.name not in builtin})
    return records


def datasets(records: List[dict]) -> List[str]:
    """The datasets of the records, one panel row each: ImageNet first, then by number of models."""
    count = Counter(r["dataset"] for r in records)
    return sorted(count, key=lambda d: (d != "ImageNet-1k", -count[d], d))


def series(records: List[dict]) -> List[Tuple[str, str, List[dict]]]:
    """The lines drawn: (method, dataset, its scored zoo models by cost); never across datasets."""
    lines = []
    for dataset in datasets(records):
        for method in sorted({r["method"] for r in records if r["dataset"] == dataset}):
            pts = [r for r in records if r["method"] == method and r["dataset"] == dataset and not r["user"]
                   and r["top1"] is not None]
            if pts:
                lines.append((method, dataset, sorted(pts, key=lambda r: r["macs"])))
    return lines


# distinct colours (none near the crimson of your entries), each method also with a marker of its own
PALETTE = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive",
           "tab:cyan", "black", "darkgoldenrod", "navy", "lightseagreen", "orchid")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")


def method_styles(records: List[dict]) -> Dict[str, Tuple[str, str]]:
    methods = sorted({r["method"] for r in records if not r["user"]})
    return {m: (PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]) for i, m in enumerate(methods)}


KEYS = (("macs", "MACs (M, conv+linear, counted at eval resolution; log scale)"),
        ("params", "parameters (M, log scale)"))


def draw(records: List[dict], out: str, dpi: int = 150) -> Path:
    """Write `figure(records)` as a PNG (atomically)."""
    import matplotlib.pyplot as plt

    fig = figure(records)
    from ..io import atomic_write
    fmt = Path(out).suffix.lstrip(".") or "png"
    try:
        return atomic_write(out, lambda f: fig.savefig(f, dpi=dpi, format=fmt))
    finally:
        plt.close(fig)


def figure(records: List[dict]):
    """One row of panels per dataset (accuracy against MACs and parameters); where labels crowd (several
    models of similar cost and accuracy), a detail row below shows the boxed region, so every label stays
    readable."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = method_styles(records)
    plan = []
    for dataset in datasets(records):
        mine = [r for r in records if r["dataset"] == dataset]
        plan.append((dataset, mine, _crowded(mine, styles)))
    heights = [h for _, _, crowded in plan for h in ((1, 1.15) if any(crowded.values()) else (1,))]
    fig, grid = plt.subplots(len(heights), 2, figsize=(15, 6.25 * sum(heights)), constrained_layout=True,
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    fig.suptitle("nas-zoo: accuracy vs cost, one row per dataset (top-1 as reported by the papers unless given)",
                 fontsize=12)
    rows = iter(grid)
    panels = []
    for dataset, mine, crowded in plan:
        top = next(rows)
        detail = next(rows) if any(crowded.values()) else None
        scored = [r for r in mine if r["top1"] is not None]
        for ax, (key, label) in zip(top, KEYS):
            _draw_series(ax, mine, key, styles)
            ax.margins(x=0.08, y=0.06)  # room for the labels of the outermost models
            _log_axis(ax, [r[key] for r in mine])
            ax.set_xlabel(label)
            ax.set_ylabel(f"{dataset} top-1 (%)")
            if not scored:  # only costs to show (searched entries without a top-1 yet): no accuracy scale
                ax.set_yticks([])
        if top[0].get_legend_handles_labels()[0]:
            top[0].legend(loc="best", fontsize=9, title=f"{dataset}: searched by")  # labels then avoid it
        if detail is not None:
            for ax, (key, label) in zip(detail, KEYS):
                box = _zoom_box(crowded[key] or scored, key, scored)
                _draw_series(ax, mine, key, styles)
                ax.set_xlim(box[0], box[1])
                ax.set_ylim(box[2], box[3])
                _log_axis(ax, [box[0], box[1]])
                ax.set_xlabel(f"{label}: detail of the boxed region")  # a title would meet the no-top-1 names
                ax.set_ylabel(f"{dataset} top-1 (%)")
        panels.append((scored, top, detail))
    fig.canvas.draw()
    fig.set_layout_engine("none")  # freeze the layout: label boxes measured from now on stay where they are
    for ax in fig.axes:  # and the limits: the box outlines must not rescale the axes
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
    for scored, top, detail in panels:
        for i, (key, _) in enumerate(KEYS):
            if detail is None:
                _place_labels(fig, top[i], scored, key)
                continue
            x0, x1 = detail[i].get_xlim()
            y0, y1 = detail[i].get_ylim()
            top[i].add_patch(matplotlib.patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="0.35",
                                                          lw=1, ls="--", zorder=1))
            inside = [r for r in scored if x0 <= r[key] <= x1 and y0 <= r["top1"] <= y1]
            _place_labels(fig, top[i], [r for r in scored if r not in inside], key)
            _place_labels(fig, detail[i], inside, key)
    return fig


def _crowded(records: List[dict], styles) -> Dict[str, List[dict]]:
    """key -> the models whose label right beside the marker would cover another, on a scratch overview row of
    the final panel size."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 6.25), constrained_layout=True)
    scored = [r for r in records if r["top1"] is not None]
    for ax, (key, _) in zip(axes, KEYS):
        _draw_series(ax, records, key, styles)
        ax.margins(x=0.08, y=0.06)
        _log_axis(ax, [r[key] for r in records])
    fig.canvas.draw()
    crowded = {key: _place_labels(fig, ax, scored, key, first_only=True) for ax, (key, _) in zip(axes, KEYS)}
    plt.close(fig)
    return crowded


def _draw_series(ax, records, key, styles) -> None:
    for method, _, pts in series(records):
        color, marker = styles[method]
        ax.plot([r[key] for r in pts], [r["top1"] for r in pts], "-", marker=marker, color=color, lw=1.2,
                ms=6, alpha=0.85, label=method)
    mine = [r for r in records if r["user"] and r["top1"] is not None]
    if mine:
        ax.scatter([r[key] for r in mine], [r["top1"] for r in mine], marker="*", s=260, color="crimson",
                   edgecolor="black", linewidth=0.6, zorder=5, label="your entries")
    unscored = sorted((r for r in records if r["top1"] is None), key=lambda r: r[key])
    for i, r in enumerate(unscored):  # searched models without a measured accuracy yet: where their cost lands
        ax.axvline(r[key], color="crimson", ls="--", lw=1)
        # named just above the axes, where no marker or label can hide it; stacked when there are several
        ax.annotate(f"{r['name']} @{r['res']}: no top-1 yet", (r[key], 1.0), xycoords=("data", "axes fraction"),
                    textcoords="offset points", xytext=(0, 2 + 11 * i), fontsize=8, color="crimson",
                    ha="center", va="bottom", annotation_clip=True)
    ax.grid(True, which="both", alpha=0.3)


def _log_axis(ax, values) -> None:
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    shown = "23456789" if max(values) / min(values) < 20 else "25"  # more minor labels on a short axis
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _, shown=shown: f"{v:g}" if f"{v:g}"[0] in shown
                                               else ""))


def _zoom_box(crowded: List[dict], key: str, scored: List[dict]):
    xs, ys = [r[key] for r in crowded], [r["top1"] for r in crowded]
    span = max(r["top1"] for r in scored) - min(r["top1"] for r in scored)
    pad = min(0.4, 0.08 * span) or 0.4  # ImageNet's 27 points of top-1: 0.4; CIFAR's half a point: 0.04
    return min(xs) / 1.08, max(xs) * 1.12, min(ys) - pad, max(ys) + pad


# label offsets (points) tried in turn; the first that overlaps no other label and no marker wins
_OFFSETS = [(6, -4), (6, 6), (6, -14), (-6, 6), (-6, -14), (6, 16), (6, -24), (-6, 16), (-6, -24), (6, 26),
            (6, -34), (-6, 26), (-6, -34), (6, 36), (-6, 36), (6, -44), (-6, -44)]
_OFFSETS += [(dx, sign * dy) for dy in range(46, 130, 10) for sign in (1, -1) for dx in (6, -6, 40, -40)]


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
    texts = [t for t in ax.texts if t.get_visible()]  # e.g. the names of models without a top-1
    legend = ax.get_legend()
    for artist in texts + ([legend] if legend is not None else []):
        box = artist.get_window_extent(renderer)
        taken.append((box.x0, box.y0, box.x1, box.y1))
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
