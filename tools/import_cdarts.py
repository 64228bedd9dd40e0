"""Regenerate the `darts_cell` entries (configs/models) and the CDARTS test fixtures (tests/fixtures/cdarts).

    python tools/import_cdarts.py ../shared/reference

Entries: the two released CDARTS cell nets (weights: README Google Drive), the two cells of the first public release
(arXiv v1; architecture only) and the baseline genotypes the CDARTS repo ships (architecture only). Every fixture
folder is copied, including the Feb-2020 cell that gets no entry (its test registers it with
`nas-zoo register-genotype`).
"""
import json
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nas_zoo.families.darts_cell import EVAL_CFGS, LAYOUTS  # noqa: E402
from nas_zoo.genotype import parse_genotype  # noqa: E402

CDARTS = dict(title="Cyclic Differentiable Architecture Search", arxiv="2006.10724", venue="TPAMI 2022",
              origin="https://github.com/microsoft/Cream/tree/main/CDARTS")
DRIVE = "https://drive.google.com/drive/folders/1CkFp24bEDq0wUp504BQ68jn5Vs069qox"
CHECKPOINTS = ("CDARTS retrain.py saves the bare ModelAug state_dict (checkpoint.pth.tar / best.pth.tar, "
               "aux_head.* included) and {'model_main': ...} resume files; both load here (aux_head.* is not "
               "loaded: it only serves training).")


def cfg(layout, num_classes, **extra):
    return {**EVAL_CFGS[layout], "num_classes": num_classes, **extra}


def arch(layout, genotype_text):
    layout = dict(LAYOUTS[layout])
    drop_path_rate = layout.pop("drop_path_rate")
    return {**layout, "genotype": parse_genotype(genotype_text).to_dict(), "drop_path_rate": drop_path_rate}


def cdarts_released(name, meta):
    spec = meta["architecture_spec"]
    layout = spec["model_type"]
    tag = "cifar10" if layout == "cifar" else "in1k"
    pr = meta["paper_reported"]
    if layout == "cifar":
        note = (f"{CHECKPOINTS} test.py evaluates at 32x32 (ToTensor + Normalize). The README lists six CIFAR-10 "
                "cells (Cell-1..6: 97.60 / 97.45 / 97.52 / 97.53 / 97.54 / 97.77), each with its own genotype file; "
                "which of them this genotype (cells/cifar_genotype.json, the paper figure's cell) is, is not "
                "recorded: register the others with `nas-zoo register-genotype`. The Drive links are reported "
                "dead (microsoft/Cream#209).")
        paper = {"top1": 97.52, "params_m": 3.9,
                 "source": "TPAMI table for this cell (demo/cell.png): CIFAR-10 97.52 +- 0.04 over runs, "
                           "3.9 +- 0.08 M params; README Cell-1..6: 97.60/97.45/97.52/97.53/97.54/97.77"}
    else:
        note = (f"{CHECKPOINTS} Eval: Resize 256 (bilinear), CenterCrop 224, ImageNet mean/std. The README lists "
                "five ImageNet cells (Cell-1..5: 75.90 / 75.93 / 76.40 / 76.60 / 76.44) with their own genotype "
                "files; which one this genotype is, is not recorded. The Drive links are reported dead "
                "(microsoft/Cream#209).")
        table = pr["TPAMI_table_demo_cell_imagenet_png"]["CDARTS"]
        counted = meta["flops"]["official_counter"]["Total_FLOPs"] / 1e6
        paper = {"top1": 76.3, "top5": 92.9, "params_m": 6.1, "flops_m": 701.0,
                 "flops_note": "paper 'x+' column (701 +- 32 M over runs); the official counter "
                               "(lib/utils/count_flops.py, torchscope 'Total FLOPs': conv+linear MACs plus BN, ReLU "
                               f"and pool element-ops) gives {counted:.1f} M for this cell",
                 "source": f"TPAMI table for this cell (demo/cell.png): top-1 {table['top1']}, top-5 "
                           f"{table['top5']}, params {table['params_M']} M; README Cell-1..5: "
                           "75.90/75.93/76.40/76.60/76.44"}
    return {
        "name": name, "family": "darts_cell",
        "description": f"CDARTS {'CIFAR-10' if layout == 'cifar' else 'ImageNet'} cell network "
                       f"({'C=36, 20 cells' if layout == 'cifar' else 'C=48, 14 cells'}): the cell of the paper "
                       "figure, shipped as the repo's cells/*.json.",
        "arch": arch(layout, spec["genotype"]),
        "pretrained": {tag: cfg(layout, spec["num_classes"], hf_hub_id=f"nas-zoo/{name}.{tag}", license="mit",
                                origin_url=CDARTS["origin"], paper_name=CDARTS["title"],
                                paper_ids=f"arXiv:{CDARTS['arxiv']}", official_weights="state_dict",
                                official_download=DRIVE, official_note=note)},
        "paper": {"title": CDARTS["title"], "arxiv": CDARTS["arxiv"], "venue": CDARTS["venue"], **paper},
        "provenance": provenance(meta, spec),
    }


