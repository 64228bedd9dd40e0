"""Regenerate built-in entries (configs/models) and test fixtures (tests/fixtures) from a reference folder.

    python tools/import_reference.py ../shared/reference

Only the EfficientNet-family models are handled here; the facts come from each model's meta.json.
"""
import json
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
IMAGENET = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])

DNA = dict(title="Blockwisely Supervised Neural Architecture Search with Knowledge Distillation",
           arxiv="1911.13053", venue="CVPR 2020", license="unknown",
           origin="https://github.com/changlin31/DNA")
CREAM = dict(title="Cream of the Crop: Distilling Prioritized Paths For One-Shot Neural Architecture Search",
             arxiv="2010.15821", venue="NeurIPS 2020", license="mit",
             origin="https://github.com/microsoft/Cream")
CDARTS = dict(title="Cyclic Differentiable Architecture Search", arxiv="2006.10724", venue="TPAMI 2022",
              license="mit", origin="https://github.com/microsoft/Cream/tree/main/CDARTS")
CREAM_SE = {"gate_layer": "hard_sigmoid", "act_layer": "relu", "rd_round": True}


def _num(text):
    return float(str(text).rstrip("M")) if text else None


def dna_entry(name, meta):
    spec = meta["architecture_spec"]
    pr = meta["paper_reported"]
    return {
        "name": name, "family": "efficientnet",
        "description": f"{meta['official_name']}: searched by DNA (block-wise distillation from EfficientNet-B7).",
        "arch": {"model": "efficientnet", "block_args": spec["arch_def"], "stem_size": spec["stem_size"],
                 "num_features": spec["num_features"], "act_layer": "swish", "bn_eps": 1e-5,
                 "drop_rate": 0.2, "drop_path_rate": 0.2},
        "pretrained": {"in1k": {
            "hf_hub_id": f"nas-zoo/{name}.in1k", "input_size": [3, 224, 224], "crop_pct": 0.875,
            "interpolation": "bicubic", **IMAGENET, "num_classes": 1000, "license": DNA["license"],
            "origin_url": DNA["origin"], "paper_name": DNA["title"], "paper_ids": f"arXiv:{DNA['arxiv']}",
            "official_weights": "state_dict",
            "official_download": meta["checkpoint_format"]["download"].split("README: Google Drive folder ")[-1]
                                 .split(" ")[0],
            "official_note": "retraining/validate.py evaluates checkpoint['state_dict'] (use_ema=False), "
                             "so that is what pretrained=True takes from an official file."}},
        "paper": {"title": DNA["title"], "arxiv": DNA["arxiv"], "venue": DNA["venue"], "top1": pr["top1"],
                  "top5": pr["top5"], "params_m": _num(pr["params"]), "flops_m": _num(pr["flops"]),
                  "flops_note": "official counter: conv+linear MACs plus BN and bias adds",
                  "source": "changlin31/DNA README"},
        "provenance": {"repo": meta["source"]["repo"], "commit": meta["source"]["commit"],
                       "file": meta["source"]["file"], "method": "dna",
                       "supernet_op_indices": spec["supernet_op_indices_per_searched_stage"]},
    }


