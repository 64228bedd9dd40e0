"""DenseNAS: the official net_config format, official checkpoints -> the official logits (tests/fixtures/densenas),
and `nas-zoo convert densenas` for both network types."""
import os
import subprocess
import sys

import pytest
import timm
import torch

import nas_zoo
from nas_zoo.cli import main as cli
from nas_zoo.cost import count_macs, count_params
from nas_zoo.families.densenas import (NetConfigError, mbv2_official_to_timm, parse_net_config, read_net_config,
                                       resnet_official_to_ours)
from reference import Fixture

MBV2 = ["densenas_a", "densenas_b", "densenas_c"]
RES_EXAMPLE = "densenas_res_example"


def fixture(name):
    return Fixture("densenas", name)


def official_weights_file(fx, path):
    """As run_apis/retrain.py saved it: torch.save(nn.DataParallel(model).state_dict()) -> 'module.' keys."""
    torch.save({"module." + k: v for k, v in fx.state_dict().items()}, path)
    return path


def max_diff(model, fx):
    (stem, x), = fx.cases()
    with torch.no_grad():
        return (model.eval()(x) - fx.logits(stem)).abs().max().item()


def convert(tmp_path, fx_name, name, net_config=None, checkpoint=True):
    fx = fixture(fx_name)
    args = ["convert", "densenas", "--net-config", str(net_config or fx.dir / "net_config"), "--name", name,
            "--out", str(tmp_path / "entries")]
    if checkpoint:
        args += ["--checkpoint", str(official_weights_file(fx, tmp_path / f"{name}_weights.pt"))]
    return cli(args), tmp_path / "entries"


# ---------------------------------------------------------------------------------------------- built-in entries

@pytest.mark.parametrize("name", MBV2)
def test_official_checkpoint_gives_official_logits(name, tmp_path):
    fx = fixture(name)
    path = official_weights_file(fx, tmp_path / "weights.pt")
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    diff = max_diff(model, fx)
    assert diff <= fx.facts["atol"], f"{name}: max |diff| {diff:.2e} > {fx.facts['atol']}"


@pytest.mark.parametrize("name", MBV2 + [RES_EXAMPLE])
def test_params_and_macs_equal_the_official_counts(name):
    fx = fixture(name)
    family, arch = read_net_config(fx.dir / "net_config").to_family_arch()
    entry = nas_zoo.load_entry({"name": f"count_{name}", "family": family, "arch": arch})
    model = nas_zoo.families.get_family(family).build(entry, pretrained_cfg={})
    assert count_params(model) == fx.facts["num_params"]
    assert count_macs(model, (3, 224, 224)) == fx.facts["macs_conv_linear"]["224"]


@pytest.mark.parametrize("name", MBV2)
def test_builtin_entries_are_their_official_net_configs(name):
    cfg = read_net_config(fixture(name).dir / "net_config")
    assert cfg.to_family_arch() == ("efficientnet", nas_zoo.get_entry(name).arch)
    assert nas_zoo.get_entry(name).provenance["net_config"] == cfg.to_text().split("net_type")[0]


@pytest.mark.parametrize("mistake", ["relu", "bn_eps"])
def test_a_broken_mbv2_variant_fails_the_same_comparison(mistake):
    entry = nas_zoo.get_entry("densenas_c").to_dict()
    entry["name"] = f"broken_densenas_c_{mistake}"
    entry["pretrained"] = {}
    if mistake == "relu":
        entry["arch"]["act_layer"] = "relu"
    else:
        entry["arch"]["bn_eps"] = 1e-5
    fx = fixture("densenas_c")
    model = timm.create_model(nas_zoo.register_entry(entry))
    model.load_state_dict(mbv2_official_to_timm(fx.state_dict()))
    assert max_diff(model, fx) > fx.facts["atol"]


def test_without_a_checkpoint_the_error_says_where_to_get_it(monkeypatch):
    monkeypatch.setattr(nas_zoo.weights, "_hub_file", lambda *a, **k: (None, "offline"))
    with pytest.raises(nas_zoo.WeightsNotFoundError, match=r"drive\.google\.com.*\n.*pretrained_cfg_overlay"):
        timm.create_model("densenas_a", pretrained=True)


# ---------------------------------------------------------------------------------------------- key layouts

