"""The main job, end to end on the embedded data (CPU, minutes): `python -m nas_zoo.demo` (or `make demo`).

1. DNA search (configs/search/dna_demo.yaml): a small teacher is trained, the supernet is distilled stage by
   stage, every candidate gets its architecture potential, the best one under the MACs budget is selected and
   written as a zoo entry (RUN_DIR/entry.yaml) -- at once a timm model.
2. The found model is trained from scratch (configs/search/train_demo.yaml), and so are 3 random architectures
   of the same space at the found model's MACs (the honest baseline of NAS) and the zoo model whose MACs at the
   same resolution are closest; all are printed side by side.

Everything is resumable: run it again with the same --out and it continues where it stopped.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional


def _config(name: str) -> Path:
    from importlib.resources import files
    return Path(str(files("nas_zoo.configs") / "search" / name))


def closest_zoo_model(macs: float, image_size: int, num_classes: int, exclude: str):
    """The registered zoo entry whose MACs at `image_size` are closest to `macs`: (name, MACs, params, the model
    on the meta device)."""
    import timm
    from nas_zoo.cost import count_macs, count_params
    from nas_zoo.registry import list_entries

    from nas_zoo.registry import builtin_entry_dir
    builtin = builtin_entry_dir().resolve()
    best = None
    for entry in list_entries():
        if entry.name == exclude or not str(entry.source) or Path(entry.source).resolve().parent != builtin:
            continue  # the released zoo only (not this run's entries)
        with __import__("torch").device("meta"):
            model = timm.create_model(entry.name, num_classes=num_classes)
        m = count_macs(model, (3, image_size, image_size))
        if best is None or abs(m - macs) < abs(best[1] - macs):
            best = (entry.name, m, count_params(model), model)
    return best


def _total_stride(model) -> Optional[int]:
    """The model's last feature reduction (timm feature_info), or None where the model does not say."""
    info = getattr(model, "feature_info", None)
    try:
        return int(info[-1]["reduction"])
    except (TypeError, KeyError, IndexError, ValueError):
        return None


