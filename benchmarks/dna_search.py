"""Benchmark: DNA's constrained architecture selection, `dna select` against the official traversal.

    python benchmarks/dna_search.py                 # all scenarios (about a minute, mostly writing YAML)
    python benchmarks/dna_search.py --cap 120       # give the official traversal 120 s per scenario

Scenarios (potential files are synthetic, in exactly the official format, seed fixed):

* example   - tests/fixtures/dna/potential_example (official layout 2/4/4/4/4 searched, stage 5 fixed; the
              official script's own answer on these files is recorded there)
* official  - a freshly generated official-layout space, budget 394,000 KMac (DNA-b's 394M)
* readme-5  - the README's scale as the official script can search it: 5 stages x 6 layers x 6 ops
              (46,656 candidates per stage), stage 5 fixed, budget 611,000 KMac (DNA-d's 611M)
* readme-6  - 6 stages x 6 layers x 6 ops, every stage searched (the official script cannot: it has 5 loops);
              costs are MACs measured by nas_zoo.search.cost on the DNA space with the B0 widths

The BASELINE below is a re-implementation of the official `searching/process_potential.py` traversal (commit
156c16c), kept here only to compare with: same fp16 rounding of the potentials, same loss-ordered nested loops,
same carried-over rank bounds (which prune across prefixes, so it can miss the optimum), same strict `<` budget test.
It prints nothing per prefix, so it runs faster than the original script (which also imports torch).
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "tests" / "fixtures" / "dna" / "potential_example"
NUM_OPS = 6


# --------------------------------------------------------------------------------------------------------------
# Synthetic potentials in the official format


def synthetic_stage(rng: np.random.Generator, rows: np.ndarray, base: float) -> dict:
    """One stage's potentials for a (layers, 6) table of op costs, in the official key layout.

    cl_loss = base * exp(capacity effect + adjacent-layer interactions + evaluation noise): bigger ops (more MACs)
    distil better with diminishing returns, layers differ in sensitivity, neighbours interact, and each candidate
    carries its own noise, as the official potentials do."""
    depth = len(rows)
    ops = np.indices((NUM_OPS,) * depth).reshape(depth, -1).T  # itertools.product order
    log_cost = np.log(rows)
    capacity = -(log_cost - log_cost.mean(axis=1, keepdims=True))
    weight = rng.uniform(0.02, 0.07, depth)
    op_effect = rng.normal(0.0, 0.012, (depth, NUM_OPS))
    pair = rng.normal(0.0, 0.008, (max(depth - 1, 1), NUM_OPS, NUM_OPS))
    z = np.zeros(len(ops))
    for layer in range(depth):
        z += weight[layer] * capacity[layer, ops[:, layer]] + op_effect[layer, ops[:, layer]]
    for layer in range(depth - 1):
        z += pair[layer, ops[:, layer], ops[:, layer + 1]]
    z += rng.normal(0.0, 0.006, len(ops))
    cl_loss = base * np.exp(z)
    std = rng.uniform(1.5, 3.0)
    loss = (cl_loss * std) ** 2 * 1.25
    return {"cl_loss": cl_loss.tolist(), "gr_loss": (cl_loss * 1.67).tolist(), "loss": loss.tolist(),
            "prec1": [0] * len(ops), "rela_loss": (loss / std ** 2).tolist(),
            "sq_loss": (np.sqrt(loss) / std ** 2).tolist(), "top_index": np.argsort(loss).tolist()}


def write_potentials(folder: Path, tables: Sequence[np.ndarray], seed: int) -> List[Path]:
    """potential-<s>.yaml for each stage, written as the official code does (yaml.safe_dump, block style)."""
    rng = np.random.default_rng(seed)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    paths = []
    for s, rows in enumerate(tables):
        data = synthetic_stage(rng, np.asarray(rows, dtype=np.float64), base=0.30 + 0.04 * s)
        path = folder / f"potential-{s}.yaml"
        path.write_text(yaml.dump(data, Dumper=dumper, default_flow_style=False))
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------------------------------
# BASELINE: the official process_potential.py traversal, re-implemented (for comparison only)


def official_traversal(potential_files: Sequence[Path], table: Sequence[Sequence[Sequence[float]]], fixed: float,
                       budget: float, bound_depths: Sequence[int], time_cap: float) -> dict:
    """process_potential.py, steps 2-3, for 5 searched stages with one potential file each.

    `table[s][l][op]` prices layer l of stage s; `bound_depths[s]` is the depth the prefix bounds assume for stage
    s (the released script assumes a 5-layer stage 4 while searching 4 layers). Returns the answer, or
    `finished: False` when `time_cap` seconds pass first."""
    t0 = time.perf_counter()
    super_model_l, super_loss_l, super_param_l = [], [], []
    for s, path in enumerate(potential_files):
        with open(path) as f:
            mse_l = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["cl_loss"]
        depth = round(np.log(len(mse_l)) / np.log(NUM_OPS))
        model_pool = [list(m) for m in itertools.product(range(NUM_OPS), repeat=depth)]
        top_idx_l = np.argsort(np.array(mse_l))
        half = np.asarray(mse_l, dtype=np.float64).astype(np.float32).astype(np.float16)  # torch.Tensor(..).half()
        sorted_model = [model_pool[i] for i in top_idx_l]
        super_model_l.append(sorted_model)
        super_loss_l.append([float(half[i]) for i in top_idx_l])
        super_param_l.append([sum(table[s][l][m[l]] for l in range(depth)) for m in sorted_model])
    load_s = time.perf_counter() - t0

    def min_rows(s):  # cheapest cost of stage s at its bound depth (later rows repeat the last one)
        rows = [table[s][min(l, len(table[s]) - 1)] for l in range(bound_depths[s])]
        return sum(min(r) for r in rows)

    stage_max = [0.0] * 5
    stage_max[4] = budget - fixed
    for s in range(3, -1, -1):
        stage_max[s] = stage_max[s + 1] - min_rows(s + 1)

    t1 = time.perf_counter()
    deadline = t1 + time_cap
    min_loss, best_model, best_param = 100, None, None
    max_layer0, max_layer1, max_layer2, max_layer3, max_layer4 = (len(m) for m in super_model_l)
    finished = True
    for layer0 in range(max_layer0):
        params0 = super_param_l[0][layer0]
        if params0 > stage_max[0]:
            continue
        loss0 = super_loss_l[0][layer0]
        for layer1 in range(max_layer1):
            if layer1 >= max_layer1:
                if max_layer1 == 0:
                    max_layer0 = layer0
                    max_layer1 = len(super_model_l[1])
                break
            params1 = params0 + super_param_l[1][layer1]
            if params1 > stage_max[1]:
                continue
            loss1 = loss0 + super_loss_l[1][layer1]
            for layer2 in range(max_layer2):
                if time.perf_counter() > deadline:
                    finished = False
                    break
                if layer2 >= max_layer2:
                    if max_layer2 == 0:
                        max_layer1 = layer1
                        max_layer2 = len(super_model_l[2])
                    break
                params2 = params1 + super_param_l[2][layer2]
                if params2 > stage_max[2]:
                    continue
                loss2 = loss1 + super_loss_l[2][layer2]
                for layer3 in range(max_layer3):
                    if layer3 >= max_layer3:
                        if max_layer3 == 0:
                            max_layer2 = layer2
                            max_layer3 = len(super_model_l[3])
                        break
                    params3 = params2 + super_param_l[3][layer3]
                    if params3 > stage_max[3]:
                        continue
                    loss3 = loss2 + super_loss_l[3][layer3]
                    for layer4 in range(max_layer4):
                        if layer4 >= max_layer4:
                            break
                        params4 = params3 + super_param_l[4][layer4]
                        if params4 < stage_max[4]:
                            loss4 = loss3 + super_loss_l[4][layer4]
                            if loss4 < min_loss:
                                best_param = params4
                                min_loss = loss4
                                best_model = [layer0, layer1, layer2, layer3, layer4]
                            max_layer4 = layer4
                            if max_layer4 == 0:
                                max_layer3 = layer3
                                max_layer4 = len(super_model_l[4])
                            break
            if not finished:
                break
        if not finished:
            break
    out = {"finished": finished, "load_s": load_s, "search_s": time.perf_counter() - t1}
    if best_model is not None:
        out.update(ranks=best_model, stages=[super_model_l[s][r] for s, r in enumerate(best_model)],
                   score_fp16_sum=min_loss, cost=best_param + fixed)
    return out


# --------------------------------------------------------------------------------------------------------------
# Ours


def ours(potential_files: Sequence[Path], table_path: Path, budget: float) -> dict:
    from nas_zoo.search.methods import dna_select

    t0 = time.perf_counter()
    potentials = dna_select.load_potentials(potential_files)
    costs = dna_select.CostTable.from_json(table_path)
    load_s = time.perf_counter() - t0
    search_s = []
    for _ in range(5):  # best of 5: a millisecond-scale timing is at the mercy of the machine's other work
        t1 = time.perf_counter()
        sel = dna_select.select(potentials, costs, budget)
        search_s.append(time.perf_counter() - t1)
    return {"load_s": load_s, "search_s": min(search_s), "stages": sel.stages, "score": sel.score, "cost": sel.cost,
            "fronts": sel.fronts, "potentials": potentials, "costs": costs}


def score_of(result: dict, stages: List[List[int]]) -> float:
    """Full-precision summed cl_loss of an architecture, from the loaded potentials."""
    by_stage = {p.stage: p for p in result["potentials"]}
    total = 0.0
    for s, ops in enumerate(stages):
        pot = by_stage[s]
        index = int(np.ravel_multi_index(tuple(ops), (NUM_OPS,) * pot.depth))
        total += float(pot.metrics["cl_loss"][index])
    return total


# --------------------------------------------------------------------------------------------------------------
# Scenarios


def official_table() -> dict:
    return json.loads((EXAMPLE / "cost_table.json").read_text())


def extend_rows(stage_rows: Sequence[Sequence[float]], depth: int) -> List[List[float]]:
    """The first row, then the stride-1 row repeated: a deeper stage of the same space."""
    return [list(stage_rows[0])] + [list(stage_rows[1])] * (depth - 1)


def dna_space_macs_table(depth: int) -> dict:
    """MACs table of the DNA space (B0 widths, 6 stages x `depth` layers x 6 ops) measured by nas_zoo.search.cost;
    fixed part: stem, the DS block and the head of a child network."""
    import torch
    from timm.models.efficientnet import EfficientNet

    from nas_zoo.families.efficientnet import model_kwargs
    from nas_zoo.search.cost import chain_layers, fixed_parts, measure_cost_tables

    prims = [(6, 3), (6, 5), (6, 7), (3, 3), (3, 5), (3, 7)]  # PRIMITIVES: MB<e>_<k>x<k>_se0.25
    cfg = [(24, 2), (40, 2), (80, 2), (112, 1), (192, 2), (320, 1)]
    stages = [[[f"ir_r1_k{k}_s{stride if l == 0 else 1}_e{e}_c{c}_se0.25" for e, k in prims]
               for l in range(depth)] for c, stride in cfg]
    layers = chain_layers(stages, (16, 112, 112))
    arch = {"model": "efficientnet", "stem_size": 32, "num_features": 1280, "act_layer": "swish",
            "block_args": [["ds_r1_k3_s1_c16_se0.25"]] + [[st[0][0]] + [layer[0] for layer in st[1:]]
                                                          for st in stages]}
    with torch.device("meta"):
        child = EfficientNet(**model_kwargs(arch))
    parts = fixed_parts(child, (3, 224, 224), ["conv_stem", "bn1", "blocks.0", "conv_head", "bn2", "global_pool",
                                               "classifier"])
    return measure_cost_tables(layers, ("macs",), fixed=parts)["macs"].to_dict()


def run_scenario(name, folder, files, table, budget, bound_depths, cap, expected_official=None):
    table_path = folder / "cost_table.json"
    if not table_path.exists():
        table_path.write_text(json.dumps(table))
    r = ours(files, table_path, budget)
    row = {"scenario": name, "candidates": [len(p) for p in r["potentials"]], "budget": budget,
           "ours": {k: r[k] for k in ("load_s", "search_s", "stages", "score", "cost", "fronts")}}
    if bound_depths is not None:
        b = official_traversal(files, table["stages"], table["fixed"], budget, bound_depths, cap)
        if b.get("stages") is not None:
            b["score"] = score_of(r, b["stages"])  # its answer, scored at full precision like ours
        row["baseline"] = b
        if expected_official is not None and b["finished"]:
            row["baseline_reproduces_official"] = (b["stages"] == expected_official["stages"]
                                                   and b["score_fp16_sum"] == expected_official["score_fp16_sum"]
                                                   and b["cost"] == expected_official["cost"])
    return row


def print_table(rows: List[dict], cap: float) -> None:
    head = (f"{'scenario':<9} {'candidates per stage':<21} {'budget':>12} | {'ours: search s':>14} {'load s':>6} "
            f"{'score':>8} {'cost':>12} | {'official: search s':>18} {'score':>8} {'cost':>12} | "
            f"{'time ratio':>10} {'score gap':>9}")
    print()
    print(head)
    print("-" * len(head))
    for row in rows:
        counts = row["candidates"]
        cands = f"{len(counts)} x {counts[0]}" if len(set(counts)) == 1 else "/".join(map(str, counts))
        o, b = row["ours"], row.get("baseline")
        line = (f"{row['scenario']:<9} {cands:<21} {row['budget']:>12,.0f} | {o['search_s']:>14.3f} "
                f"{o['load_s']:>6.2f} {o['score']:>8.5f} {o['cost']:>12,.0f} | ")
        if b is None:
            line += f"{'n/a (5 stages max)':>18} {'':>8} {'':>12} | {'':>10} {'':>9}"
        elif not b["finished"]:
            line += (f"{'did not finish in %.0f s' % cap:>40} | {'> x%.0f' % (cap / max(o['search_s'], 1e-9)):>10} "
                     f"{'':>9}")
        else:
            ratio = b["search_s"] / max(o["search_s"], 1e-9)
            gap = 100 * (b["score"] - o["score"]) / o["score"]
            line += (f"{b['search_s']:>18.3f} {b['score']:>8.5f} {b['cost']:>12,.0f} | {'x%.0f' % ratio:>10} "
                     f"{'+%.2f%%' % gap:>9}")
        print(line)
    print()
    print("score = summed full-precision cl_loss of the answer (the official script sums fp16-rounded values);")
    print("search s: ours best of 5 runs, the official traversal one run; load s: reading the potential files.")
    print("time ratio = official search time / ours; score gap = how much worse the official answer is.")
    for row in rows:
        print(f"\n{row['scenario']}:")
        print(f"  dna select         {row['ours']['stages']}  (front size after each stage: {row['ours']['fronts']})")
        b = row.get("baseline")
        if b is not None and b.get("stages") is not None:
            label = "official traversal" if b["finished"] else "official, unfinished"
            print(f"  {label:<18} {b['stages']}  (fp16 sum {b['score_fp16_sum']}, ranks {b['ranks']})")
        if "baseline_reproduces_official" in row:
            verdict = "yes" if row["baseline_reproduces_official"] else "NO"
            print(f"  baseline reproduces the official script's recorded answer on these files: {verdict}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cap", type=float, default=60.0, help="time cap of the baseline traversal per scenario, s")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=("example", "official", "readme-5", "readme-6"))
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    wanted = set(args.only or ("example", "official", "readme-5", "readme-6"))
    rows = []
    answers = json.loads((EXAMPLE / "answers.json").read_text())
    official = official_table()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "example" in wanted:
            files = [EXAMPLE / f"potential-{s}.yaml" for s in range(5)]
            rows.append(run_scenario("example", EXAMPLE, files, official, answers["budget"], [3, 4, 4, 4, 5],
                                     args.cap, answers["official_process_potential"]))
        if "official" in wanted:
            folder = tmp / "official"
            folder.mkdir()
            t = time.perf_counter()
            files = write_potentials(folder, official["stages"], args.seed)
            print(f"official: wrote 5 potential files in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            rows.append(run_scenario("official", folder, files, official, 394000, [3, 4, 4, 4, 5], args.cap))
        if "readme-5" in wanted:
            folder = tmp / "readme5"
            folder.mkdir()
            table = dict(official, stages=[extend_rows(rows_, 6) for rows_ in official["stages"]])
            t = time.perf_counter()
            files = write_potentials(folder, table["stages"], args.seed)
            print(f"readme-5: wrote 5 potential files in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            rows.append(run_scenario("readme-5", folder, files, table, 611000, [6] * 5, args.cap))
        if "readme-6" in wanted:
            folder = tmp / "readme6"
            folder.mkdir()
            t = time.perf_counter()
            table = dna_space_macs_table(6)
            print(f"readme-6: measured the MACs table in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            lo = table["fixed"] + sum(sum(min(r) for r in st) for st in table["stages"])
            hi = table["fixed"] + sum(sum(max(r) for r in st) for st in table["stages"])
            budget = float(round(lo + 0.4 * (hi - lo), -6))
            t = time.perf_counter()
            files = write_potentials(folder, table["stages"], args.seed)
            print(f"readme-6: wrote 6 potential files in {time.perf_counter() - t:.1f} s", file=sys.stderr)
            rows.append(run_scenario("readme-6", folder, files, table, budget, None, args.cap))
    print_table(rows, args.cap)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
