"""`nas-zoo validate NAME --data DIR`: top-1/top-5 on an ImageFolder validation set, beside the paper's numbers.

The preprocessing is the model's own (timm's `resolve_data_config` + `create_transform` read its
pretrained cfg: input size, interpolation, crop_pct, mean/std), as timm's validate.py does it.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import nullcontext
from typing import Optional

import torch

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def add_parser(sub) -> None:
    p = sub.add_parser("validate", help="top-1/top-5 of a model on an ImageFolder validation set",
                       description="Evaluate a model on an ImageFolder validation set (ImageNet layout: one folder "
                                   "per class, classes in sorted order = label index) with the model's own "
                                   "preprocessing, and print our numbers beside the paper's.")
    p.add_argument("name", help="a zoo model (name or name.tag), an entry YAML, hf-hub:ORG/NAME or local-dir:DIR")
    p.add_argument("--data", required=True, help="validation folder (or a folder with a val/ or validation/ "
                                                 "sub-folder)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="evaluate these weights (official checkpoint, state dict, "
                                              "safetensors or a model folder)")
    weights.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True,
                         help="resolve pretrained weights as timm.create_model(NAME, pretrained=True) does "
                              "(default); --no-pretrained evaluates random weights")
    p.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None,
                   help="with --checkpoint: take the EMA copy or not (default: what the official eval used)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=4, help="data loading processes")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--amp", action="store_true", help="mixed precision (autocast)")
    p.add_argument("--amp-dtype", choices=sorted(AMP_DTYPES), default="bfloat16")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--num-classes", type=int, default=None, help="classifier size, when not the pretrained one")
    p.add_argument("--class-map", default="", help="file mapping folder names to class indices (timm format)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--model-card", help="write the numbers into this model card (README.md of a model folder)")
    p.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def create_eval_model(name: str, checkpoint: Optional[str] = None, pretrained: bool = True,
                      use_ema: Optional[bool] = None, num_classes: Optional[int] = None):
    import timm

    from ..hub import resolve_entry
    from ..registry import adopt_entry, create_from_entry

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if checkpoint:
        kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint)))
        if use_ema is not None:
            kwargs["use_ema"] = use_ema
    else:
        kwargs["pretrained"] = pretrained
    if name.endswith((".yaml", ".yml")):
        return create_from_entry(adopt_entry(resolve_entry(name)), **kwargs)
    return timm.create_model(name, **kwargs)


def entry_of(model):
    from ..registry import get_entry
    try:
        return get_entry(str(model.pretrained_cfg.get("architecture") or ""))
    except KeyError:
        return None


def evaluate(model, data_dir: str, batch_size: int = 64, workers: int = 4, device="cpu",
             amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False, class_map: str = "",
             limit: Optional[int] = None, progress: bool = True) -> dict:
    """Top-1/top-5 (%) of `model` on an ImageFolder, with the model's own eval preprocessing."""
    from timm.data import create_dataset, create_transform, resolve_data_config
    from timm.utils import accuracy
    from tqdm import tqdm

    device = torch.device(device)
    data_config = resolve_data_config(model=model)
    transform = create_transform(**data_config, is_training=False)
    dataset = create_dataset("", root=data_dir, split="validation", class_map=class_map, transform=transform)
    if len(dataset) == 0:
        raise FileNotFoundError(f"{data_dir}: no images found (expected one sub-folder of images per class)")
    if limit:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=device.type == "cuda")
    model = model.to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    autocast = (torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None
                else nullcontext())
    correct1 = correct5 = seen = 0.0
    bar = tqdm(loader, total=len(loader), desc="validate", unit="batch", disable=not progress, leave=False)
    with torch.no_grad():
        for images, target in bar:
            images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast:
                output = model(images)
            top1, top5 = accuracy(output.float(), target, topk=(1, 5))
            n = target.size(0)
            correct1 += top1.item() * n / 100
            correct5 += top5.item() * n / 100
            seen += n
            bar.set_postfix(top1=f"{100 * correct1 / seen:.2f}", top5=f"{100 * correct5 / seen:.2f}")
    return {"top1": 100 * correct1 / seen, "top5": 100 * correct5 / seen, "images": int(seen),
            "input_size": list(data_config["input_size"]), "interpolation": data_config["interpolation"],
            "crop_pct": data_config["crop_pct"]}


def run(args) -> int:
    from ..hub import FolderError, measured_today, update_model_card

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = create_eval_model(args.name, checkpoint=args.checkpoint, pretrained=args.pretrained,
                              use_ema=args.ema, num_classes=args.num_classes)
    result = evaluate(model, args.data, batch_size=args.batch_size, workers=args.workers, device=device,
                      amp_dtype=AMP_DTYPES[args.amp_dtype] if args.amp else None,
                      channels_last=args.channels_last, class_map=args.class_map, limit=args.limit,
                      progress=not args.no_progress)
    entry = entry_of(model)
    paper = entry.paper if entry else {}
    size = result["input_size"]
    print(f"{args.name} on {args.data}: {result['images']} images at {size[1]}x{size[2]} "
          f"({result['interpolation']}, crop_pct {result['crop_pct']})")
    print(f"{'':<8}{'top-1':>8}{'top-5':>8}")
    print(f"{'ours':<8}{result['top1']:>8.2f}{result['top5']:>8.2f}")
    print(f"{'paper':<8}{_fmt(paper.get('top1')):>8}{_fmt(paper.get('top5')):>8}")
    if args.json:
        print(json.dumps({"model": args.name, **result, "paper_top1": paper.get("top1"),
                          "paper_top5": paper.get("top5")}))
    if args.model_card:
        if entry is None:
            print(f"nas-zoo validate: error: '{args.name}' is not a zoo model; cannot fill a model card",
                  file=sys.stderr)
            return 2
        try:
            update_model_card(args.model_card, entry,
                              measured_today(result["top1"], result["top5"], result["images"], size))
        except FolderError as e:
            print(f"nas-zoo validate: error: {e}", file=sys.stderr)
            return 2
        print(f"wrote the numbers into {args.model_card}")
    return 0


def _fmt(v) -> str:
    return "-" if v is None else f"{float(v):.2f}"