def test_mbv2_keys_map_to_timm_and_ours_pass_through():
    sd = fixture("densenas_a").state_dict()
    mapped = mbv2_official_to_timm(sd)
    model = timm.create_model("densenas_a")
    assert model.load_state_dict(mapped, strict=True)
    assert "blocks.0.0.conv_pw.weight" in mapped and "blocks.0.0.bn2.running_var" in mapped  # t1: no expansion
    assert "blocks.2.1.conv_pwl.weight" in mapped and "conv_head.weight" in mapped
    assert mbv2_official_to_timm(mapped) == mapped


def test_identity_stack_layers_are_numbered_out():
    """A skip_connect stack layer holds no weights; the layers after it move up in our numbering."""
    text = ("[[32, 64], 'basic_block', ['basic_block', 'skip_connect', 'basic_block'], 3, 2]\n"
            "net_type: res")
    cfg = parse_net_config(text)
    assert cfg.to_family_arch()[1]["stages"][0]["layers"] == ["basic", "basic", "basic"]
    official = {f"blocks.0.{layer}.conv1.weight": torch.zeros(1)
                for layer in ("head_layer", "stack_layers.0", "stack_layers.2")}
    assert sorted(resnet_official_to_ours(official)) == [f"stages.0.{i}.conv1.weight" for i in range(3)]


def test_bottleneck_shapes_follow_the_official_code():
    """Official Bottleneck: in_ch x 4 unless it is 32 (the stem), out = 4 x planes, stride on the 3x3 conv,
    shortcut when stride != 1 or in != out. The shapes below are worked out from models/operations.py."""
    text = "[[32, 64], 'bottle_neck', ['bottle_neck'], 1, 2]|[[64, 128], 'bottle_neck', [], 0, 2]\nnet_type: res"
    official = {
        "input_block.0.weight": (32, 3, 3, 3),
        "blocks.0.head_layer.conv1.weight": (64, 32, 1, 1), "blocks.0.head_layer.conv2.weight": (64, 64, 3, 3),
        "blocks.0.head_layer.conv3.weight": (256, 64, 1, 1),
        "blocks.0.head_layer.downsample.0.weight": (256, 32, 1, 1),
        "blocks.0.stack_layers.0.conv1.weight": (64, 256, 1, 1),
        "blocks.0.stack_layers.0.conv3.weight": (256, 64, 1, 1),
        "blocks.1.head_layer.conv1.weight": (128, 256, 1, 1), "blocks.1.head_layer.conv2.weight": (128, 128, 3, 3),
        "blocks.1.head_layer.downsample.0.weight": (512, 256, 1, 1),
        "classifier.weight": (1000, 512),
    }
    entry = nas_zoo.load_entry({"name": "bottleneck_example", "family": "densenas_resnet",
                                "arch": parse_net_config(text).to_family_arch()[1]})
    model = nas_zoo.families.get_family("densenas_resnet").build(entry, pretrained_cfg={})
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = resnet_official_to_ours({k: torch.zeros(s) for k, s in official.items()})
    for key, shape in mapped.items():
        assert ours[key] == tuple(shape.shape), key
    assert "stages.0.1.downsample.0.weight" not in ours
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


# ---------------------------------------------------------------------------------------------- convert

def test_convert_res_net_config_gives_official_logits(tmp_path):
    rc, out = convert(tmp_path, RES_EXAMPLE, "res_example_converted")
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["res_example_converted.safetensors", "res_example_converted.yaml"]
    name, = nas_zoo.register_directory(out)
    fx = fixture(RES_EXAMPLE)
    model = timm.create_model(name, pretrained=True)
    assert count_params(model) == fx.facts["num_params"]
    assert max_diff(model, fx) <= fx.facts["atol"]


def test_a_broken_res_variant_fails_the_same_comparison(tmp_path):
    """Block 4 with stride 2 instead of 1: the same weights fit, the logits do not."""
    fx = fixture(RES_EXAMPLE)
    text = (fx.dir / "net_config").read_text().replace("[[176, 208], 'basic_block', ['basic_block'], 1, 1]",
                                                       "[[176, 208], 'basic_block', ['basic_block'], 1, 2]")
    broken = tmp_path / "net_config"
    broken.write_text(text)
    rc, out = convert(tmp_path, RES_EXAMPLE, "res_example_broken", net_config=broken)
    assert rc == 0
    name, = nas_zoo.register_directory(out)
    assert max_diff(timm.create_model(name, pretrained=True), fx) > fx.facts["atol"]


