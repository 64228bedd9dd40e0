"""Genotype parsing (official text, cells files, our YAML) and `nas-zoo register-genotype`."""
import json

import pytest
import timm
import yaml

import nas_zoo
from nas_zoo.cli import main
from nas_zoo.genotype import (Genotype, GenotypeError, genotype_from_data, parse_genotype, read_genotype_file)
from reference import FIXTURES

OFFICIAL = json.loads((FIXTURES / "cdarts" / "genotypes_official.json").read_text())
CDARTS_CIFAR = OFFICIAL["cifar_genotype"]


@pytest.mark.parametrize("key", sorted(OFFICIAL))
def test_official_strings_parse_and_round_trip(key):
    g = parse_genotype(OFFICIAL[key])
    assert len(g.normal) == len(g.reduce) == 4 and all(len(node) == 2 for node in g.normal + g.reduce)
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    assert parse_genotype(g.to_str()) == g
    assert genotype_from_data(g.to_dict()) == g
    assert genotype_from_data(yaml.safe_load(yaml.safe_dump(g.to_dict()))) == g


def test_printed_form_is_the_official_text():
    assert parse_genotype(CDARTS_CIFAR).to_str() == CDARTS_CIFAR
    g = parse_genotype(CDARTS_CIFAR)
    assert g.reduce[1] == (("dil_conv_5x5", 2), ("skip_connect", 0))


def test_original_darts_flat_spelling_is_the_same_genotype():
    flat = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
            "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
            "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
            "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
            "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")
    assert parse_genotype(flat) == parse_genotype(OFFICIAL["dartsv2_genotype"])
    positional = OFFICIAL["dartsv2_genotype"].replace("normal=", "").replace("normal_concat=", "")
    assert parse_genotype(positional) == parse_genotype(OFFICIAL["dartsv2_genotype"])


@pytest.mark.parametrize("text, message", [
    ("Genotype(normal=[[('sep_conv_3x3', 0)]", r"line 1, column \d+: not a Genotype\(\.\.\.\) expression"),
    ("Genome(normal=[], normal_concat=[], reduce=[], reduce_concat=[])", r"expected Genotype\(normal=\.\.\."),
    (CDARTS_CIFAR.replace("'sep_conv_3x3', 0", "'sep_conv_9x9', 0", 1),
     r"normal\[0\]\[0\]: unknown op 'sep_conv_9x9'"),
    (CDARTS_CIFAR.replace("('skip_connect', 2)]]", "('skip_connect', 6)]]", 1),
     r"normal\[3\]\[1\]: input of node 3 must be an integer in \[0, 4\]"),
    (CDARTS_CIFAR.replace("('sep_conv_3x3', 1), ('sep_conv_3x3', 2)", "('sep_conv_3x3', True), ('sep_conv_3x3', 2)"),
     "the constant True is not allowed"),
    (CDARTS_CIFAR.replace(", reduce_concat=range(2, 6)", ""), r"missing the field\(s\) \['reduce_concat'\]"),
    (CDARTS_CIFAR.replace("reduce_concat=", "concat="), "unknown Genotype field 'concat'"),
    (CDARTS_CIFAR[:-1] + ", normal=[])", "Genotype field 'normal' is given twice"),
    (CDARTS_CIFAR.replace("normal_concat=range(2, 6)", "normal_concat=range(2, 9)"),
     r"normal_concat\[4\]: expected a state index in \[0, 5\], got int 6"),
    (CDARTS_CIFAR.replace("normal_concat=range(2, 6)", "normal_concat=[2, 2]"),
     r"normal_concat\[1\]: state 2 .*twice"),
    (CDARTS_CIFAR.replace("normal_concat=range(2, 6)", "normal_concat=range(10**12)"),
     r"range\(\) takes integers|is not allowed"),
    (CDARTS_CIFAR.replace("normal_concat=range(2, 6)", "normal_concat=range(0, 1000000)"),
     "range of 1000000 states"),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[[('max_pool_3x3', 0)]], reduce_concat=[2])",
     r"normal: a flat edge list needs two edges per node, got 1"),
    (CDARTS_CIFAR.replace("[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], [", "[], [", 1),
     r"normal\[0\]: expected a non-empty list of \(op, input\) edges"),
    (CDARTS_CIFAR.replace("('sep_conv_3x3', 0)", "('sep_conv_3x3', 0, 1)", 1),
     r"normal\[0\]\[0\]: expected an \(op, input\) pair"),
    (CDARTS_CIFAR.replace("'sep_conv_3x3'", "sep_conv_3x3", 1), "the name 'sep_conv_3x3' is not allowed"),
    ("", r"not a Genotype\(\.\.\.\) expression"),
])
def test_malformed_text_is_one_clear_error(text, message):
    with pytest.raises(GenotypeError, match=message) as info:
        parse_genotype(text, source="cells.json")
    assert str(info.value).startswith("cells.json: ")


