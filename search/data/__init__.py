"""Data for search and training: ImageFolder (ImageNet layout), CIFAR-10/100 from local files, class subsets, and
an embedded dataset that needs no download.

    cfg = DataConfig.from_dict(yaml.safe_load(text)["data"])
    train_set = build_dataset(cfg, "train")                  # samples are (PIL image, class index)
    loader = create_loader(train_set, cfg, batch_size=64, train=True, workers=2, seed=0)
    for epoch in range(start_epoch, epochs):
        loader.sampler.set_epoch(epoch, start_batch=k if epoch == start_epoch else 0)
        for images, targets in loader: ...

Reproducibility: the order of a training epoch depends only on (seed, epoch) and each sample's augmentation only on
(seed, epoch, index), never on the worker count or on what ran before, so a run restarted at (epoch, batch k) sees
exactly the batches the uninterrupted run saw from batch k on. See docs/data.md.

The package, by concern: config (DataConfig), classes (class lists and subsets), embedded (the generated
dataset), datasets (build_dataset), transforms, loader (resumable sampler, create_loader).
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .classes import make_class_subset, read_class_list, write_class_list
from .config import DataConfig, DataError
from .datasets import build_dataset, num_classes_of
from .embedded import EMBEDDED_CLASSES, EmbeddedShapes, generate_shapes
from .loader import ResumableSampler, create_loader
from .transforms import TransformedDataset, build_transform

__all__ = [
    "DataConfig", "DataError", "EmbeddedShapes", "ResumableSampler", "TransformedDataset", "build_dataset",
    "build_transform", "create_loader", "make_class_subset", "read_class_list", "write_class_list",
    "num_classes_of", "EMBEDDED_CLASSES", "generate_shapes", "main",
]



def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nas_zoo.search.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("subset", help="write a deterministic class subset (e.g. an ImageNet-100 split) to a file")
    p.add_argument("--root", required=True, help="ImageFolder root (its train/ folder is listed) or a class folder")
    p.add_argument("--num-classes", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="class-list file to write (one class per line)")
    args = parser.parse_args(argv)
    try:
        names = make_class_subset(args.root, args.num_classes, args.seed, args.out)
    except DataError as e:
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(names)} classes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
