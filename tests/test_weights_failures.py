"""What goes wrong gets one clear error: unreachable hub, damaged cache, bad config.json, invalid folders, failed
conversions, push of an invalid folder, missing converter modules."""
import json
import shutil
import sys
import types

import pytest
import timm
import torch

import nas_zoo
from hf_cache import offline_hub, seed_hf_cache  # noqa: F401  (fixture)
from nas_zoo.cli import main as cli
from nas_zoo.hub import ConversionError, FolderError, check_model_folder, convert_checkpoint
from reference import write_official_checkpoint

NAME = "cream_14"  # the smallest zoo model (64px)
HUB_ID = "nas-zoo/cream_14.in1k"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("fail")
    ckpt = write_official_checkpoint(NAME, root)
    convert_checkpoint(NAME, ckpt, root / "good")
    return root / "good"


def copy_of(folder, tmp_path):
    return shutil.copytree(folder, tmp_path / "copy")


def test_unreachable_hub_gives_one_clear_error(offline_hub):
    with pytest.raises(nas_zoo.WeightsNotFoundError) as err:
        timm.create_model(NAME, pretrained=True)
    text = str(err.value)
    assert "Looked in:" in text and f"'{HUB_ID}'" in text and str(offline_hub) in text
    assert "not in the local cache" in text and "HF_HUB_OFFLINE" in text
    entry = nas_zoo.get_entry(NAME)
    assert entry.pretrained["in1k"]["official_download"] in text
    assert f"nas-zoo convert {NAME} PATH --out DIR" in text
    assert "Traceback" not in text and "HTTP" not in text


def test_unreachable_hub_through_the_cli(offline_hub, tmp_path, capsys):
    (tmp_path / "val" / "a").mkdir(parents=True)
    assert cli(["validate", NAME, "--data", str(tmp_path / "val"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nas-zoo validate: error: no pretrained weights found for 'cream_14.in1k'")


def test_corrupted_safetensors_in_the_cache(folder, tmp_path, offline_hub):
    bad = copy_of(folder, tmp_path)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])  # a download cut in half
    seed_hf_cache(offline_hub, HUB_ID, bad)
    with pytest.raises(nas_zoo.CheckpointError, match=r"not a readable safetensors file.*\n.*from the Hugging "
                                                      r"Face hub 'nas-zoo/cream_14.in1k'.*models--nas-zoo--cream_14"):
        timm.create_model(NAME, pretrained=True)


def test_safetensors_that_does_not_fit(folder, tmp_path, offline_hub):
    from safetensors.torch import load_file, save_file
    bad = copy_of(folder, tmp_path)
    sd = load_file(str(bad / "model.safetensors"))
    del sd["conv_stem.weight"]
    save_file(sd, str(bad / "model.safetensors"))
    seed_hf_cache(offline_hub, HUB_ID, bad)
    with pytest.raises(nas_zoo.CheckpointError, match=r"does not fit model 'cream_14': 1 missing keys: "
                                                      r"conv_stem.weight"):
        timm.create_model(NAME, pretrained=True)


def _edit_config(folder, tmp_path, edit):
    bad = copy_of(folder, tmp_path)
    config = json.loads((bad / "config.json").read_text())
    edit(config)
    (bad / "config.json").write_text(json.dumps(config))
    return bad


def test_config_naming_an_unknown_architecture(folder, tmp_path, offline_hub):
    bad = _edit_config(folder, tmp_path, lambda c: c.update(architecture="nas_zoo_no_such_family"))
    with pytest.raises(FolderError, match=r"config.json: field 'architecture': unknown model "
                                          r"'nas_zoo_no_such_family'; expected a family architecture "
                                          r"\(.*nas_zoo_efficientnet.*\) with model_args.nas_zoo_entry"):
        check_model_folder(bad)
    seed_hf_cache(offline_hub, "alice/broken", bad)
    with pytest.raises(RuntimeError, match=r"Unknown model \(nas_zoo_no_such_family\)"):  # timm's own check
        timm.create_model("hf-hub:alice/broken", pretrained=True)


def test_config_without_the_entry(folder, tmp_path, offline_hub):
    bad = _edit_config(folder, tmp_path, lambda c: c["model_args"].pop("nas_zoo_entry"))
    with pytest.raises(FolderError, match=r"field 'model_args.nas_zoo_entry': missing"):
        check_model_folder(bad)
    seed_hf_cache(offline_hub, "alice/no-entry", bad)
    with pytest.raises(nas_zoo.EntryError, match=r"field 'model_args.nas_zoo_entry': missing: "
                                                 r"'nas_zoo_efficientnet' builds an architecture given as data"):
        timm.create_model("hf-hub:alice/no-entry", pretrained=True)


def test_config_with_a_bad_entry(folder, tmp_path, offline_hub):
    bad = _edit_config(folder, tmp_path,
                       lambda c: c["model_args"]["nas_zoo_entry"]["arch"].update(act_layer="no_such_act"))
    with pytest.raises(FolderError, match=r"field 'arch.act_layer': unknown activation 'no_such_act'"):
        check_model_folder(bad)
    seed_hf_cache(offline_hub, "alice/bad-entry", bad)
    with pytest.raises(nas_zoo.EntryError, match=r"hf-hub:alice/bad-entry config.json model_args.nas_zoo_entry: "
                                                 r"field 'arch.act_layer'"):
        timm.create_model("hf-hub:alice/bad-entry", pretrained=True)


def test_folder_problems_are_listed_together(folder, tmp_path):
    bad = copy_of(folder, tmp_path)
    (bad / "model.safetensors").unlink()
    card = (bad / "README.md").read_text().replace("library_name: timm", "library_name: transformers")
    (bad / "README.md").write_text(card)
    with pytest.raises(FolderError) as err:
        check_model_folder(bad)
    text = str(err.value)
    assert "model.safetensors: missing" in text and "'library_name': expected 'timm', got 'transformers'" in text


def test_entry_of_the_wrong_family_for_the_architecture(folder, tmp_path):
    def edit(c):
        c["model_args"]["nas_zoo_entry"]["family"] = "no_such_family"
    bad = _edit_config(folder, tmp_path, edit)
    with pytest.raises(FolderError, match=r"field 'family': unknown family 'no_such_family'"):
        check_model_folder(bad)


def test_push_refuses_an_invalid_folder(folder, tmp_path, monkeypatch, capsys):
    calls = []
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda *a, **k: calls.append("create_repo"))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda *a, **k: calls.append("upload_folder"))
    bad = copy_of(folder, tmp_path)
    (bad / "config.json").write_text("{not json")
    assert cli(["push", str(bad), "--repo-id", "alice/x"]) == 2
    err = capsys.readouterr().err
    assert "config.json: not valid JSON" in err and "nothing was uploaded" in err
    assert calls == []


