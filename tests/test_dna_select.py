"""DNA's constrained selection (nas_zoo.search.methods.dna_select): exactness against brute force and against the
optimum recorded with the official-format example (tests/fixtures/dna/potential_example), file formats, errors, CLI."""
import itertools
import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nas_zoo.search.methods import dna_select
from nas_zoo.search.methods.dna_select import (CostTable, CostTableError, InfeasibleBudgetError, PotentialFileError,
                                               StagePotentials, load_potential_file, load_potentials, pareto_front,
                                               select)

EXAMPLE = Path(__file__).parent / "fixtures" / "dna" / "potential_example"
ANSWERS = json.loads((EXAMPLE / "answers.json").read_text())
EXAMPLE_FILES = [EXAMPLE / f"potential-{s}.yaml" for s in range(5)]


@pytest.fixture(scope="module")
def example():
    return load_potentials(EXAMPLE_FILES), CostTable.from_json(EXAMPLE / "cost_table.json")


def product_ops(depth, num_ops):
    return np.array(list(itertools.product(range(num_ops), repeat=depth)), dtype=np.int64).reshape(-1, depth)


# ---------------------------------------------------------------------------------------------------------------
# The official-format example: the exact optimum recorded there, better than the official script's answer


def test_example_gives_the_recorded_exact_optimum(example):
    potentials, costs = example
    sel = select(potentials, costs, ANSWERS["budget"])
    exact = ANSWERS["exact_optimum"]
    assert sel.stages == exact["stages"]
    assert sel.score == pytest.approx(exact["score"], rel=0, abs=1e-12)
    assert sel.cost == exact["cost"]
    assert json.loads(sel.to_json()) == {"stages": sel.stages, "score": sel.score, "cost": sel.cost}


def test_example_beats_the_official_answer(example):
    potentials, costs = example
    sel = select(potentials, costs, ANSWERS["budget"])
    official = ANSWERS["official_process_potential"]
    # the official answer is feasible under the same table, and worse at full precision
    assert costs.price(official["stages"]) == official["cost"] <= ANSWERS["budget"]
    official_score = sum(float(p.metrics["cl_loss"][np.ravel_multi_index(ops, (6,) * p.depth)])
                         for p, ops in zip(potentials, official["stages"]))
    assert sel.score < official_score - 0.01
    assert costs.price(sel.stages) == sel.cost


def test_example_official_files_decode_in_product_order():
    pot = load_potential_file(EXAMPLE / "potential-0.yaml")
    raw = yaml.safe_load((EXAMPLE / "potential-0.yaml").read_text())
    assert (pot.stage, pot.depth, len(pot)) == (0, 2, 36)
    assert pot.ops.tolist() == [list(t) for t in itertools.product(range(6), repeat=2)]
    for key, values in raw.items():
        assert pot.metrics[key].tolist() == [float(v) for v in values]
    assert pot.primitives[0] == "MB6_3x3_se0.25"


def test_fast_reader_agrees_with_yaml():
    for path in sorted(EXAMPLE.glob("potential-*.yaml")):
        text = path.read_text()
        fast = dna_select._fast_number_lists(text)
        assert fast is not None, path
        assert {k: v.tolist() for k, v in fast.items()} == \
            {k: [float(x) for x in v] for k, v in yaml.load(text, Loader=yaml.CSafeLoader).items()}
    text = "a:\n- -0.5\n- 1.0e-05\n- 3\n- 0\n- 12.\nb:\n- 2.5e+20\n- -7\n- 0.0\n- 1.0\n- 8\n"
    assert {k: v.tolist() for k, v in dna_select._fast_number_lists(text).items()} == \
        {k: [float(x) for x in v] for k, v in yaml.safe_load(text).items()}