@pytest.mark.parametrize("payload", [
    "__import__('os').system('touch {marker}')",
    "open('{marker}', 'w').write('x')",
    "[__import__('os').system('touch {marker}') for _ in range(1)]",
    "(lambda: __import__('os').system('touch {marker}'))()",
    "().__class__.__base__.__subclasses__()",
    "exec(\"open('{marker}', 'w')\")",
    "f\"{{__import__('os').system('touch {marker}')}}\"",
])
def test_code_in_the_text_is_rejected_not_executed(payload, tmp_path):
    marker = tmp_path / "executed"
    text = CDARTS_CIFAR.replace("normal_concat=range(2, 6)", "normal_concat=" + payload.format(marker=marker))
    with pytest.raises(GenotypeError, match="is not allowed in a genotype"):
        parse_genotype(text)
    whole = payload.format(marker=marker)
    with pytest.raises(GenotypeError, match="expected Genotype"):
        parse_genotype(whole)
    assert not marker.exists()


@pytest.mark.parametrize("data, message", [
    ({"normal": [], "normal_concat": [2], "reduce": [[["max_pool_3x3", 0]]], "reduce_concat": [2]},
     r"normal: expected a non-empty list of nodes"),
    ({"normal": [[["sep_conv_3x3", 0]]], "normal_concat": [2], "reduce": [[["max_pool_3x3", 0]]]},
     r"reduce_concat: missing \(required\)"),
    ({"normal": [[["sep_conv_3x3", 0]]], "normal_concat": "2 3", "reduce": [[["max_pool_3x3", 0]]],
      "reduce_concat": [2]}, r"normal_concat: expected a non-empty list of state indices"),
    ({"normal": [[["sep_conv_3x3", 0]]], "normal_concat": [2], "reduce": [[["max_pool_3x3", 0]]],
      "reduce_concat": [2], "cells": 3}, r"cells: unknown field"),
    ({"normal": [[["sep_conv_3x3", "0"]]], "normal_concat": [2], "reduce": [[["max_pool_3x3", 0]]],
      "reduce_concat": [2]}, r"normal\[0\]\[0\]: input of node 0 must be an integer .* got str '0'"),
    ([1, 2], "expected a mapping with fields"),
])
def test_malformed_yaml_is_one_clear_error(data, message):
    with pytest.raises(GenotypeError, match=message):
        genotype_from_data(data, source="g.yaml")


