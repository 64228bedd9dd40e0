"""Entry schema, registration and checkpoint errors: each bad input gives one clear error naming what is wrong."""
import copy
import os
import subprocess
import sys
import textwrap

import pytest
import timm
import torch
import yaml

import nas_zoo
from nas_zoo.checkpoint import CheckpointError, extract_state_dict, read_checkpoint
from nas_zoo.entry import EntryError, load_entry

BASE = {
    "name": "tiny_effnet",
    "family": "efficientnet",
    "arch": {"model": "efficientnet", "block_args": [["ds_r1_k3_s1_c8"], ["ir_r1_k3_s2_e3_c16_se0.25"]],
             "stem_size": 8, "num_features": 32, "act_layer": "swish"},
}


def mutate(path, value):
    entry = copy.deepcopy(BASE)
    node = entry
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[key]
    if value is KeyError:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return entry


@pytest.mark.parametrize("path, value, field, message", [
    ("family", "resnet", "family", "unknown family 'resnet'; expected one of"),
    ("name", "Bad-Name", "name", "lowercase identifier"),
    ("name", KeyError, "name", "missing (required)"),
    ("arch", KeyError, "arch", "missing (required)"),
    ("arch.block_args", [["ir_r1_kX_s2_c16"]], "arch.block_args[0][0]", "not a valid timm block string"),
    ("arch.block_args", [["zz_r1_k3_s1_c16"]], "arch.block_args[0][0]", "not a valid timm block string"),
    ("arch.block_args", [[]], "arch.block_args[0]", "at least one block"),
    ("arch.block_args", "ir_r1_k3_s1_c16", "arch.block_args", "expected a list of stages"),
    ("arch.stem_size", "32", "arch.stem_size", "expected an integer, got str '32'"),
    ("arch.stem_size", True, "arch.stem_size", "expected an integer, got bool"),
    ("arch.act_layer", "wobble", "arch.act_layer", "unknown activation 'wobble'"),
    ("arch.model", "resnet", "arch.model", "expected one of ['efficientnet', 'mobilenetv3']"),
    ("arch.head_bias", True, "arch.head_bias", "only valid with model: mobilenetv3"),
    ("arch.se_layer", {"gate": "sigmoid"}, "arch.se_layer.gate", "unknown field"),
    ("arch.extra", 1, "arch.extra", "unknown field"),
    ("pretrained", {"in1k": {"input_size": [3, 224]}}, "pretrained.in1k.input_size", "list of 3 integers"),
    ("pretrained", {"in1k": {"crop_pct": "0.9"}}, "pretrained.in1k.crop_pct", "expected a number"),
    ("pretrained", {"in1k": {"interpolation": "lanczos9"}}, "pretrained.in1k.interpolation", "expected one of"),
    ("pretrained", {"IN1K": {}}, "pretrained.IN1K", "lowercase identifier"),
    ("pretrained", {"in1k": {"weights_url": "x"}}, "pretrained.in1k.weights_url", "unknown field"),
    ("paper", {"top1": "high"}, "paper.top1", "expected a number"),
    ("extra_top", 1, "extra_top", "unknown field"),
])
def test_malformed_entry_names_file_and_field(tmp_path, path, value, field, message):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(mutate(path, value)))
    with pytest.raises(EntryError) as info:
        load_entry(f)
    err = info.value
    assert err.source == str(f) and err.field == field
    assert message in str(err) and str(f) in str(err) and f"'{field}'" in str(err)