@pytest.mark.parametrize("text", [
    "a:\n- .nan\n", "a:\n- 1e5\n", "a:\n- 012\n", "a:\n- +1.0\n", "a:\n- 1_0.0\n", "a: []\n", "a:\r\n- 1.0\r\n",
    "# comment\na:\n- 1.0\n", "a:\n- 1.0\na:\n- 2.0\n", "a:\n- 1.0 # c\n", "a:\n  - 1.0\n", "a:\n- 1.0",
])
def test_fast_reader_leaves_other_yaml_to_the_parser(text):
    assert dna_select._fast_number_lists(text) is None


# ---------------------------------------------------------------------------------------------------------------
# Exactness: brute force on random instances (one or several depths per stage, float or tied integer costs)


def random_instance(rng):
    while True:
        n_stages = int(rng.integers(1, 5))
        num_ops = int(rng.integers(2, 5))
        tied = rng.random() < 0.5  # small integer costs and rounded scores: many ties
        stages, rows = [], []
        for s in range(n_stages):
            depths = sorted(rng.choice([1, 2, 3], size=int(rng.integers(1, 3)), replace=False).tolist())

            def costs(d):
                return (rng.integers(0, 6, (d, num_ops)).astype(float) if tied
                        else rng.uniform(0.1, 10.0, (d, num_ops)) * 10 ** rng.uniform(-1, 6)).tolist()

            if rng.random() < 0.3:
                rows.append({str(d): costs(d) for d in depths})
            else:
                rows.append(costs(max(depths) + int(rng.integers(0, 2))))
            for d in depths:
                ops = product_ops(d, num_ops)
                keep = rng.random(len(ops)) < 0.8 if d > 1 else np.ones(len(ops), bool)  # our format: subsets
                keep[0] = True
                score = rng.uniform(0.2, 0.6, len(ops))
                if tied:
                    score = np.round(score, 2)
                stages.append(StagePotentials(stage=s, depth=d, ops=ops[keep],
                                              metrics={"cl_loss": score[keep], "loss": score[keep] ** 2}))
        fixed = float(rng.integers(0, 10)) if tied else float(rng.uniform(0, 100))
        table = CostTable(stages=rows, fixed=fixed)
        sizes = [sum(len(p) for p in stages if p.stage == s) for s in range(n_stages)]
        if np.prod(sizes) <= 200_000:
            return stages, table


def brute_force(stages, table, budget, metric):
    """Every combination, summed stage by stage as `select` defines the totals: (best score or None, all costs)."""
    per_stage = []
    for s in range(table.num_stages):
        cands = []
        for pot in (p for p in stages if p.stage == s):
            rows = table.stages[s][str(pot.depth)] if isinstance(table.stages[s], dict) else table.stages[s]
            for ops, score in zip(pot.ops.tolist(), pot.metrics[metric].tolist()):
                cost = 0.0
                for layer, op in enumerate(ops):
                    cost += rows[layer][op]
                cands.append((cost, score))
        per_stage.append(np.array(cands))
    cost = table.fixed + per_stage[0][:, 0]
    score = per_stage[0][:, 1]
    for cands in per_stage[1:]:
        cost = (cost[:, None] + cands[None, :, 0]).ravel()
        score = (score[:, None] + cands[None, :, 1]).ravel()
    if budget is None:  # every architecture's (cost, score)
        return cost, score
    feasible = cost <= budget
    return (score[feasible].min() if feasible.any() else None), cost


def stage_score(stages, s, ops, metric):
    for pot in stages:
        if pot.stage == s and pot.depth == len(ops):
            row = np.flatnonzero((pot.ops == np.array(ops)).all(axis=1))
            if row.size:
                return float(pot.metrics[metric][row[0]])
    raise AssertionError(f"stage {s}: {ops} is not a candidate")