def test_files_in_every_accepted_format(tmp_path):
    g = parse_genotype(CDARTS_CIFAR)
    other = parse_genotype(OFFICIAL["pdarts_genotype"])
    files = {
        "cells.json": json.dumps({"0": CDARTS_CIFAR, "1": CDARTS_CIFAR, "2": CDARTS_CIFAR}),
        "genotype.txt": CDARTS_CIFAR + "\n",
        "ours.yaml": yaml.safe_dump(g.to_dict()),
        "entry_style.yaml": yaml.safe_dump({"genotype": g.to_dict()}),
        "text_in_yaml.yaml": yaml.safe_dump({"genotype": CDARTS_CIFAR}),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
        assert set(read_genotype_file(tmp_path / name)) == {g}, name
    (tmp_path / "stages.yaml").write_text(yaml.safe_dump({"stage_genotypes": [g.to_dict(), other.to_dict()]}))
    assert read_genotype_file(tmp_path / "stages.yaml") == [g, other]


@pytest.mark.parametrize("name, text, message", [
    ("cells.json", json.dumps({"0": "Genotype("}), r"cells.json: \['0'\]: line 1, column \d+: not a Genotype"),
    ("cells.json", '{"0": 1', "not valid JSON"),
    ("cells.json", json.dumps({"0": CDARTS_CIFAR, "2": CDARTS_CIFAR}), "stage indices 0, 1"),
    ("cells.json", json.dumps({"1": CDARTS_CIFAR.replace("sep_conv_5x5", "conv_7x1_1x7")}), "stage indices"),
    ("cells.json", json.dumps({"0": CDARTS_CIFAR.replace("sep_conv_5x5", "conv_7x1_1x7")}),
     r"\['0'\]\.reduce\[0\]\[0\]: unknown op 'conv_7x1_1x7'"),
    ("g.yaml", "normal: [\n", "not valid YAML"),
    ("g.yaml", "", "the file is empty"),
    ("g.yaml", "genotype: {}\nextra: 1\n", "'genotype' or 'stage_genotypes' alone"),
])
def test_malformed_files_are_one_clear_error(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(GenotypeError, match=message) as info:
        read_genotype_file(path)
    assert str(info.value).startswith(str(path))


# --------------------------------------------------------------------------------------------------------------
# nas-zoo register-genotype


def cells_file(tmp_path, genotypes=None):
    path = tmp_path / "cifar_genotype.json"
    genotypes = genotypes or [OFFICIAL["pcdarts_cifar_genotype"]] * 3
    path.write_text(json.dumps({str(i): g for i, g in enumerate(genotypes)}))
    return path


def test_register_genotype_writes_a_working_entry(tmp_path, monkeypatch, capsys):
    out = tmp_path / "entries"
    monkeypatch.setenv("NAS_ZOO_ENTRIES", str(out))  # the default directory
    assert main(["register-genotype", str(cells_file(tmp_path)), "--name", "my_cell100", "--dataset",
                 "cifar100"]) == 0
    assert f"wrote {out / 'my_cell100.yaml'}" in capsys.readouterr().out
    entry = nas_zoo.load_entry(out / "my_cell100.yaml")
    assert entry.default_tag == "cifar100" and entry.pretrained["cifar100"]["num_classes"] == 100
    assert "hf_hub_id" not in entry.pretrained["cifar100"]
    assert genotype_from_data(entry.arch["genotype"]) == parse_genotype(OFFICIAL["pcdarts_cifar_genotype"])
    nas_zoo.register_directory(out)
    model = timm.create_model("my_cell100")
    assert sum(p.numel() for p in model.parameters()) == 3634678 + 90 * 577  # PC-DARTS with a 100-class head
    with pytest.raises(nas_zoo.WeightsNotFoundError, match="the entry names no hf_hub_id"):
        timm.create_model("my_cell100", pretrained=True)


def test_register_genotype_with_stage_genotypes_and_overrides(tmp_path):
    stages = [OFFICIAL["dartsv2_genotype"], OFFICIAL["pdarts_genotype"], OFFICIAL["dartsv2_genotype"]]
    assert main(["register-genotype", str(cells_file(tmp_path, stages)), "--name", "my_staged", "--dataset",
                 "imagenet", "--out", str(tmp_path), "--init-channels", "16", "--cells-per-stage", "2", "2", "2"]) == 0
    entry = nas_zoo.load_entry(tmp_path / "my_staged.yaml")
    assert entry.default_tag == "in1k" and entry.arch["init_channels"] == 16 and entry.arch["stem"] == "imagenet"
    assert [genotype_from_data(g) for g in entry.arch["stage_genotypes"]] == [parse_genotype(s) for s in stages]


@pytest.mark.parametrize("args, message", [
    (["--name", "cdarts_cifar"], "'cdarts_cifar' is already an entry"),
    (["--name", "resnet50"], "clashes with an existing timm model"),
    (["--name", "Bad-Name"], "field 'name': expected a lowercase identifier"),
    (["--name", "ok_name", "--init-channels", "7", "--dataset", "imagenet"], "field 'arch.init_channels'"),
])
def test_register_genotype_refuses_bad_requests(tmp_path, capsys, args, message):
    argv = ["register-genotype", str(cells_file(tmp_path)), "--out", str(tmp_path / "e"), *args]
    if "--dataset" not in args:
        argv += ["--dataset", "cifar10"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas-zoo register-genotype: error: ") and message in err
    assert not (tmp_path / "e").exists() or not list((tmp_path / "e").iterdir())


def test_register_genotype_errors_for_files_and_directories(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("NAS_ZOO_ENTRIES", raising=False)
    good = cells_file(tmp_path)
    assert main(["register-genotype", str(good), "--name", "a_cell", "--dataset", "cifar10"]) == 2
    assert "no entry directory: pass --out DIR or set NAS_ZOO_ENTRIES" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"0": "Genotype(normal=__import__('os').getcwd())"}))
    assert main(["register-genotype", str(bad), "--name", "a_cell", "--dataset", "cifar10", "--out",
                 str(tmp_path)]) == 2
    assert "call to '__import__('os').getcwd' is not allowed" in capsys.readouterr().err
    assert main(["register-genotype", str(tmp_path / "missing.json"), "--name", "a_cell", "--dataset", "cifar10",
                 "--out", str(tmp_path)]) == 2
    assert "no such genotype file" in capsys.readouterr().err
    assert main(["register-genotype", str(good), "--name", "a_cell", "--dataset", "cifar10", "--out",
                 str(tmp_path)]) == 0
    capsys.readouterr()
    assert main(["register-genotype", str(good), "--name", "a_cell", "--dataset", "cifar10", "--out",
                 str(tmp_path)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["register-genotype", str(good), "--name", "a_cell", "--dataset", "cifar10", "--out",
                 str(tmp_path), "--force"]) == 0


def test_genotype_type_is_hashable_and_immutable():
    g = parse_genotype(CDARTS_CIFAR)
    assert isinstance(g, Genotype) and len({g, parse_genotype(CDARTS_CIFAR)}) == 1
    with pytest.raises(Exception):
        g.normal = ()
