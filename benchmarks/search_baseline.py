"""The honest baseline of a finished DSNAS / SPOS run: the found architecture trained from scratch with a train
recipe, beside the mean of N random architectures of the same space at the same cost (nas_zoo.search.baseline)
trained with the same recipe.

    python benchmarks/search_baseline.py runs/dsnas_demo                       # configs/search/train_demo.yaml
    python benchmarks/search_baseline.py runs/spos_demo --n 3 --set train.epochs=3

Every training run is resumable (RUN_DIR/baseline/<name>/); run the same command again to continue.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def space_of(run_dir: Path):
    import yaml
    from nas_zoo.search.methods import dsnas, spos
    cfg = yaml.safe_load((run_dir / "resolved.yaml").read_text())
    command = json.loads((run_dir / "run.json").read_text())["command"]
    size = int(cfg["space"].get("image_size") or cfg["data"].get("image_size") or 224)
    classes = dsnas.expected_classes(cfg["data"])
    if command == "dsnas":
        return dsnas.build_space(cfg["space"], size, num_classes=classes), classes
    if command == "spos":
        return spos.make_space(cfg, size, classes), classes
    raise SystemExit(f"{run_dir}: a {command!r} run; expected a dsnas or spos run")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--train-config", type=Path, default=REPO / "configs" / "search" / "train_demo.yaml")
    p.add_argument("--n", type=int, default=3, help="random architectures of the same cost")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="key.path=value", help="train config override")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import numpy as np
    import yaml

    from nas_zoo.entry import load_entry
    from nas_zoo.search.baseline import same_cost_archs
    from nas_zoo.search.cli import run_train_command

    run_dir = args.run_dir
    found = yaml.safe_load((run_dir / "entry.yaml").read_text())
    arch = found["provenance"]["arch"]
    space, classes = space_of(run_dir)
    randoms = same_cost_archs(space, arch, n=args.n, rng=np.random.RandomState(args.seed), metric="macs",
                              num_classes=classes)
    out = run_dir / "baseline"
    out.mkdir(exist_ok=True)
    entries = {"found": run_dir / "entry.yaml"}
    for i, a in enumerate(randoms):
        path = out / f"random-{i}.yaml"
        entry = load_entry({"name": f"{found['name']}_random{i}", "family": space.family,
                            "arch": space.entry_arch(a), "pretrained": {},
                            "description": f"random architecture of the same space and cost as {found['name']}",
                            "provenance": {"baseline_of": str(run_dir), "arch": a}}, source=str(path))
        entry.save(path)
        entries[f"random-{i}"] = path
    start = time.perf_counter()
    results = {}
    for label, path in entries.items():
        r = run_train_command(str(path), args.train_config, str(out / label), args.set)
        results[label] = r["val_top1"]
    rand = [results[k] for k in results if k.startswith("random")]
    cost = {k: space.cost(a, "macs", num_classes=classes) / 1e6 for k, a in
            [("found", arch)] + [(f"random-{i}", a) for i, a in enumerate(randoms)]}
    print(f"\nbaseline of {run_dir} (train recipe {args.train_config.name} {' '.join(args.set)}), "
          f"{time.perf_counter() - start:.0f} s")
    for k in results:
        print(f"  {k:<10} top-1 {results[k]:6.2f}%   {cost[k]:.4f} MMACs")
    spread = statistics.pstdev(rand) if len(rand) > 1 else 0.0
    print(f"  found {results['found']:.2f}% vs random mean {statistics.mean(rand):.2f}% (+- {spread:.2f}, n={len(rand)})")
    (out / "summary.json").write_text(json.dumps({"top1": results, "mmacs": cost}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