def test_select_equals_brute_force_on_random_instances():
    rng = np.random.default_rng(2024)
    checked = infeasible = boundary = 0
    for _ in range(400):
        stages, table = random_instance(rng)
        metric = "cl_loss" if rng.random() < 0.7 else "loss"
        _, costs = brute_force(stages, table, np.inf, metric)
        kind = rng.random()
        if kind < 0.1:
            budget = costs.min() - 1e-3 * (abs(costs.min()) + 1)
        elif kind < 0.3:  # a budget that some architecture meets exactly
            budget = float(rng.choice(costs))
            boundary += 1
        else:
            budget = costs.min() + rng.uniform(0, 1.1) * (costs.max() - costs.min())
        expected, _ = brute_force(stages, table, budget, metric)
        if expected is None:
            with pytest.raises(InfeasibleBudgetError) as err:
                select(stages, table, budget, metric)
            assert err.value.minimum == costs.min()
            infeasible += 1
            continue
        sel = select(stages, table, budget, metric)
        assert sel.score == expected
        assert sel.cost <= budget
        assert table.price(sel.stages) == sel.cost
        total = stage_score(stages, 0, sel.stages[0], metric)
        for s, ops in enumerate(sel.stages[1:], 1):
            total = total + stage_score(stages, s, ops, metric)
        assert total == sel.score
        checked += 1
    assert checked > 250 and infeasible > 20 and boundary > 40


def test_pareto_front_is_the_front_of_every_architecture():
    rng = np.random.default_rng(7)
    for _ in range(150):
        stages, table = random_instance(rng)
        cost, score = brute_force(stages, table, None, "cl_loss")
        expected = []  # cheapest first; a point stays when it beats every cheaper-or-equal one
        for c, sc in sorted(set(zip(cost.tolist(), score.tolist()))):
            if not expected or sc < expected[-1][1]:
                expected.append((c, sc))
        front_cost, front_score = pareto_front(stages, table, "cl_loss")
        assert list(zip(front_cost.tolist(), front_score.tolist())) == expected
        # and select at a front point's cost returns that point
        k = int(rng.integers(len(expected)))
        assert select(stages, table, expected[k][0], "cl_loss").score == expected[k][1]


def test_readme_scale_equals_dynamic_programming():
    """6 stages x 6 layers x 6 ops (46,656 candidates per stage) against an exact DP over small integer costs."""
    rng = np.random.default_rng(7)
    rows = rng.integers(0, 10, (6, 6, 6)).astype(float)
    ops = product_ops(6, 6)
    stages = [StagePotentials(stage=s, depth=6, ops=ops, metrics={"cl_loss": rng.uniform(0.2, 0.6, len(ops))})
              for s in range(6)]
    table = CostTable(stages=rows.tolist(), fixed=5.0)
    budget = 5.0 + 6 * 6 * 3.0
    # DP over the exact total cost: best[c] = minimum summed score of the stages so far at cost exactly c
    best = np.array([0.0])
    for s, pot in enumerate(stages):
        cost = table.candidate_costs(s, pot.ops).astype(int)
        by_cost = np.full(cost.max() + 1, np.inf)
        np.minimum.at(by_cost, cost, pot.metrics["cl_loss"])
        new = np.full(len(best) + len(by_cost) - 1, np.inf)
        for c in np.flatnonzero(np.isfinite(by_cost)):
            new[c:c + len(best)] = np.minimum(new[c:c + len(best)], best + by_cost[c])
        best = new
    expected = best[:int(budget - 5.0) + 1].min()
    sel = select(stages, table, budget)
    assert sel.score == expected
    assert table.price(sel.stages) == sel.cost <= budget


# ---------------------------------------------------------------------------------------------------------------
# Our format, several depths per stage, grouping


