"""`nas-zoo convert densenas`: a DenseNAS ``net_config`` + ``weights.pt`` -> a zoo entry with converted weights.

DenseNAS-Large and -R1/R2/R3 ship their architecture only beside their weights (a Drive folder holding
``net_config`` and ``weights.pt``). This writes ``DIR/NAME.yaml`` (the entry) and ``DIR/NAME.safetensors`` (the
weights in our key layout); with ``NAS_ZOO_ENTRIES=DIR``, ``timm.create_model(NAME, pretrained=True)`` loads them.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Optional, Tuple

import torch

from ..checkpoint import CheckpointError, check_state_dict, extract_state_dict, read_checkpoint, save_file_atomic
from ..entry import NAME_RE, TAG_RE, ArchEntry, EntryError, load_entry
from ..families import adapt_official_state_dict, get_family
from ..families.densenas import NET_TYPES, NetConfig, NetConfigError, read_net_config

__all__ = ["add_arguments", "run", "main", "convert_densenas"]

DESCRIPTION = ("Turn a DenseNAS net_config (and its weights.pt) into a zoo entry: writes DIR/NAME.yaml and "
               "DIR/NAME.safetensors (weights in our key layout). With NAS_ZOO_ENTRIES=DIR, "
               "timm.create_model(NAME, pretrained=True) loads them. Works for both network types (mbv2, res).")

PAPER = "Densely Connected Search Space for More Flexible Neural Architecture Search"
# DenseNAS eval preprocessing (dataset/imagenet_data.py): Resize(256) bilinear, CenterCrop(224), ImageNet mean/std
EVAL_CFG = dict(input_size=[3, 224, 224], crop_pct=0.875, interpolation="bilinear", mean=[0.485, 0.456, 0.406],
                std=[0.229, 0.224, 0.225])


def add_arguments(parser) -> None:
    parser.add_argument("--net-config", required=True, type=Path, metavar="FILE",
                        help="the official net_config file (items, then a 'net_type: mbv2|res' line)")
    parser.add_argument("--checkpoint", type=Path, metavar="FILE",
                        help="the official weights.pt (a state dict saved from nn.DataParallel); "
                             "without it the entry has the architecture only")
    parser.add_argument("--name", required=True, help="model name for the new entry, e.g. densenas_r1")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR",
                        help="directory for NAME.yaml and NAME.safetensors (created if missing)")
    parser.add_argument("--net-type", choices=NET_TYPES,
                        help="the network type, for a net_config without its 'net_type' line")
    parser.add_argument("--tag", default="in1k", help="pretrained tag of the converted weights (default: in1k)")
    parser.add_argument("--force", action="store_true", help="overwrite NAME.yaml / NAME.safetensors in DIR")


def main(argv=None) -> int:
    """Parse `argv` (what follows ``nas-zoo convert densenas``) and run; for a `convert` command that dispatches
    on its first argument."""
    import argparse
    parser = argparse.ArgumentParser(prog="nas-zoo convert densenas", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args) -> int:
    try:
        yaml_path, weights_path = convert_densenas(args.net_config, args.name, args.out, checkpoint=args.checkpoint,
                                                   net_type=args.net_type, tag=args.tag, force=args.force)
    except (NetConfigError, EntryError, CheckpointError, FileExistsError) as e:
        print(f"nas-zoo convert densenas: error: {e}", file=sys.stderr)
        return 2
    entry = load_entry(yaml_path)
    print(f"wrote {yaml_path}" + (f" and {weights_path}" if weights_path else " (architecture only)"))
    print(f"  {entry.description}")
    directory = yaml_path.parent
    how = f"timm.create_model('{entry.name}'" + (", pretrained=True)" if weights_path else ")")
    print(f"use it: NAS_ZOO_ENTRIES={directory} python -c \"import timm, nas_zoo; m = {how}\"")
    return 0


def convert_densenas(net_config: Path, name: str, out: Path, checkpoint: Optional[Path] = None,
                     net_type: Optional[str] = None, tag: str = "in1k",
                     force: bool = False) -> Tuple[Path, Optional[Path]]:
    """Write ``out/name.yaml`` (and ``out/name.safetensors`` from `checkpoint`); return both paths."""
    cfg = read_net_config(net_config, net_type=net_type)
    out = Path(out)
    yaml_path, weights_path = out / f"{name}.yaml", out / f"{name}.safetensors"
    if not NAME_RE.match(name):
        raise EntryError("--name", "name", f"expected a lowercase identifier (letters, digits, '_'; starting with a "
                                           f"letter), got {name!r}")
    if not TAG_RE.match(tag):
        raise EntryError("--tag", "tag", f"a tag must be a lowercase identifier such as 'in1k', got {tag!r}")
    _check_name_is_free(name, yaml_path)
    if not force:
        for path in (yaml_path, weights_path if checkpoint else None):
            if path is not None and path.exists():
                raise FileExistsError(f"{path} exists; pass --force to overwrite it")

    entry = load_entry(_entry_dict(cfg, name, tag, checkpoint), source=str(yaml_path))
    out.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        entry.save(yaml_path)
        return yaml_path, None

    state_dict, num_classes = _read_weights(entry, checkpoint, tag)
    if num_classes != entry.pretrained[tag]["num_classes"]:
        entry.pretrained[tag]["num_classes"] = num_classes
    save_file_atomic(state_dict, weights_path, metadata={"format": "pt", "nas_zoo_entry": name})
    entry.save(yaml_path)  # after the weights: an entry never points at a file that is not there yet
    return yaml_path, weights_path


def _check_name_is_free(name: str, yaml_path: Path) -> None:
    import timm

    from ..registry import list_entries

    ours = {e.name: e for e in list_entries()}
    if name in ours:
        previous = ours[name].path
        if previous is None or previous != yaml_path.absolute():  # converting again into the same file is fine
            raise EntryError("--name", "name", f"'{name}' is already a registered model (from {ours[name].source}); "
                                               "choose another name")
    elif timm.is_model(name):
        raise EntryError("--name", "name", f"'{name}' clashes with an existing timm model; choose another name")


def _entry_dict(cfg: NetConfig, name: str, tag: str, checkpoint: Optional[Path]) -> dict:
    family, arch = cfg.to_family_arch()
    kind = "MobileNetV2" if cfg.net_type == "mbv2" else "ResNet"
    source = _short(Path(cfg.source))
    provenance = {"method": "densenas", "repo": "https://github.com/JaminFong/DenseNAS", "net_type": cfg.net_type,
                  "net_config": cfg.to_text().split("net_type:")[0], "converted_from": source}
    entry = {"name": name, "family": family,
             "description": f"{name}: DenseNAS {kind}-based network, converted from {source}.",
             "arch": arch, "provenance": provenance}
    if checkpoint is not None:
        pretrained = {"file": f"{name}.safetensors", **EVAL_CFG, "num_classes": 1000, "license": "unknown",
                      "origin_url": "https://github.com/JaminFong/DenseNAS", "paper_name": PAPER,
                      "paper_ids": "arXiv:1906.09607"}
        if cfg.net_type == "mbv2":  # official MBV2_Net keys also load directly (pretrained_cfg_overlay=dict(file=..))
            pretrained["checkpoint_layout"] = "densenas"
        entry["pretrained"] = {tag: pretrained}
        provenance["checkpoint"] = _short(checkpoint)
        provenance["checkpoint_sha256"] = _sha256(checkpoint)
    return entry


def _short(path: Path) -> str:
    """'folder/file': names the source (e.g. 'DenseNAS-R1/net_config') without a local absolute path."""
    return f"{path.absolute().parent.name}/{path.name}"


def _sha256(path: Path) -> str:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _read_weights(entry: ArchEntry, checkpoint: Path, tag: str):
    """The official weights in our layout, checked against the architecture; and their class count."""
    state_dict, _ = extract_state_dict(read_checkpoint(checkpoint), source=str(checkpoint))
    state_dict = adapt_official_state_dict(state_dict, entry, tag)
    family = get_family(entry.family)
    classifier = state_dict.get(family.cfg_defaults["classifier"] + ".weight")
    num_classes = int(classifier.shape[0]) if classifier is not None and classifier.ndim == 2 else 1000
    with torch.device("meta"):
        model = family.build(entry, pretrained=False, num_classes=num_classes,
                             pretrained_cfg=dict(family.cfg_defaults))
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_state_dict(state_dict, expected, entry.name,
                     source=f"{checkpoint} (read with {entry.provenance['converted_from']})")
    return {k: v.contiguous() for k, v in state_dict.items()}, num_classes
