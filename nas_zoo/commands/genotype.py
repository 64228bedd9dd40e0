"""`nas-zoo register-genotype FILE --name NAME --dataset {cifar10,cifar100,imagenet}`: a DARTS genotype file
(the official cells/*.json, ``Genotype(...)`` text, or our YAML) -> a `darts_cell` entry in a user entry directory.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..entry import EntryError, load_entry
from ..families.darts_cell import DATASETS, EVAL_CFGS, LAYOUTS
from ..genotype import GenotypeError, read_genotype_file, same_genotype
from ..registry import ENTRIES_ENV

COMMAND = "register-genotype"


def add_parser(sub) -> None:
    p = sub.add_parser(
        COMMAND, help="turn a DARTS genotype file into a darts_cell entry (a new timm model)",
        description="Write a darts_cell entry for a genotype file: the official CDARTS cells/*.json "
                    "({\"0\": \"Genotype(...)\", ...}), a file holding Genotype(...) text, or our YAML "
                    "(a genotype mapping). The network is the dataset's DARTS layout (CIFAR: C=36, 20 cells; "
                    "ImageNet: C=48, 14 cells) unless overridden.")
    p.add_argument("file", help="the genotype file")
    p.add_argument("--name", required=True, help="the new model name (lowercase identifier)")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS),
                   help="layout, classes and eval preprocessing of the network")
    p.add_argument("--out", help=f"entry directory (default: the first directory of {ENTRIES_ENV})")
    p.add_argument("--init-channels", type=int, help="override C, the first-stage node width")
    p.add_argument("--cells-per-stage", type=int, nargs="+", metavar="N", help="override the cells per stage")
    p.add_argument("--force", action="store_true", help="overwrite an existing entry file")
    p.set_defaults(func=run)


def entry_directory(out) -> Path:
    if out:
        return Path(out)
    first = next((part.strip() for part in os.environ.get(ENTRIES_ENV, "").split(os.pathsep) if part.strip()), None)
    if first is None:
        raise EntryError("<command line>", "--out", f"no entry directory: pass --out DIR or set {ENTRIES_ENV}")
    return Path(first)


def make_entry(genotype_file, name: str, dataset: str, init_channels=None, cells_per_stage=None) -> dict:
    """The entry mapping for a genotype file (validated by the caller through `load_entry`)."""
    genotypes = read_genotype_file(genotype_file)
    layout_name, tag, num_classes = DATASETS[dataset]
    layout = dict(LAYOUTS[layout_name])
    drop_path_rate = layout.pop("drop_path_rate")
    if init_channels is not None:
        layout["init_channels"] = init_channels
    if cells_per_stage is not None:
        layout["cells_per_stage"] = list(cells_per_stage)
    shared = same_genotype(genotypes)
    if shared is not None:
        layout["genotype"] = shared.to_dict()
    else:
        layout["stage_genotypes"] = [g.to_dict() for g in genotypes]
    source = Path(genotype_file).name
    return {
        "name": name, "family": "darts_cell",
        "description": f"DARTS-space genotype from {source}, {dataset} layout.",
        "arch": {**layout, "drop_path_rate": drop_path_rate},
        "pretrained": {tag: {**EVAL_CFGS[layout_name], "num_classes": num_classes,
                             "official_note": f"registered from {source} with `nas-zoo {COMMAND}`; no hub weights: "
                                              "load a checkpoint with pretrained_cfg_overlay=dict(file=PATH)"}},
        "provenance": {"method": COMMAND, "file": str(Path(genotype_file).resolve()),
                       "genotype_text": [g.to_str() for g in genotypes] if shared is None else shared.to_str()},
    }


def run(args) -> int:
    import timm
    import torch

    from .. import registry
    from ..families.darts_cell import DartsCellNet, model_kwargs

    try:
        if not Path(args.file).is_file():
            raise GenotypeError(args.file, "", "no such genotype file")
        directory = entry_directory(args.out)
        path = directory / f"{args.name}.yaml"
        if path.exists() and not args.force:
            raise EntryError(str(path), "name", "an entry file with this name exists; pass --force to replace it")
        entry = load_entry(make_entry(args.file, args.name, args.dataset, args.init_channels,
                                      args.cells_per_stage), source=str(path))
        try:
            known = registry.get_entry(entry.name)
        except KeyError:
            known = None
        if known is not None and Path(known.source).resolve() != path.resolve():
            raise EntryError(str(path), "name", f"'{entry.name}' is already an entry ({known.source}); "
                                                "choose another name")
        if known is None and timm.is_model(entry.name):
            raise EntryError(str(path), "name", f"'{entry.name}' clashes with an existing timm model")
        with torch.device("meta"):  # the architecture must build (channel counts, strides)
            DartsCellNet(**model_kwargs(entry.arch))
        directory.mkdir(parents=True, exist_ok=True)
        entry.save(path)
    except (GenotypeError, EntryError, ValueError) as e:
        print(f"nas-zoo {COMMAND}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    env_dirs = [p for p in os.environ.get(ENTRIES_ENV, "").split(os.pathsep) if p.strip()]
    if not any(Path(p).resolve() == directory.resolve() for p in env_dirs):
        print(f"register it with: export {ENTRIES_ENV}={directory}  (or nas_zoo.register_directory('{directory}'))")
    print(f"use it: timm.create_model('{entry.name}')  or, with a checkpoint, timm.create_model('{entry.name}', "
          "pretrained=True, pretrained_cfg_overlay=dict(file='PATH'))")
    return 0