def test_our_format_round_trips_and_selects_the_same(example, tmp_path):
    potentials, costs = example
    paths = [p.save(tmp_path / f"stage{p.stage}.yaml") for p in potentials]
    again = load_potentials(paths)
    for a, b in zip(potentials, again):
        assert (a.stage, a.depth, a.primitives) == (b.stage, b.depth, b.primitives)
        assert np.array_equal(a.ops, b.ops)
        assert {k: v.tolist() for k, v in a.metrics.items()} == {k: v.tolist() for k, v in b.metrics.items()}
    assert select(again, costs, ANSWERS["budget"]) == select(potentials, costs, ANSWERS["budget"])
    text = paths[0].read_text()
    assert text.startswith("stage: 0\ndepth: 2\n") and "\n- {ops: [0, 0], cl_loss: " in text


def test_our_format_is_plain_yaml_and_both_readers_agree(tmp_path):
    values = [1e-05, -2.5, 1e16, 0.1, 3.0, 123456.789e-300]
    pot = StagePotentials(stage=2, depth=2, ops=[[0, 1], [1, 0], [2, 2], [0, 0], [1, 1], [10, 3]],
                          metrics={"cl_loss": values, "loss": [v * 2 for v in values]},
                          primitives=[f"op{i}" for i in range(11)])
    path = pot.save(tmp_path / "ours.yaml")
    text = path.read_text()
    assert dna_select._fast_candidates(text) is not None
    parsed = yaml.safe_load(text)
    assert [c["cl_loss"] for c in parsed["candidates"]] == values
    assert [c["ops"] for c in parsed["candidates"]] == pot.ops.tolist()
    block = tmp_path / "block.yaml"  # the same data as any YAML writer may lay it out: read by the YAML parser
    block.write_text(yaml.safe_dump(parsed, default_flow_style=False))
    assert dna_select._fast_candidates(block.read_text()) is None
    for again in (load_potential_file(path), load_potential_file(block)):
        assert again.ops.tolist() == pot.ops.tolist() and again.primitives == pot.primitives
        assert again.metrics["cl_loss"].tolist() == values and again.metrics["loss"].tolist() == pot.metrics["loss"].tolist()
    with pytest.raises(ValueError, match="metric names must be identifiers"):
        StagePotentials(stage=0, depth=1, ops=[[0]], metrics={"cl loss": [1.0]}).save(tmp_path / "x.yaml")


def test_several_depths_per_stage_from_official_files(tmp_path):
    rng = np.random.default_rng(3)
    files = {}
    for run, depths in (("run_a", (1, 2)), ("run_b", (2, 1))):  # two supernets with other stage depths
        for s, d in enumerate(depths):
            path = tmp_path / run / f"potential-{s}.yaml"
            path.parent.mkdir(exist_ok=True)
            values = rng.uniform(0.3, 0.5, 6 ** d).tolist()
            path.write_text(yaml.safe_dump({"cl_loss": values, "loss": values}, default_flow_style=False))
            files[(s, d)] = path
    pots = load_potentials(list(files.values()))
    assert sorted((p.stage, p.depth) for p in pots) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    table = CostTable(stages=[[[1, 2, 3, 4, 5, 6]] * 2] * 2, fixed=0)
    for budget in (2, 4, 7, 9, 20):
        expected, _ = brute_force(pots, table, budget, "cl_loss")
        assert select(pots, table, budget).score == expected
    # explicit grouping names the stage regardless of the file names
    grouped = load_potentials([[files[(1, 1)], files[(1, 2)]], [files[(0, 1)]]])
    assert sorted((p.stage, p.depth) for p in grouped) == [(0, 1), (0, 2), (1, 1)]


def test_stage_is_taken_from_the_name_or_the_field(tmp_path):
    pot = StagePotentials(stage=3, depth=1, ops=[[0], [1]], metrics={"cl_loss": [0.5, 0.4]})
    assert load_potential_file(pot.save(tmp_path / "anything.yaml")).stage == 3
    with pytest.raises(PotentialFileError, match=r"potential-2\.yaml: field 'stage': is 3, but the file name says"):
        load_potential_file(pot.save(tmp_path / "potential-2.yaml"))
    with pytest.raises(PotentialFileError, match="given for stage 0"):
        load_potentials([[tmp_path / "anything.yaml"]] * 2)
    official = tmp_path / "scores.yaml"
    official.write_text(yaml.safe_dump({"cl_loss": [0.1] * 6}))
    with pytest.raises(PotentialFileError, match=r"scores\.yaml: cannot tell which stage"):
        load_potentials([official])
    assert load_potentials([[official]])[0].stage == 0