def cdarts_v1(name, meta):
    spec = meta["architecture_spec"]
    layout = spec["model_type"]
    tag = "cifar10" if layout == "cifar" else "in1k"
    if layout == "cifar":
        extra = ""
        paper = {"top1": 97.52, "params_m": 3.9,
                 "source": "CVPR-2020/CDARTS README results table (Dec 2019): CIFAR-10 error 2.48 +- 0.04 %, 3.9 M"}
    else:
        extra = (" That release claimed 76.6 % top-1, the value of the README's ImageNet Cell-4: that file may hold "
                 "this cell (unverified).")
        paper = {"top1": 76.6, "top5": 93.2, "params_m": 6.1, "flops_m": 732.0,
                 "flops_note": "the table's 732 M 'x+' equals the official counter on the later cell "
                               "(cdarts_imagenet); on this cell the counter gives 702.7 M and 6.0 M params, so the "
                               "row may describe another cell",
                 "source": "CVPR-2020/CDARTS README results table (Dec 2019): top-1 error 23.4, top-5 error 6.8"}
    note = ("Architecture only: the cell of the first public release (CVPR-2020/CDARTS@032105f cells/*.json, the "
            "arXiv-v1 figure); no weights were released for it separately." + extra)
    return {
        "name": name, "family": "darts_cell",
        "description": f"CDARTS {'CIFAR-10' if layout == 'cifar' else 'ImageNet'} cell of the first public release "
                       "(arXiv v1, Dec 2019); architecture only.",
        "arch": arch(layout, spec["genotype"]),
        "pretrained": {tag: cfg(layout, spec["num_classes"], license="mit",
                                origin_url="https://github.com/CVPR-2020/CDARTS", paper_name=CDARTS["title"],
                                paper_ids=f"arXiv:{CDARTS['arxiv']}v1", official_note=note)},
        "paper": {"title": CDARTS["title"], "arxiv": CDARTS["arxiv"], "venue": "arXiv v1 (2020)", **paper},
        "provenance": provenance(meta, spec),
    }


def provenance(meta, spec):
    return {"repo": meta["source"]["repo"], "commit": meta["source"]["commit"], "file": spec["genotype_file"],
            "network": "CDARTS lib/models/{model_augment,augment_cells,ops,aux_head}.py (ModelAug / ModelTest)",
            "method": "cdarts"}


# The baseline genotypes shipped as CDARTS/CDARTS/cells/*.json (the paper retrains them in its own pipeline,
# the dagger rows of its tables); paper numbers are the original papers'.
BASELINES = [
    ("darts_v1_cifar", "dartsv1_genotype", "cifar", "DARTS (first order)",
     dict(title="DARTS: Differentiable Architecture Search", arxiv="1806.09055", venue="ICLR 2019", top1=97.0,
          source="DARTS Table 1: CIFAR-10 error 3.00 +- 0.14 % (first order + cutout)")),
    ("darts_v2_cifar", "dartsv2_genotype", "cifar", "DARTS (second order)",
     dict(title="DARTS: Differentiable Architecture Search", arxiv="1806.09055", venue="ICLR 2019", top1=97.24,
          params_m=3.3, source="DARTS Table 1: CIFAR-10 error 2.76 +- 0.09 % (second order + cutout), 3.3 M")),
    ("pdarts_cifar", "pdarts_genotype", "cifar", "P-DARTS",
     dict(title="Progressive Differentiable Architecture Search: Bridging the Depth Gap between Search and "
                "Evaluation", arxiv="1904.12760", venue="ICCV 2019", top1=97.5, params_m=3.4,
          source="P-DARTS: CIFAR-10 error 2.50 %, 3.4 M")),
    ("pcdarts_cifar", "pcdarts_cifar_genotype", "cifar", "PC-DARTS (searched on CIFAR-10)",
     dict(title="PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search",
          arxiv="1907.05737", venue="ICLR 2020", top1=97.43, params_m=3.6,
          source="PC-DARTS: CIFAR-10 error 2.57 +- 0.07 %, 3.6 M")),
    ("pcdarts_imagenet", "pcdarts_imagenet_genotype", "imagenet", "PC-DARTS (searched on ImageNet)",
     dict(title="PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search",
          arxiv="1907.05737", venue="ICLR 2020", top1=75.8, params_m=5.3, flops_m=597.0,
          flops_note="paper mult-adds at 224", source="PC-DARTS: ImageNet top-1 error 24.2 %, 5.3 M, 597 M")),
]