def test_not_yaml_and_not_a_mapping(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("name: [unclosed\n")
    with pytest.raises(EntryError, match=r"x\.yaml: field '<file>': not valid YAML"):
        load_entry(f)
    f.write_text("- just\n- a list\n")
    with pytest.raises(EntryError, match=r"field '<root>': expected a mapping"):
        load_entry(f)
    with pytest.raises(EntryError, match=r"cannot read the entry file"):
        load_entry(tmp_path / "missing.yaml")


def test_yaml_is_never_executed(tmp_path):
    f = tmp_path / "evil.yaml"
    f.write_text("name: !!python/object/apply:os.system ['touch " + str(tmp_path / "pwned") + "']\n")
    with pytest.raises(EntryError):
        load_entry(f)
    assert not (tmp_path / "pwned").exists()


def test_register_entry_returns_timm_name_and_builds(tmp_path):
    name = nas_zoo.register_entry(mutate("name", "tiny_effnet_a"))
    assert name == "tiny_effnet_a" and name in timm.list_models()
    model = timm.create_model(name, num_classes=5)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    # same entry again: a no-op; a different entry under the same name: refused unless replace=True
    assert nas_zoo.register_entry(mutate("name", "tiny_effnet_a")) == name
    other = mutate("name", "tiny_effnet_a")
    other["arch"]["stem_size"] = 16
    with pytest.raises(EntryError, match="'tiny_effnet_a' is already registered"):
        nas_zoo.register_entry(other)
    nas_zoo.register_entry(other, replace=True)
    assert timm.create_model(name).conv_stem.out_channels == 16


def test_name_clash_with_timm_model_is_refused():
    with pytest.raises(EntryError, match="'resnet18' clashes with an existing timm model"):
        nas_zoo.register_entry(mutate("name", "resnet18"))
    assert type(timm.create_model("resnet18")).__name__ == "ResNet"


def test_entries_env_directories(tmp_path):
    d1, d2 = tmp_path / "a", tmp_path / "b"
    d1.mkdir()
    d2.mkdir()
    (d1 / "one.yaml").write_text(yaml.safe_dump(mutate("name", "env_entry_one")))
    (d2 / "two.yaml").write_text(yaml.safe_dump(mutate("name", "env_entry_two")))
    code = "import nas_zoo, timm; print(timm.is_model('env_entry_one'), timm.is_model('env_entry_two'))"
    env = {**os.environ, "NAS_ZOO_ENTRIES": os.pathsep.join([str(d1), str(d2)])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]
    (d2 / "bad.yaml").write_text("name: x\nfamily: nope\narch: {}\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    # a broken entry found through NAS_ZOO_ENTRIES is skipped with one warning, the others still register
    assert out.returncode == 0 and out.stdout.split() == ["True", "True"], out.stderr
    assert "bad.yaml: field 'family': unknown family 'nope'" in out.stderr


def test_entry_round_trips_through_yaml(tmp_path):
    entry = nas_zoo.get_entry("cream_14")
    path = entry.save(tmp_path / "copy.yaml")
    again = load_entry(path)
    assert again.to_dict() == entry.to_dict()


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_that_does_not_fit_names_model_and_keys(tmp_path):
    sd = timm.create_model("dna_a").state_dict()
    del sd["conv_stem.weight"]
    sd["bogus.weight"] = torch.zeros(1)
    sd["classifier.weight"] = torch.zeros(10, 1280)
    path = tmp_path / "ck.pth"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(CheckpointError) as info:
        timm.create_model("dna_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    msg = str(info.value)
    assert "does not fit model 'dna_a'" in msg and str(path) in msg
    assert "1 missing keys: conv_stem.weight" in msg
    assert "1 unexpected keys: bogus.weight" in msg
    assert "classifier.weight (10, 1280) vs (1000, 1280)" in msg


def test_checkpoint_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused to unpickle"):
        read_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_read_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        read_checkpoint(tmp_path / "none.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth"):
        read_checkpoint(junk)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        read_checkpoint(bad_st)


def test_extract_state_dict_choices():
    w = {"a": torch.zeros(1)}
    ema = {"a": torch.ones(1)}
    assert extract_state_dict({"state_dict": w, "state_dict_ema": ema})[1] == "state_dict_ema"
    assert extract_state_dict({"state_dict": w, "state_dict_ema": ema}, use_ema=False)[1] == "state_dict"
    assert extract_state_dict({"module.a": torch.zeros(1)})[0].keys() == {"a"}
    with pytest.raises(CheckpointError, match="EMA weights were asked for"):
        extract_state_dict({"state_dict": w}, use_ema=True)
    with pytest.raises(CheckpointError, match="no weights found"):
        extract_state_dict({"epoch": 3, "optimizer": {}})
    with pytest.raises(CheckpointError, match="expected a state dict"):
        extract_state_dict([1, 2])


def test_cli_list_and_info():
    from nas_zoo.cli import main
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["list", "--json"]) == 0
    rows = [yaml.safe_load(line) for line in buf.getvalue().splitlines()]
    by_name = {r["name"]: r for r in rows}
    assert by_name["dna_a"]["params_m"] == pytest.approx(4.243, abs=1e-3)
    assert by_name["cream_14"]["macs_m"] == pytest.approx(13.2, abs=0.05)  # at its 64 px eval size
    assert by_name["dna_a"]["paper_top1"] == 77.1
    assert by_name["dna_a"]["weights"] == "in1k"
    # an architecture-only entry keeps its tag (preprocessing) but lists no weights
    assert by_name["darts_v1_cifar"]["weights"] == "-" and by_name["darts_v1_cifar"]["tags"] == ["cifar10"]
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["list"]) == 0
    lines = buf.getvalue().splitlines()
    name_col = lines[0].index("family")
    assert all(line[name_col - 1] == " " and line[name_col:].split()[0] in {"family", "darts_cell", "efficientnet",
                                                                             "shufflenet_spos", "densenas_resnet"}
               for line in lines[2:-1]), lines
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["info", "dna_b"]) == 0
    text = buf.getvalue()
    assert "4.918" in text and "392.49" in text and "394" in text
    err = io.StringIO()
    from contextlib import redirect_stderr
    with redirect_stderr(err):
        assert main(["info", "no_such_model"]) == 2
    assert "no nas_zoo entry named 'no_such_model'" in err.getvalue()


@pytest.mark.slow
def test_wheel_ships_entries_and_no_top_level_search(tmp_path):
    """A built wheel installs nas_zoo, nas_zoo.search and the entries, and no generic top-level module."""
    import zipfile
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(root)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("nas_zoo-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"nas_zoo"}, tops
    assert "nas_zoo/configs/models/dna_a.yaml" in names and "nas_zoo/search/__init__.py" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = textwrap.dedent("""
        import nas_zoo, nas_zoo.search, timm
        print(nas_zoo.__file__)
        print(len(timm.list_models('dna_*')), timm.create_model('cream_14').num_classes)
    """)
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith(str(target)) and lines[1] == "4 1000"