def test_same_stage_and_depth_twice_is_an_error(tmp_path):
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        shutil.copy(EXAMPLE / "potential-0.yaml", tmp_path / run / "potential-0.yaml")
    with pytest.raises(PotentialFileError, match=r"b/potential-0\.yaml: stage 0 at depth 2 was already given by"):
        load_potentials([tmp_path / "a" / "potential-0.yaml", tmp_path / "b" / "potential-0.yaml"])


# ---------------------------------------------------------------------------------------------------------------
# Errors: one clear message naming the file and the field


@pytest.mark.parametrize("text, match", [
    ("- 1\n- 2\n", r"bad\.yaml: expected a mapping"),
    ("cl_loss: [0.1, 0.2, 0.3]\n", r"bad\.yaml: field 'cl_loss': has 3 values; expected 6\^L"),
    ("cl_loss: [0.1, 0.2, 0.3, 0.4, 0.5, x]\n", r"bad\.yaml: field 'cl_loss\[5\]': expected a number, got 'x'"),
    ("cl_loss: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]\nloss: [1, 2]\n", r"bad\.yaml: field 'loss': has 2 values; the other"),
    ("cl_loss: [0.1, 0.2\n", r"bad\.yaml: not valid YAML"),
    ("stage: 0\ndepth: 2\ncandidates:\n- {ops: [0], cl_loss: 0.1}\n",
     r"bad\.yaml: field 'candidates\[0\]\.ops': expected 2 op indices"),
    ("stage: 0\ndepth: 1\ncandidates:\n- {ops: [0], cl_loss: 0.1}\n- {ops: [1], loss: 0.1}\n",
     r"bad\.yaml: field 'candidates\[1\]': has metrics \['loss'\]; candidates\[0\] has \['cl_loss'\]"),
    ("stage: 0\ndepth: 1\ncandidates:\n- {ops: [0], cl_loss: 0.1}\n- {ops: [0], cl_loss: 0.2}\n",
     r"bad\.yaml: field 'candidates\[1\]\.ops': \[0\] appears twice"),
    ("stage: -1\ndepth: 1\ncandidates:\n- {ops: [0], cl_loss: 0.1}\n", r"bad\.yaml: field 'stage': expected an integer"),
    ("depth: 1\ncandidates:\n- {ops: [0], cl_loss: 0.1}\n", r"bad\.yaml: field 'stage': missing"),
    ("stage: 0\ndepth: 1\nstages: 3\ncandidates:\n- {ops: [0], cl_loss: 0.1}\n",
     r"bad\.yaml: field 'stages': unknown key"),
    ("stage: 0\ndepth: 1\nprimitives: [a, b]\ncandidates:\n- {ops: [2], cl_loss: 0.1}\n",
     r"bad\.yaml: field 'candidates\[0\]\.ops': op index 2 is beyond the 2 primitives"),
])
def test_malformed_potential_files(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PotentialFileError, match=match):
        load_potentials([[path]])


@pytest.mark.parametrize("values, metric, match", [
    ([0.0] * 6, "cl_loss", r"field 'cl_loss': every value is 0: the official single-process"),
    ([0.1, float("nan")] + [0.1] * 4, "cl_loss", r"field 'cl_loss\[1\]': expected a finite number"),
    ([0.1] * 6, "rela_loss", r"field 'rela_loss': missing; the file has cl_loss, loss"),
    ([0.1] * 6, "top_index", r"field 'top_index': is a ranking"),
])
def test_unusable_metrics(tmp_path, values, metric, match):
    path = tmp_path / "potential-0.yaml"
    path.write_text(yaml.safe_dump({"cl_loss": values, "loss": [1.0] * 6, "top_index": list(range(6))}))
    with pytest.raises(PotentialFileError, match=match):
        select(load_potentials([path]), CostTable(stages=[[[1] * 6]], fixed=0), 10, metric)