def baseline(name, key, layout, what, paper, genotypes):
    tag = "cifar10" if layout == "cifar" else "in1k"
    note = (f"Architecture only: the genotype as CDARTS ships it (cells/{key}.json); train it, or load your "
            "checkpoint with pretrained_cfg_overlay=dict(file=...).")
    return {
        "name": name, "family": "darts_cell",
        "description": f"{what} genotype in the DARTS {'CIFAR' if layout == 'cifar' else 'ImageNet'} network "
                       f"({'C=36, 20 cells' if layout == 'cifar' else 'C=48, 14 cells'}); architecture only.",
        "arch": arch(layout, genotypes[key]),
        "pretrained": {tag: cfg(layout, 10 if layout == "cifar" else 1000, license="mit", origin_url=CDARTS["origin"],
                                paper_name=paper["title"], paper_ids=f"arXiv:{paper['arxiv']}", official_note=note)},
        "paper": paper,
        "provenance": {"repo": "microsoft/Cream", "commit": "4a13c4091e78f9abd2160e7e01c02e48c1cf8fb9",
                       "file": f"CDARTS/CDARTS/cells/{key}.json", "method": what},
    }


FIXTURES = {  # fixture folder -> entry name (None: no entry; its test registers the genotype itself)
    "cdarts_cifar": "cdarts_cifar",
    "cdarts_imagenet": "cdarts_imagenet",
    "cdarts_cifar_arxiv_v1": "cdarts_cifar_arxiv_v1",
    "cdarts_imagenet_arxiv_v1": "cdarts_imagenet_arxiv_v1",
    "cdarts_cifar_feb2020": None,
}


def copy_fixture(src: Path, dst: Path, meta, entry_name):
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.suffix in (".npy", ".npz") or f.name == "state_keys.json":
            shutil.copyfile(f, dst / f.name)
    spec = meta["architecture_spec"]
    res = meta["eval_preprocess"]["resolution"]
    v2 = meta["fixture_v2"]
    facts = {
        "official_name": meta["official_name"], "entry": entry_name, "layout": spec["model_type"],
        "num_classes": spec["num_classes"], "genotype": spec["genotype"],
        "num_params": meta["num_params"],
        "num_params_with_aux": meta["num_params_note"]["including_aux_head_(full_checkpoint_model_ModelAug)"],
        "macs_conv_linear": {str(res): meta["flops"]["own_hook_counter_macs"]["at_native_resolution"]},
        "atol": v2["recommended_tolerance"]["float32_cpu_max_abs_diff"], "atol_f64": 1e-8,
        "sensitivity": v2["sensitivity"], "checkpoint_note": meta["checkpoint_format"]["saved_by"],
    }
    (dst / "facts.json").write_text(json.dumps(facts, indent=1) + "\n")
    # the genotype as the official cells/*.json holds it: one entry per stage, all three the same
    cells = {str(i): spec["genotype"] for i in range(3)}
    (dst / f"{spec['model_type']}_genotype.json").write_text(json.dumps(cells, indent=1) + "\n")


def write_entry(entry):
    path = ROOT / "configs/models" / f"{entry['name']}.yaml"
    path.write_text(yaml.safe_dump(entry, sort_keys=False, default_flow_style=None, width=120))
    print("wrote", path.relative_to(ROOT))


def main(ref):
    ref = Path(ref) / "cdarts"
    for folder, name in FIXTURES.items():
        meta = json.loads((ref / folder / "meta.json").read_text())
        if name in ("cdarts_cifar", "cdarts_imagenet"):
            write_entry(cdarts_released(name, meta))
        elif name is not None:
            write_entry(cdarts_v1(name, meta))
        copy_fixture(ref / folder, ROOT / "tests/fixtures/cdarts" / folder, meta, name)
    genotypes = json.loads((ref / "genotypes_official.json").read_text())
    for name, key, layout, what, paper in BASELINES:
        write_entry(baseline(name, key, layout, what, paper, genotypes))
    shutil.copyfile(ref / "genotypes_official.json", ROOT / "tests/fixtures/cdarts/genotypes_official.json")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ROOT.parent / "shared" / "reference")
