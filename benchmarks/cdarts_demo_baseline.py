"""The CDARTS demo's honest baseline: the found genotype and 3 random genotypes of the same cost (params within
`--tolerance` of the found network's), each trained with the same recipe; prints the top-1 of each and the mean.

    python benchmarks/cdarts_demo_baseline.py runs/cdarts_demo --config configs/search/cdarts_train_demo.yaml
"""
import argparse
import json
from pathlib import Path

import numpy as np


def main(argv=None):
    from nas_zoo.entry import load_entry
    from nas_zoo.search.config import load_config
    from nas_zoo.search.engine import setup_distributed
    from nas_zoo.search.baseline import same_cost_archs
    from nas_zoo.search.spaces.darts import DartsCellSpace
    from nas_zoo.search.train import TRAIN_SCHEMA, run_training

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--config", required=True)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-channels", type=int, default=None,
                    help="train every genotype (found and random) at this width instead of the entry's (CPU time)")
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    found = load_entry(run_dir / "entry.yaml")
    cfg, _ = load_config(args.config, TRAIN_SCHEMA, [])
    ctx = setup_distributed("cpu")

    classes = cfg["data"].get("classes")
    num_classes = classes if isinstance(classes, int) else 10
    if args.init_channels:
        found.arch["init_channels"] = args.init_channels
        data = {"name": found.name, "family": "darts_cell", "arch": found.arch, "description": found.description}
        (run_dir / "baseline").mkdir(parents=True, exist_ok=True)
        load_entry(data).save(run_dir / "baseline" / "found.yaml")
    found_path = run_dir / "baseline" / "found.yaml" if args.init_channels else run_dir / "entry.yaml"
    layout = "cifar" if found.arch["stem"] == "cifar" else "imagenet"
    space = DartsCellSpace(layout, num_classes=num_classes, **{k: v for k, v in found.arch.items() if k != "genotype"})
    rng = np.random.RandomState(args.seed)
    entries = [("found", found_path)]
    for k, genotype in enumerate(same_cost_archs(space, found.arch["genotype"], n=args.n, rng=rng, metric="params",
                                                 tolerance=args.tolerance), start=1):
        data = {"name": f"{found.name}_random{k}", "family": "darts_cell", "arch": space.entry_arch(genotype),
                "description": "random genotype of the same cost (baseline)"}
        path = run_dir / "baseline" / f"random{k}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        load_entry(data).save(path)
        entries.append((f"random{k}", path))
    results = {}
    for label, path in entries:
        out = run_training(str(path), cfg, run_dir / "baseline" / f"train-{label}", ctx)
        genotype = load_entry(path).arch["genotype"]
        results[label] = {"top1": out["val_top1"], "params": int(space.cost(genotype, "params"))}
        print(f"{label:8s} params {results[label]['params']:>9,d}  top-1 {out['val_top1']:.2f}%", flush=True)
    rand = [v["top1"] for k, v in results.items() if k != "found"]
    results["random_mean"] = float(np.mean(rand))
    print(f"found {results['found']['top1']:.2f}% vs random mean {results['random_mean']:.2f}% "
          f"(chance {100 / num_classes:.0f}%)")
    (run_dir / "baseline" / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