@pytest.mark.parametrize("data, match", [
    ([1, 2], r"costs\.json: field '<top level>': expected a JSON object"),
    ({"stages": [[[1, 2]]]}, r"costs\.json: field 'fixed': missing"),
    ({"stages": [[[1, 2]]], "fixd": 0}, r"costs\.json: field 'fixed': missing"),
    ({"stages": [], "fixed": 0}, r"costs\.json: field 'stages': expected a non-empty list"),
    ({"stages": [[[1, "x"]]], "fixed": 0}, r"costs\.json: field 'stages\[0\]\[0\]\[1\]': expected a number, got 'x'"),
    ({"stages": [[[1, -2]]], "fixed": 0}, r"costs\.json: field 'stages\[0\]\[0\]\[1\]': expected a finite cost >= 0"),
    ({"stages": [[[1, 2]]], "fixed": None}, r"costs\.json: field 'fixed': expected a number"),
    ({"stages": [[1, 2]], "fixed": 0}, r"costs\.json: field 'stages\[0\]\[0\]': expected a non-empty list of op"),
    ({"stages": [{"2": [[1, 2]]}], "fixed": 0}, r"costs\.json: field 'stages\[0\]\['2'\]': depth 2 needs 2 layer"),
    ({"stages": [{"x": [[1, 2]]}], "fixed": 0}, r"costs\.json: field 'stages\[0\]': depth keys must be positive"),
])
def test_malformed_cost_tables(tmp_path, data, match):
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CostTableError, match=match):
        CostTable.from_json(path)


def test_cost_table_keeps_other_keys(tmp_path):
    data = {"stages": [[[1, 2]]], "fixed": 0.5, "unit": "MMACs", "image_size": 32, "meta": {"device": "cpu"}}
    path = tmp_path / "costs.json"
    path.write_text(json.dumps(data))
    table = CostTable.from_json(path)
    assert table.to_dict() == data and table.extra == {"image_size": 32}


def test_invalid_json_cost_table(tmp_path):
    path = tmp_path / "costs.json"
    path.write_text("{'stages': }")
    with pytest.raises(CostTableError, match=r"costs\.json: field '<file>': not valid JSON"):
        CostTable.from_json(path)


def test_cost_table_that_does_not_fit_the_potentials(example, tmp_path):
    potentials, _ = example
    base = json.loads((EXAMPLE / "cost_table.json").read_text())
    cases = [
        (dict(base, stages=base["stages"][:4]), r"field 'stages': prices stages 0\.\.3, but potentials are given for "
                                                r"stage 4 \(.*potential-4\.yaml\)"),
        (dict(base, stages=base["stages"] + [[[1] * 6]]), r"field 'stages': prices stages 0\.\.5, but stage 5 has no "
                                                          r"potential file"),
        (dict(base, stages=[base["stages"][0][:1]] + base["stages"][1:]),
         r"field 'stages\[0\]': has 1 layer rows; cannot price a candidate of depth 2 \(needed by .*potential-0\.yaml\)"),
        (dict(base, stages=[[r[:5] for r in base["stages"][0]]] + base["stages"][1:]),
         r"field 'stages\[0\]': stage 0: op index 5 at layer 1 is out of range; that layer has 5 ops"),
    ]
    for i, (data, match) in enumerate(cases):
        path = tmp_path / f"costs{i}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(CostTableError, match=match):
            select(potentials, CostTable.from_json(path), 1e9)