def test_converted_entries_load_through_nas_zoo_entries(tmp_path):
    """Both network types, in a fresh process that finds them only through NAS_ZOO_ENTRIES."""
    assert convert(tmp_path, RES_EXAMPLE, "env_res")[0] == 0
    assert convert(tmp_path, "densenas_b", "env_mbv2")[0] == 0
    code = ("import sys, timm, torch\n"
            f"sys.path.insert(0, {os.path.dirname(__file__)!r})\n"
            "from reference import Fixture\n"
            f"for name, fx in (('env_res', {RES_EXAMPLE!r}), ('env_mbv2', 'densenas_b')):\n"
            "    fx = Fixture('densenas', fx)\n"
            "    model = timm.create_model(name, pretrained=True).eval()\n"
            "    with torch.no_grad():\n"
            "        print(name, (model(fx.cases()[0][1]) - fx.logits()).abs().max().item())\n")
    env = {**os.environ, "NAS_ZOO_ENTRIES": str(tmp_path / "entries"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", "import nas_zoo\n" + code], capture_output=True, text=True, env=env,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    diffs = dict(line.split() for line in out.stdout.splitlines())
    assert set(diffs) == {"env_res", "env_mbv2"}
    assert all(float(d) <= 1e-4 for d in diffs.values()), diffs


def test_converted_file_path_is_relative_to_the_entry(tmp_path, monkeypatch):
    rc, out = convert(tmp_path, RES_EXAMPLE, "res_relative")
    entry = nas_zoo.load_entry(out / "res_relative.yaml")
    assert entry.pretrained["in1k"]["file"] == "res_relative.safetensors"
    monkeypatch.chdir(tmp_path.parent)
    nas_zoo.register_entry(entry)
    assert timm.create_model("res_relative", pretrained=True).stem.conv.weight.abs().sum() > 0


def test_convert_without_checkpoint_writes_an_architecture_only_entry(tmp_path):
    rc, out = convert(tmp_path, "densenas_a", "arch_only_a", checkpoint=False)
    assert rc == 0 and [p.name for p in out.iterdir()] == ["arch_only_a.yaml"]
    entry = nas_zoo.load_entry(out / "arch_only_a.yaml")
    assert entry.pretrained == {} and entry.arch == nas_zoo.get_entry("densenas_a").arch


def test_convert_refuses_weights_that_do_not_fit_the_net_config(tmp_path, capsys):
    """densenas_c weights read with densenas_b's net_config: one error naming the mismatched keys."""
    fx_c = fixture("densenas_c")
    weights = official_weights_file(fx_c, tmp_path / "weights.pt")
    rc = cli(["convert", "densenas", "--net-config", str(fixture("densenas_b").dir / "net_config"), "--checkpoint",
              str(weights), "--name", "mismatch", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "does not fit model 'mismatch'" in err and "blocks.2.0.conv_pw.weight" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "mismatch.yaml").exists()


def test_convert_refuses_to_overwrite_and_to_shadow_a_model(tmp_path, capsys):
    assert convert(tmp_path, "densenas_a", "twice", checkpoint=False)[0] == 0
    assert convert(tmp_path, "densenas_a", "twice", checkpoint=False)[0] == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert convert(tmp_path, "densenas_a", "densenas_c", checkpoint=False)[0] == 2
    assert "already a registered model" in capsys.readouterr().err
    assert convert(tmp_path, "densenas_a", "resnet50", checkpoint=False)[0] == 2
    assert "clashes with an existing timm model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the parser

@pytest.mark.parametrize("name", MBV2 + [RES_EXAMPLE])
def test_net_config_text_round_trips(name):
    text = (fixture(name).dir / "net_config").read_text()
    assert parse_net_config(text).to_text() == text


def test_net_config_with_code_is_rejected_not_run(tmp_path):
    marker = tmp_path / "ran"
    text = (f"[[32, 56], 'basic_block', [], 0, 2]|__import__('os').system('touch {marker}')\n"
            "net_type: res")
    with pytest.raises(NetConfigError, match=r"item 2 of 2: not a Python literal list .*code is never run"):
        parse_net_config(text)
    path = tmp_path / "net_config"
    path.write_text(f"[[32, 56], 'basic_block', [], 0, __import__('os').system('touch {marker}')]\nnet_type: res\n")
    with pytest.raises(NetConfigError, match=r"net_config: item 1 of 1: not a Python literal"):
        read_net_config(path)
    assert not marker.exists()


@pytest.mark.parametrize("text, message", [
    ("[[32, 56], 'basic_block', [], 0, 2]\n", r"net_type: missing: .*'net_type: mbv2'"),
    ("[[32, 56], 'basic_block', [], 0, 2]\nnet_type: vgg\n", r"net_type: expected one of \['mbv2', 'res'\]"),
    ("[[32, 56], 'basic_block', [], 2]\nnet_type: res\n", r"item 1 of 1 .*: expected 5 fields"),
    ("[[32, 56], 'basic_block', [], 0, 2]|\nnet_type: res\n", r"item 2 of 2: empty"),
    ("[[32, 56], 'mbconv_k3_t3', [], 0, 2]\nnet_type: res\n", r"head_op: expected one of \['basic_block', "),
    ("[[32, 56], 'basic_block', ['conv3x3'], 1, 2]\nnet_type: res\n", r"stack_ops: expected a list of"),
    ("[[32, 56], 'basic_block', [], 0, 0]\nnet_type: res\n", r"stride: expected an integer >= 1, got 0"),
    ("[[32, '56'], 'basic_block', [], 0, 2]\nnet_type: res\n", r"out_ch: expected an integer >= 1, got '56'"),
    ("[[32, 56], 'basic_block', [], 0, 2]|[[64, 96], 'basic_block', [], 0, 2]\nnet_type: res\n",
     r"item 2 of 2 .*: in_ch 64 must equal the out_ch 56"),
    ("[[32, 56], 'basic_block', [], 0, 2]|[[56, 64], 'conv1_1']\nnet_type: res\n", r"'conv1_1' is only valid"),
    ("[[16, 24], 'mbconv_k3_t3', [], 0, 2]\nnet_type: mbv2\n", r"an mbv2 net_config ends with the final 1x1 conv"),
    ("[[32, 56], 'bottle_neck', [], 0, 2]|[[56, 64], 'basic_block', [], 0, 2]\nnet_type: res\n",
     r"item 2 of 2 .*: the head layer \(basic_block\) takes 56 input channels but gets 224"),
    ("[[16, 20], 'mbconv_k3_t3', [], 0, 2]|[[20, 1984], 'conv1_1']\nnet_type: mbv2\n", r"width 20 is not a multiple"),
    ("net_type: res\n", r"no items"),
    ("[[32, 56], 'basic_block', [], 0, 2]\nnet_type = res\n", r"line 2: expected 'net_type: mbv2'"),
])
def test_a_malformed_net_config_gives_one_clear_error(text, message, tmp_path):
    path = tmp_path / "net_config"
    path.write_text(text)
    with pytest.raises(NetConfigError, match=message) as info:
        read_net_config(path).to_family_arch()
    assert str(info.value).startswith(str(path) + ": ")


def test_cli_reports_a_malformed_net_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "net_config"
    bad.write_text("[[32, 56], 'basic_block', [], 0, 2]\n")
    rc = cli(["convert", "densenas", "--net-config", str(bad), "--name", "x_bad", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "net_type: missing" in err


def test_convert_densenas_main_takes_its_own_argv(tmp_path):
    from nas_zoo.commands import convert_densenas
    net_config = fixture("densenas_a").dir / "net_config"
    assert convert_densenas.main(["--net-config", str(net_config), "--name", "main_a", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "main_a.yaml").is_file()


def test_bare_net_config_string_with_net_type():
    """The net_config string alone (as in configs/imagenet_train_cfg.py), with the type given separately."""
    text = (fixture("densenas_c").dir / "net_config").read_text().split("net_type")[0]
    assert parse_net_config(text, net_type="mbv2").to_family_arch()[1] == nas_zoo.get_entry("densenas_c").arch
    with pytest.raises(NetConfigError, match="the file says 'mbv2' but 'res' was asked for"):
        parse_net_config(text + "net_type: mbv2", net_type="res")


def test_checkpoint_layout_must_be_known_to_the_family():
    entry = nas_zoo.get_entry("densenas_a").to_dict()
    entry["name"] = "bad_layout"
    entry["pretrained"]["in1k"]["checkpoint_layout"] = "darts"
    with pytest.raises(nas_zoo.EntryError, match=r"pretrained\.in1k\.checkpoint_layout.*\['densenas'\], got 'darts'"):
        nas_zoo.load_entry(entry)