def test_push_uploads_a_valid_folder(folder, monkeypatch, capsys):
    calls = []
    import huggingface_hub

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs))
        return types.SimpleNamespace(commit_url="https://huggingface.co/alice/x/commit/abc")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert cli(["push", str(folder), "--repo-id", "alice/x", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert calls == [] and "would upload 3 files" in out and "model.safetensors" in out
    assert "converted for 'nas-zoo/cream_14.in1k'" in out  # the card names another repo
    assert cli(["push", str(folder), "--repo-id", HUB_ID, "--private"]) == 0
    assert calls[0] == ("create_repo", HUB_ID, {"repo_type": "model", "private": True, "exist_ok": True})
    upload = calls[1][1]
    assert upload["repo_id"] == HUB_ID and upload["folder_path"] == str(folder)
    assert sorted(upload["allow_patterns"]) == ["README.md", "config.json", "model.safetensors"]
    assert "commit/abc" in capsys.readouterr().out


def test_conversion_that_is_not_exact_writes_nothing(tmp_path, monkeypatch):
    import nas_zoo.hub as hub
    real = hub.load_model_folder

    def off_by_a_bit(folder, **kwargs):
        model = real(folder, **kwargs)
        with torch.no_grad():
            model.classifier.bias.add_(1e-3)
        return model

    monkeypatch.setattr(hub, "load_model_folder", off_by_a_bit)
    ckpt = write_official_checkpoint(NAME, tmp_path)
    with pytest.raises(ConversionError, match=r"not exact: the folder rebuilt from config.json gives logits "
                                              r"1\.0\d*e-03 away"):
        convert_checkpoint(NAME, ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind


def test_convert_refuses_to_overwrite_and_names_bad_inputs(folder, tmp_path, capsys):
    ckpt = write_official_checkpoint(NAME, tmp_path)
    assert cli(["convert", NAME, str(ckpt), "--out", str(folder)]) == 2
    assert "already holds" in capsys.readouterr().err
    assert cli(["convert", "dna_a", str(ckpt), "--out", str(tmp_path / "o")]) == 2
    assert "does not fit model 'dna_a'" in capsys.readouterr().err
    assert cli(["convert", NAME, str(tmp_path / "missing.pth"), "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    assert cli(["convert", "cdarts_a", str(write_official_checkpoint("cdarts_a", tmp_path)), "--out",
                str(tmp_path / "o"), "--ema"]) == 2
    assert "EMA weights were asked for, but none of" in capsys.readouterr().err


def test_convert_takes_the_asked_copy(tmp_path):
    """--ema / --no-ema pick the copy; the default is what the official evaluation used."""
    from safetensors.torch import load_file
    from reference import Fixture
    ckpt = write_official_checkpoint("dna_a", tmp_path)
    fx = Fixture("dna", "dna_a").state_dict()
    for flag, offset in ((None, 0.0), (True, 1.0)):
        out = tmp_path / f"out-{flag}"
        report = convert_checkpoint("dna_a", ckpt, out, use_ema=flag)
        assert report.weights_key == ("state_dict_ema" if flag else "state_dict")
        sd = load_file(str(out / "model.safetensors"))
        assert torch.equal(sd["conv_stem.weight"], fx["conv_stem.weight"] + offset)


def test_convert_dispatches_to_a_special_converter(monkeypatch, capsys):
    seen = {}
    fake = types.ModuleType("nas_zoo.commands.convert_densenas")
    fake.add_arguments = lambda p: (p.add_argument("--net-config"), p.add_argument("--checkpoint"),
                                    p.add_argument("--name"), p.add_argument("--out"))
    fake.run = lambda args: seen.update(vars(args)) or 0
    monkeypatch.setitem(sys.modules, "nas_zoo.commands.convert_densenas", fake)
    assert cli(["convert", "densenas", "--net-config", "n.json", "--checkpoint", "w.pth", "--name", "d",
                "--out", "o"]) == 0
    assert seen == {"net_config": "n.json", "checkpoint": "w.pth", "name": "d", "out": "o"}

    monkeypatch.setitem(sys.modules, "nas_zoo.commands.convert_densenas", None)  # as if the module is absent
    assert cli(["convert", "densenas", "--net-config", "n.json"]) == 2
    assert "no 'densenas' converter (nas_zoo.commands.convert_densenas is missing)" in capsys.readouterr().err