def test_infeasible_budget_names_the_minimum(example):
    potentials, costs = example
    minimum = costs.fixed + sum(sum(min(row) for row in rows) for rows in costs.stages)  # all 2/4/4/4/4 rows used
    with pytest.raises(InfeasibleBudgetError, match=f"the cheapest one costs {minimum:,.0f}") as err:
        select(potentials, costs, minimum - 1)
    assert err.value.minimum == minimum
    assert select(potentials, costs, minimum).cost == minimum


# ---------------------------------------------------------------------------------------------------------------
# Command line


def test_cli_prints_one_json_line(capsys):
    rc = dna_select.main(["--potentials", *map(str, EXAMPLE_FILES), "--budget", "394000 KMACs",
                          "--cost-table", str(EXAMPLE / "cost_table.json")])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("\n") == 1
    assert json.loads(out)["stages"] == ANSWERS["exact_optimum"]["stages"]


def test_cli_grouped_stages_and_the_run_cost_table(tmp_path, capsys):
    for f in EXAMPLE_FILES:
        shutil.copy(f, tmp_path / f.name.replace("potential", "scores"))
    shutil.copy(EXAMPLE / "cost_table.json", tmp_path / "cost-macs.json")
    args = [a for s in range(5) for a in ("--stage", str(tmp_path / f"scores-{s}.yaml"))]
    assert dna_select.main(args + ["--budget", "394000 KMACs", "-v"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["stages"] == ANSWERS["exact_optimum"]["stages"]
    assert "search" in captured.err and "stage 1: 1296 (depth 4) candidates" in captured.err
    assert dna_select.main(args + ["--budget", "394000 KMACs", "--cost", "params"]) == 2
    assert "cost-params.json" in capsys.readouterr().err


def test_cli_takes_the_files_as_arguments_too(capsys):
    table = ["--cost-table", str(EXAMPLE / "cost_table.json")]
    assert dna_select.main([*map(str, EXAMPLE_FILES), "--budget", "394000 KMACs", *table]) == 0
    assert json.loads(capsys.readouterr().out)["stages"] == ANSWERS["exact_optimum"]["stages"]
    for argv in ([str(EXAMPLE_FILES[0]), "--potentials", str(EXAMPLE_FILES[1])], []):
        with pytest.raises(SystemExit) as exit_:
            dna_select.main(argv + ["--budget", "1 KMACs", *table])
        assert exit_.value.code == 2
    assert "potential files" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    rc = dna_select.main(["--potentials", *map(str, EXAMPLE_FILES), "--budget", "100 KMACs",
                          "--cost-table", str(EXAMPLE / "cost_table.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("nas-zoo-search dna select: error: no architecture fits the budget 100 (100 KMACs)")
    assert err.count("\n") == 1
    bad = tmp_path / "c.json"
    bad.write_text('{"stages": [[[1]]]}')
    assert dna_select.main(["--potentials", str(EXAMPLE_FILES[0]), "--budget", "1 KMACs", "--cost-table", str(bad)]) == 2
    assert "c.json: field 'fixed': missing" in capsys.readouterr().err
    assert dna_select.main(["--potentials", str(tmp_path / "nope.yaml"), "--budget", "1 KMACs"]) == 2
    assert "nope.yaml: no such file" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        dna_select.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "usage: nas-zoo-search dna select" in out and "--budget N" in out and "--cost-table" in out


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")
def test_module_entry_point(monkeypatch, capsys):
    """`python -m nas_zoo.search.methods.dna_select ...` (run in this process: the interpreter start is not the point)."""
    monkeypatch.setattr(sys, "argv", ["dna_select", "--potentials", *map(str, EXAMPLE_FILES), "--budget", "394000 KMACs",
                                      "--cost-table", str(EXAMPLE / "cost_table.json")])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("nas_zoo.search.methods.dna_select", run_name="__main__")
    assert exit_.value.code == 0
    assert json.loads(capsys.readouterr().out)["stages"] == ANSWERS["exact_optimum"]["stages"]