def train_random_baselines(resolved: dict, out: Path, num_classes: int, image_size: int, n: int,
                           train_over: List[str]):
    """Train `n` random architectures of the searched space at the found architecture's MACs with the demo recipe:
    rows (label, MACs, params, metrics, run dir)."""
    import numpy as np
    import timm
    import yaml

    import nas_zoo
    from nas_zoo.cost import count_macs, count_params
    from .baseline import same_cost_archs
    from .cli import run_train_command
    from .engine import DistContext
    from .export import write_entry
    from .methods import Job, get_method
    from .spaces.dna import dna_space

    space = dna_space(resolved)
    entry = yaml.safe_load((out / "search" / "entry.yaml").read_text())
    found = entry["provenance"]["supernet_op_indices"]
    archs = same_cost_archs(space, found, n=n, rng=np.random.RandomState(resolved["seed"]), metric="macs",
                            image_size=image_size, num_classes=num_classes)
    rows = []
    for i, arch in enumerate(archs):
        run_dir = out / "baseline" / f"random{i}"
        job = Job(method=get_method("dna"), cfg=resolved, run_dir=run_dir, ctx=DistContext())
        path = write_entry(job, space, arch, name=f"{resolved['name']}_random{i}",
                           provenance={"baseline": f"random architecture {i} at the MACs of {resolved['name']}"})
        name = nas_zoo.register_entry(path, replace=True)
        metrics = run_train_command(str(path), _config("train_demo.yaml"), str(out / f"train_random{i}"), train_over)
        import torch
        with torch.device("meta"):
            model = timm.create_model(name, num_classes=num_classes)
        rows.append((f"{name} (random)", count_macs(model, (3, image_size, image_size)), count_params(model), metrics,
                     out / f"train_random{i}"))
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nas_zoo.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    parser.add_argument("--train-epochs", type=int, default=None, help="override train.epochs of train_demo.yaml")
    parser.add_argument("--train-set", action="append", default=[], metavar="key.path=value",
                        help="an override for train_demo.yaml (repeatable), e.g. --train-set data.num_train=2000")
    parser.add_argument("--no-compare", action="store_true", help="skip training the zoo model for comparison")
    parser.add_argument("--baselines", type=int, default=3, help="random same-cost architectures to train (0: none)")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="overrides for dna_demo.yaml")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import timm
    import torch

    import nas_zoo
    from nas_zoo.cost import count_macs, count_params
    from .cli import run_method_command, run_train_command

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = Path(args.out)
    start = time.perf_counter()
    steps = 3 + (not args.no_compare)
    print(f"[1/{steps}] DNA search on the embedded data -> {out / 'search'}", flush=True)
    result = run_method_command("dna", _config("dna_demo.yaml"), str(out / "search"), args.overrides)
    t_search = time.perf_counter() - start
    name = nas_zoo.register_entry(out / "search" / "entry.yaml", replace=True)
    import yaml
    resolved = yaml.safe_load((out / "search" / "resolved.yaml").read_text())
    image_size = resolved["data"].get("image_size", 32)
    from .data import DataConfig, build_dataset
    num_classes = build_dataset(DataConfig.from_dict(resolved["data"]), "val").num_classes
    with torch.device("meta"):
        found = timm.create_model(name, num_classes=num_classes)
    found_macs, found_params = count_macs(found, (3, image_size, image_size)), count_params(found)
    print(f"      found {name}: {found_macs / 1e6:.2f} MMACs at {image_size}px, {found_params / 1e6:.2f}M params "
          f"({t_search:.0f} s)\n      {result['block_args']}", flush=True)

    train_over = list(args.train_set) + ([f"train.epochs={args.train_epochs}"] if args.train_epochs else [])
    print(f"[2/{steps}] training {name} from scratch", flush=True)
    ours = run_train_command(str(out / "search" / "entry.yaml"), _config("train_demo.yaml"), str(out / "train_found"),
                             train_over)
    rows = [(name + " (found)", found_macs, found_params, ours, out / "train_found")]
    if args.baselines:
        print(f"[3/{steps}] training {args.baselines} random architectures of the same space and MACs, same recipe",
              flush=True)
        random_rows = train_random_baselines(resolved, out, num_classes, image_size, args.baselines, train_over)
        rows += random_rows
        mean = sum(r[3]["val_top1"] for r in random_rows) / len(random_rows)
        rows.append((f"random mean (n={len(random_rows)})", sum(r[1] for r in random_rows) / len(random_rows),
                     sum(r[2] for r in random_rows) / len(random_rows), {"val_top1": mean}, None))
    if not args.no_compare:
        zoo_name, zoo_macs, zoo_params, zoo_model = closest_zoo_model(found_macs, image_size, num_classes,
                                                                      exclude=name)
        print(f"[{steps}/{steps}] training the zoo model of the closest cost, {zoo_name}, with the same recipe", flush=True)
        zoo_dir = out / f"train_{zoo_name}"
        zoo = run_train_command(zoo_name, _config("train_demo.yaml"), str(zoo_dir), train_over)
        rows.append((zoo_name + " (zoo)", zoo_macs, zoo_params, zoo, zoo_dir))
    print(f"\n{'model':<28}{'MMACs@' + str(image_size) + 'px':>14}{'params':>10}{'top-1':>9}{'top-1 EMA':>11}")
    for label, macs, params, metrics, _ in rows:
        ema = metrics.get("val_ema_top1")
        if label.startswith("random mean"):
            print("-" * 72)
        print(f"{label:<28}{macs / 1e6:>14.2f}{params / 1e6:>9.2f}M{metrics['val_top1']:>8.1f}%"
              f"{(f'{ema:.1f}%' if ema is not None else '-'):>11}")
    if not args.no_compare:
        strides = [_total_stride(m) for m in (found, zoo_model)]
        if None not in strides and strides[1] > strides[0]:
            side = max(1, image_size // strides[1])
            print(f"\n{zoo_name} was designed for ImageNet-size images: its total stride {strides[1]} leaves "
                  f"{side}x{side} maps at {image_size} px.\nThe searched space (total stride {strides[0]}) fits "
                  f"this data: what a search on one's own data buys.")
    from .plots import have_matplotlib, plot_comparison
    if have_matplotlib():
        runs = {f"{label} {macs / 1e6:.2f} MMACs": run_dir for label, macs, _, _, run_dir in rows if run_dir}
        figure = plot_comparison(runs, out / "compare.png", title=f"embedded data, {num_classes} classes, "
                                                                  f"{image_size} px")
        print(f"\nfigures: {figure}, {out / 'search' / 'search.png'}")
    print(f"\nchance is {100 / num_classes:.0f} %; wall time {time.perf_counter() - start:.0f} s; "
          f"entry: {out / 'search' / 'entry.yaml'} (NAS_ZOO_ENTRIES={out / 'search'} makes it a timm model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