def cream_entry(name, meta):
    spec = meta["architecture_spec"]
    pr = meta["paper_reported"]
    is_cdarts = name.startswith("cdarts")
    paper = CDARTS if is_cdarts else CREAM
    res = meta["eval_preprocess"]["resolution"]
    ck = meta["checkpoint_format"]
    if is_cdarts:
        download = "https://drive.google.com/drive/folders/" + ck["download"].split("folder ")[1].split(" ")[0]
        weights, note = "state_dict", ("the CDARTS detection/segmentation code loads checkpoint['state_dict']; "
                                       "eval preprocessing is the Cream recipe (the repo has no ImageNet eval)")
    else:
        folder = ck["download"].split("(folder ")[1].split(")")[0]
        download = f"https://drive.google.com/drive/folders/{folder}"
        weights, note = "state_dict_ema", ("Cream tools/test.py evaluates only the EMA copy "
                                           "(checkpoint['state_dict_ema']); a file without it falls back to "
                                           "'state_dict'")
    pr_flops = _num(pr["flops"])
    return {
        "name": name, "family": "efficientnet",
        "description": (f"{meta['official_name']}: CDARTS chain-structured search space result (960-wide last conv)."
                        if is_cdarts else
                        f"{meta['official_name']}: searched by Cream (prioritized paths, one-shot NAS)."),
        "arch": {"model": "mobilenetv3", "block_args": spec["child_arch_def_after_rewrite"], "stem_size": 16,
                 "num_features": 1280, "act_layer": "swish", "bn_eps": 1e-5, "se_layer": CREAM_SE,
                 "se_from_exp": True, "head_bias": True, "drop_rate": 0.0 if is_cdarts else 0.2},
        "pretrained": {"in1k": {
            "hf_hub_id": f"nas-zoo/{name}.in1k", "input_size": [3, res, res], "crop_pct": 0.875,
            "interpolation": "bicubic", **IMAGENET, "num_classes": 1000, "license": paper["license"],
            "origin_url": paper["origin"], "paper_name": paper["title"], "paper_ids": f"arXiv:{paper['arxiv']}",
            "official_weights": weights, "official_download": download, "official_note": note}},
        "paper": {k: v for k, v in {
            "title": paper["title"], "arxiv": paper["arxiv"], "venue": paper["venue"], "top1": pr["top1"],
            "top5": pr["top5"], "params_m": _num(pr["params"]), "flops_m": pr_flops,
            "flops_note": ("README value; no counter reproduces it exactly" if is_cdarts else
                           f"ptflops 0.6.2 at {res}px (conv+linear MACs plus bias, BN, ReLU, pooling)"),
            "source": pr["source"]}.items() if v is not None},
        "provenance": {"repo": meta["source"]["repo"], "commit": meta["source"]["commit"],
                       "file": meta["source"]["file"], "method": "cdarts" if is_cdarts else "cream",
                       "arch_list": spec["arch_list"]},
    }


def hook_macs(meta, name):
    f = meta["flops"]
    if "own_hook_counter_224" in f:
        return {"224": f["own_hook_counter_224"]["value"]}
    if "hook_macs_conv_linear_only" in f:
        h = f["hook_macs_conv_linear_only"]
        return {"224": h["at_224"], str(f["native_eval_resolution"]): h["at_native"]}
    return {"224": f["hook_macs_conv_linear_only_224"]}


def copy_fixture(src: Path, dst: Path, meta, name):
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix in (".npy", ".npz") or f.name == "state_keys.json":
            shutil.copy(f, dst / f.name)
    tol = meta["fixture_v2"].get("recommended_tolerance", {}).get("atol", 3e-5)
    fmt = meta["checkpoint_format"]
    facts = {"official_name": meta["official_name"], "num_params": meta["num_params"],
             "macs_conv_linear": hook_macs(meta, name), "atol": max(tol, 3e-5) if tol > 3e-5 else tol,
             "sensitivity": meta["fixture_v2"].get("sensitivity", {}),
             "checkpoint_note": fmt.get("saved_by") or fmt.get("save") or fmt.get("load_in_official_code")}
    (dst / "facts.json").write_text(json.dumps(facts, indent=1) + "\n")


def main(ref):
    ref = Path(ref)
    for name in ("dna_a", "dna_b", "dna_c", "dna_d"):
        meta = json.loads((ref / "dna" / name / "meta.json").read_text())
        write_entry(dna_entry(name, meta))
        copy_fixture(ref / "dna" / name, ROOT / "tests/fixtures/dna" / name, meta, name)
    for name in ("cream_14", "cream_43", "cream_114", "cream_287", "cream_481", "cream_604", "cdarts_a", "cdarts_b"):
        meta = json.loads((ref / "cream" / name / "meta.json").read_text())
        write_entry(cream_entry(name, meta))
        copy_fixture(ref / "cream" / name, ROOT / "tests/fixtures/cream" / name, meta, name)


def write_entry(entry):
    path = ROOT / "configs/models" / f"{entry['name']}.yaml"
    path.write_text(yaml.safe_dump(entry, sort_keys=False, default_flow_style=None, width=120))
    print("wrote", path.relative_to(ROOT))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT.parent / "shared" / "reference")
