"""The CDARTS demo's honest baseline: the found genotype and 3 random genotypes of the same cost (params within
`--tolerance` of the found network's), each trained with the same recipe; prints the top-1 of each and the mean.

    python benchmarks/cdarts_demo_baseline.py runs/cdarts_demo --config configs/search/cdarts_train_demo.yaml
"""
import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import timm
import torch


def main(argv=None):
    from nas_zoo.cost import count_params
    from nas_zoo.entry import load_entry
    from nas_zoo.search.config import load_config
    from nas_zoo.search.engine import setup_distributed
    from nas_zoo.search.spaces.darts import random_genotype
    from nas_zoo.search.train import TRAIN_SCHEMA, run_training

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--config", required=True)
    ap.add_argument("--n", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run_dir = Path(args.run_dir)
    found = load_entry(run_dir / "entry.yaml")
    cfg, _ = load_config(args.config, TRAIN_SCHEMA, [])
    ctx = setup_distributed("cpu")

    def params(arch):
        from nas_zoo.families.darts_cell import DartsCellNet, model_kwargs
        return count_params(DartsCellNet(num_classes=4, **model_kwargs(arch)))

    target = params(found.arch)
    rng = np.random.RandomState(args.seed)
    entries = [("found", run_dir / "entry.yaml")]
    tries = 0
    while len(entries) < args.n + 1:
        tries += 1
        if tries > 2000:
            sys.exit(f"no random genotype within {args.tolerance:.0%} of {target} params after 2000 draws")
        arch = copy.deepcopy(found.arch)
        arch["genotype"] = random_genotype(rng).to_dict()
        if abs(params(arch) - target) > args.tolerance * target:
            continue
        k = len(entries)
        data = {"name": f"{found.name}_random{k}", "family": "darts_cell", "arch": arch,
                "description": "random genotype of the same cost (baseline)"}
        path = run_dir / "baseline" / f"random{k}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        load_entry(data).save(path)
        entries.append((f"random{k}", path))
    results = {}
    for label, path in entries:
        out = run_training(str(path), cfg, run_dir / "baseline" / f"train-{label}", ctx)
        arch = load_entry(path).arch
        results[label] = {"top1": out["val_top1"], "params": params(arch)}
        print(f"{label:8s} params {results[label]['params']:>9,d}  top-1 {out['val_top1']:.2f}%", flush=True)
    rand = [v["top1"] for k, v in results.items() if k != "found"]
    results["random_mean"] = float(np.mean(rand))
    print(f"found {results['found']['top1']:.2f}% vs random mean {results['random_mean']:.2f}% "
          f"(chance {100 / 4:.0f}%)")
    (run_dir / "baseline" / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
