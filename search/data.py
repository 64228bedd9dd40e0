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
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import math
import os
import pickle
import random
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from ..errors import NasZooError
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder, VisionDataset
from torchvision.datasets.utils import check_integrity

__all__ = [
    "DataConfig", "DataError", "EmbeddedShapes", "ResumableSampler", "TransformedDataset", "build_dataset",
    "build_transform", "create_loader", "make_class_subset", "read_class_list", "write_class_list",
]

KINDS = ("embedded", "imagefolder", "cifar10", "cifar100")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "random")
TRAIN_CROPS = ("rrc", "pad")
RE_MODES = ("const", "rand", "pixel")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class DataError(NasZooError):
    """A data config, class list or dataset directory that cannot be used; the message names the key or path."""


# ----------------------------------------------------------------------------------------------------------- config

_SMALL_DEFAULTS = dict(image_size=32, interpolation="bilinear", crop_pct=1.0, train_crop="pad", scale=(0.08, 1.0),
                       ratio=(3 / 4, 4 / 3), hflip=0.5, color_jitter=0.0)
_KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "embedded": dict(_SMALL_DEFAULTS, num_train=5000, num_val=1000, mean=(0.5, 0.5, 0.5), std=(0.29, 0.29, 0.29)),
    "cifar10": dict(_SMALL_DEFAULTS, mean=CIFAR10_MEAN, std=CIFAR10_STD),
    "cifar100": dict(_SMALL_DEFAULTS, mean=CIFAR100_MEAN, std=CIFAR100_STD),
    "imagefolder": dict(image_size=224, interpolation="bilinear", crop_pct=0.875, train_crop="rrc", scale=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3), hflip=0.5, color_jitter=0.4, mean=IMAGENET_MEAN, std=IMAGENET_STD),
}


@dataclass
class DataConfig:
    """The `data:` section of a search/train config. Unset (None) fields take the defaults of `kind` on creation.

    kind: 'embedded' | 'imagefolder' | 'cifar10' | 'cifar100'
    root: dataset directory (imagefolder: holds train/ and val/; cifar: holds cifar-10-batches-py/ or
        cifar-100-python/); not used by 'embedded'
    classes: a class-list file (one name per line) or a number of classes picked by `seed` (make_class_subset)
    num_train, num_val: sizes of the embedded dataset; caps (a seeded random subset) for real data
    val_fraction: hold out this fraction of every class of the train split as the val split (the train split
        keeps the rest; val_split is not used), e.g. 0.2 for the 80/20 search split of DenseNAS
    verify: check the CIFAR files against torchvision's md5 sums (off for re-packed or synthetic files)
    the rest are timm.data.create_transform arguments; train_crop 'pad' is the CIFAR-style
        RandomCrop(image_size, padding=crop_padding) instead of timm's random-resized crop
    """

    kind: str = "embedded"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    classes: str | int | None = None
    image_size: int | None = None
    num_train: int | None = None
    num_val: int | None = None
    val_fraction: float | None = None
    seed: int = 0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    train_crop: str | None = None
    crop_padding: int | None = None
    scale: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    hflip: float | None = None
    vflip: float = 0.0
    color_jitter: float | None = None
    auto_augment: str | None = None
    re_prob: float = 0.0
    re_mode: str = "pixel"
    re_count: int = 1
    augment: bool = True
    verify: bool = True

    def __post_init__(self) -> None:
        for key, value in _resolve({f.name: getattr(self, f.name) for f in fields(self)}, "data").items():
            setattr(self, key, value)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, where: str = "data") -> "DataConfig":
        """Strict parse: an unknown key or a value of the wrong type raises DataError naming `where.key`."""
        if d is None:
            d = {}
        if not isinstance(d, Mapping):
            raise DataError(f"{where}: expected a mapping of data settings, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise DataError(f"{where}.{key}: unknown key; expected one of {', '.join(sorted(known))}")
        return cls(**_resolve(dict(d), where))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


_INT, _FLOAT, _STR, _BOOL = "an integer", "a number", "a string", "true or false"


def _type_error(where: str, key: str, expected: str, value: Any) -> DataError:
    return DataError(f"{where}.{key}: expected {expected}, got {value!r} ({type(value).__name__})")


def _check_int(where, key, value, minimum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(where, key, _INT, value)
    if minimum is not None and value < minimum:
        raise DataError(f"{where}.{key}: expected an integer >= {minimum}, got {value}")
    return value


def _check_float(where, key, value, lo=None, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _type_error(where, key, _FLOAT, value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise DataError(f"{where}.{key}: expected a number in [{lo}, {hi}], got {value}")
    return float(value)


def _check_str(where, key, value, choices=None):
    if not isinstance(value, str):
        raise _type_error(where, key, _STR, value)
    if choices is not None and value not in choices:
        raise DataError(f"{where}.{key}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _check_floats(where, key, value, length=None):
    ok = isinstance(value, (list, tuple)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok or (length is not None and len(value) != length) or len(value) == 0:
        n = f"{length} numbers" if length else "a list of numbers"
        raise _type_error(where, key, n, value)
    return tuple(float(v) for v in value)


def _resolve(d: dict[str, Any], where: str) -> dict[str, Any]:
    """Type- and range-check every set field, then fill the unset ones from the defaults of `kind`."""
    out = dict(d)
    kind = out["kind"] = _check_str(where, "kind", d.get("kind", "embedded"), KINDS)
    for key in ("root", "auto_augment"):
        if d.get(key) is not None:
            out[key] = _check_str(where, key, d[key])
            if key == "root":
                out[key] = os.path.expanduser(out[key])
    for key in ("train_split", "val_split"):
        if key in d:
            if not _check_str(where, key, d[key]):
                raise DataError(f"{where}.{key}: expected a split name, got an empty string")
    classes = d.get("classes")
    if classes is not None:
        if isinstance(classes, bool) or not isinstance(classes, (int, str)):
            raise _type_error(where, "classes", "a class-list file or a number of classes", classes)
        if isinstance(classes, int):
            _check_int(where, "classes", classes, 1)
        elif not classes:
            raise DataError(f"{where}.classes: expected a class-list file or a number of classes, got ''")
    for key, minimum in (("image_size", 1), ("num_train", 1), ("num_val", 1), ("crop_padding", 0), ("re_count", 1)):
        if d.get(key) is not None:
            _check_int(where, key, d[key], minimum)
    if "seed" in d:
        _check_int(where, "seed", d["seed"], 0)
    for key in ("mean", "std"):
        if d.get(key) is not None:
            out[key] = _check_floats(where, key, d[key])
            if len(out[key]) not in (1, 3):
                raise DataError(f"{where}.{key}: expected 3 numbers (one per RGB channel), got {list(out[key])}")
            if key == "std" and min(out[key]) <= 0:
                raise DataError(f"{where}.std: expected positive numbers, got {list(out[key])}")
    for key in ("scale", "ratio"):
        if d.get(key) is not None:
            out[key] = _check_floats(where, key, d[key], 2)
            lo, hi = out[key]
            if not 0 < lo <= hi:
                raise DataError(f"{where}.{key}: expected 0 < min <= max, got {list(out[key])}")
    if d.get("interpolation") is not None:
        _check_str(where, "interpolation", d["interpolation"], INTERPOLATIONS)
    if d.get("train_crop") is not None:
        _check_str(where, "train_crop", d["train_crop"], TRAIN_CROPS)
    if "re_mode" in d:
        _check_str(where, "re_mode", d["re_mode"], RE_MODES)
    if d.get("val_fraction") is not None:
        out["val_fraction"] = _check_float(where, "val_fraction", d["val_fraction"], 0.0, 1.0)
        if not 0.0 < out["val_fraction"] < 1.0:
            raise DataError(f"{where}.val_fraction: expected a fraction between 0 and 1, got {d['val_fraction']}")
    if d.get("crop_pct") is not None:
        out["crop_pct"] = _check_float(where, "crop_pct", d["crop_pct"], 0.05, 1.0)
    for key in ("hflip", "vflip", "re_prob"):
        if d.get(key) is not None:
            out[key] = _check_float(where, key, d[key], 0.0, 1.0)
    if d.get("color_jitter") is not None:
        out["color_jitter"] = _check_float(where, "color_jitter", d["color_jitter"], 0.0, None)
    for key in ("augment", "verify"):
        if key in d and not isinstance(d[key], bool):
            raise _type_error(where, key, _BOOL, d[key])

    for key, value in _KIND_DEFAULTS[kind].items():
        if out.get(key) is None:
            out[key] = value
    if out.get("crop_padding") is None:
        out["crop_padding"] = max(1, out["image_size"] // 8) if out["train_crop"] == "pad" else 0
    if kind != "embedded" and out.get("root") is None:
        raise DataError(f"{where}.root: the dataset directory is required for kind {kind!r}")
    return out


# ----------------------------------------------------------------------------------------------------- class lists

def read_class_list(path: str | Path, known: Sequence[str] | None = None) -> list[str]:
    """One class name per line ('#' comments and blank lines ignored); unknown or repeated names raise DataError."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"class list {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"class list {path}: cannot read it ({e})") from None
    known_set = set(known) if known is not None else None
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if name in seen:
            raise DataError(f"class list {path}:{number}: {name!r} repeats line {seen[name]}")
        if known_set is not None and name not in known_set:
            hint = ", ".join(sorted(known_set)[:5]) + (", ..." if len(known_set) > 5 else "")
            raise DataError(f"class list {path}:{number}: {name!r} is not a class of the dataset (classes: {hint})")
        seen[name] = number
        names.append(name)
    if not names:
        raise DataError(f"class list {path}: no class names in it")
    return names


def write_class_list(names: Sequence[str], out: str | Path) -> None:
    """Atomic write, one name per line."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(f"{n}\n" for n in names))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a class list is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _class_dirs(path: Path) -> list[str]:
    if not path.is_dir():
        raise DataError(f"{path}: dataset directory not found")
    names = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DataError(f"{path}: no class folders in it")
    return names


def make_class_subset(root_or_classes: str | Path | Sequence[str], num_classes: int, seed: int,
                      out: str | Path | None = None) -> list[str]:
    """A deterministic subset of `num_classes` class names (sorted), written to `out` as a class-list file.

    `root_or_classes` is a list of names, an ImageFolder root (its train/ folder is listed) or a folder of class
    folders. A class is ranked by sha256("<seed>:<name>"), so the subset depends only on (names, seed) -- not on
    library versions or listing order -- and a smaller subset is contained in a larger one with the same seed.
    """
    if isinstance(root_or_classes, (str, Path)):
        root = Path(root_or_classes)
        names = _class_dirs(root / "train" if (root / "train").is_dir() else root)
    else:
        names = list(root_or_classes)
        if len(set(names)) != len(names):
            raise DataError("make_class_subset: the class names repeat")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 1 <= num_classes <= len(names):
        raise DataError(f"classes: expected a number of classes in [1, {len(names)}], got {num_classes!r}")
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).digest())
    subset = sorted(ranked[:num_classes])
    if out is not None:
        write_class_list(subset, out)
    return subset


def _select_classes(cfg: DataConfig, all_names: Sequence[str]) -> list[str] | None:
    """The configured class subset in label order, or None for all classes."""
    if cfg.classes is None:
        return None
    if isinstance(cfg.classes, int):
        if cfg.classes > len(all_names):
            raise DataError(f"data.classes: expected a number of classes in [1, {len(all_names)}], got {cfg.classes}")
        return make_class_subset(list(all_names), cfg.classes, cfg.seed)
    return read_class_list(cfg.classes, known=all_names)


# ------------------------------------------------------------------------------------------------ embedded dataset

SHAPES = ("circle", "square", "triangle", "cross", "ring")
FILLS = ("solid", "striped")
EMBEDDED_CLASSES = tuple(f"{shape}_{fill}" for shape in SHAPES for fill in FILLS)
_F32 = np.float32
_TRIANGLE_NORMALS = [(math.cos(a), math.sin(a)) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
_RENDER_CHUNK = 32  # images rendered together: small buffers stay in cache and off mmap; part of the noise seeding


def _signed_distance(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Distance to the outline (negative inside) in units of the shape's radius; close enough for anti-aliasing."""
    if shape == 0:  # circle
        return np.sqrt(u * u + v * v) - 0.9
    au, av = np.abs(u), np.abs(v)
    if shape == 1:  # square
        return np.maximum(au, av) - 0.72
    if shape == 2:  # equilateral triangle
        (a0, b0), (a1, b1), (a2, b2) = _TRIANGLE_NORMALS
        return np.maximum(np.maximum(a0 * u + b0 * v, a1 * u + b1 * v), a2 * u + b2 * v) - 0.5
    if shape == 3:  # cross
        return np.minimum(np.maximum(au - 1.0, av - 0.3), np.maximum(au - 0.3, av - 1.0))
    return np.abs(np.sqrt(u * u + v * v) - 0.68) - 0.3  # ring


def _coverage(size: int, p: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Anti-aliased coverage (n, H, W) of each image's shape and the shape-local pixel coordinates u, v."""
    grid = np.arange(size, dtype=_F32) + 0.5
    x = grid[None, None, :] - p["cx"][:, None, None]
    y = grid[None, :, None] - p["cy"][:, None, None]
    c, s = np.cos(p["theta"])[:, None, None], np.sin(p["theta"])[:, None, None]
    r = p["radius"][:, None, None]
    u, v = (x * c + y * s) / r, (y * c - x * s) / r
    d = np.empty_like(u)
    for k in range(len(SHAPES)):
        sel = p["shape"] == k
        if sel.any():
            d[sel] = _signed_distance(k, u[sel], v[sel])
    return np.clip(0.5 - d * r, 0.0, 1.0), u, v


def _paint(img: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    img += alpha[:, None] * (colour - img)


def _draw_scenes(rng: np.random.Generator, labels: np.ndarray, size: int, num_clutter: int):
    """Every random choice of every image, drawn up front in a fixed order (rendering draws nothing but noise)."""
    n = len(labels)

    def uniform(lo, hi, shape=None):
        return rng.uniform(lo, hi, n if shape is None else (n, *shape)).astype(_F32)

    def placed_shape(r_lo, r_hi, shape):
        return dict(shape=shape, radius=uniform(r_lo, r_hi) * size, theta=uniform(0, 2 * math.pi))

    scene = dict(bg=uniform(0, 1, (3,)), ramp_dir=uniform(0, 2 * math.pi), ramp_amp=uniform(0, 0.35, (3,)))
    clutter = []
    for _ in range(num_clutter):
        c = placed_shape(0.06, 0.16, rng.integers(0, len(SHAPES), n))
        c.update(cx=uniform(0, size), cy=uniform(0, size), colour=uniform(0, 1, (3,)),
                 present=(rng.uniform(size=n) < 0.6).astype(_F32))
        clutter.append(c)
    obj = placed_shape(0.2, 0.38, labels // len(FILLS))
    margin = obj["radius"] * 0.7
    obj["cx"] = rng.uniform(margin, size - margin).astype(_F32)
    obj["cy"] = rng.uniform(margin, size - margin).astype(_F32)
    colour = uniform(0, 1, (3,))
    # the object's colour is random, but kept at least 0.25 away from the background's brightness
    gap = colour.mean(1) - scene["bg"].mean(1)
    push = np.where(np.abs(gap) < 0.25, np.where(gap >= 0, 0.25, -0.25) - gap, 0.0).astype(_F32)
    obj["colour"] = np.clip(colour + push[:, None], 0, 1)
    obj["colour2"] = np.clip(obj["colour"] * 0.35 + uniform(0, 0.3, (3,)), 0, 1)
    obj["striped"] = (labels % len(FILLS) == 1).astype(_F32)
    obj.update(period=uniform(0.28, 0.45), stripe_dir=uniform(0, 2 * math.pi), phase=uniform(0, 2 * math.pi))
    scene["noise"] = uniform(0.02, 0.08)
    noise_seeds = rng.integers(0, 2**63, (n + _RENDER_CHUNK - 1) // _RENDER_CHUNK)
    return scene, clutter, obj, noise_seeds


def _render(size: int, scene, clutter, obj, noise_seed: int) -> np.ndarray:
    """Background ramp, half the clutter, the (maybe striped) object, the other half on top, pixel noise."""
    col = lambda a: a[:, :, None, None]  # noqa: E731  (n, 3) -> (n, 3, 1, 1)
    grid = (np.arange(size, dtype=_F32) + 0.5) / size - 0.5
    ramp = (grid[None, None, :] * np.cos(scene["ramp_dir"])[:, None, None]
            + grid[None, :, None] * np.sin(scene["ramp_dir"])[:, None, None])
    img = col(scene["bg"]) + ramp[:, None] * col(scene["ramp_amp"])
    half = len(clutter) // 2
    for c in clutter[:half]:
        _paint(img, _coverage(size, c)[0] * c["present"][:, None, None], col(c["colour"]))
    alpha, u, v = _coverage(size, obj)
    w = (u * np.cos(obj["stripe_dir"])[:, None, None] + v * np.sin(obj["stripe_dir"])[:, None, None])
    stripes = np.clip(0.5 + 1.5 * np.sin(2 * math.pi * w / obj["period"][:, None, None]
                                         + obj["phase"][:, None, None]), 0, 1) * obj["striped"][:, None, None]
    _paint(img, alpha, col(obj["colour"]) + stripes[:, None] * col(obj["colour2"] - obj["colour"]))
    for c in clutter[half:]:
        _paint(img, _coverage(size, c)[0] * c["present"][:, None, None], col(c["colour"]))
    # uniform noise with the drawn standard deviation: several times cheaper to draw than normal noise
    noise = np.random.default_rng(int(noise_seed)).random(img.shape, dtype=_F32) - 0.5
    img += noise * (math.sqrt(12) * scene["noise"][:, None, None, None])
    np.clip(img, 0, 1, out=img)
    return (img * 255 + 0.5).astype(np.uint8)


@functools.lru_cache(maxsize=4)  # a search and the training after it in one process build the same data
def generate_shapes(num: int, size: int, seed: int, num_clutter: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """`num` images (uint8, N x 3 x size x size) of one of 10 classes (shape x solid/striped), balanced.

    Position, size, rotation, colours, background ramp, stripe direction, clutter (small shapes behind and in
    front) and pixel noise are random. Same arguments -> the same bits. The result is cached: do not modify it.
    """
    rng = np.random.default_rng([seed, num, size])
    labels = rng.permutation(np.arange(num) % len(EMBEDDED_CLASSES))
    scene, clutter, obj, noise_seeds = _draw_scenes(rng, labels, size, num_clutter)
    images = np.empty((num, 3, size, size), np.uint8)
    for chunk, start in enumerate(range(0, num, _RENDER_CHUNK)):
        part = slice(start, start + _RENDER_CHUNK)
        take = lambda p: {k: v[part] for k, v in p.items()}  # noqa: E731
        images[part] = _render(size, take(scene), [take(c) for c in clutter], take(obj), noise_seeds[chunk])
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


class EmbeddedShapes(Dataset):
    """The embedded dataset: generated in memory from (seed, split), no files. Samples are (PIL image, label)."""

    _SPLIT_SEED = {"train": 0, "val": 1}

    def __init__(self, split: str, num: int, size: int = 32, seed: int = 0, classes: Sequence[str] | None = None):
        if split not in self._SPLIT_SEED:
            raise DataError(f"embedded data: unknown split {split!r}; expected train or val")
        self.split = split
        # train and val come from disjoint seed streams: a val image is never a train image
        images, targets = generate_shapes(num, size, seed * 2 + self._SPLIT_SEED[split])
        self.classes = list(classes) if classes is not None else list(EMBEDDED_CLASSES)
        if classes is not None:
            remap = torch.full((len(EMBEDDED_CLASSES),), -1, dtype=torch.long)
            remap[[EMBEDDED_CLASSES.index(c) for c in self.classes]] = torch.arange(len(self.classes))
            keep = remap[targets] >= 0
            images, targets = images[keep], remap[targets[keep]]
        self.images = images            # uint8, N x 3 x H x W
        self.targets = targets.tolist()
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return Image.fromarray(self.images[index].permute(1, 2, 0).numpy()), self.targets[index]


# --------------------------------------------------------------------------------------------------- real datasets

class _Subset(Dataset):
    """Some samples of a dataset, with its `.classes` and the matching `.targets`."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)
        self.classes, self.class_to_idx = dataset.classes, dataset.class_to_idx
        self.targets = [dataset.targets[i] for i in self.indices]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


def _capped(dataset, cap: int | None, seed: int):
    """A seeded random subset of at most `cap` samples, in the original order (quick runs on real data)."""
    if cap is None or cap >= len(dataset):
        return dataset
    g = torch.Generator().manual_seed(seed)
    return _Subset(dataset, torch.randperm(len(dataset), generator=g)[:cap].sort().values.tolist())


def _holdout(dataset, fraction: float, seed: int, split: str):
    """A seeded per-class split: `fraction` of every class is 'val', the rest 'train'."""
    g = torch.Generator().manual_seed(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(dataset.targets):
        by_class.setdefault(t, []).append(i)
    held: list[int] = []
    for t in sorted(by_class):
        members = torch.tensor(by_class[t])
        held += members[torch.randperm(len(members), generator=g)[:round(fraction * len(members))]].tolist()
    held_set = set(held)
    keep = sorted(held) if split == "val" else [i for i in range(len(dataset)) if i not in held_set]
    return _Subset(dataset, keep)


def _split_dir(cfg: DataConfig, split: str) -> Path:
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data.root: dataset directory {root} not found")
    name = cfg.train_split if split == "train" else cfg.val_split
    candidates = [name] + (["validation"] if name == "val" else ["val"] if name == "validation" else [])
    for candidate in candidates:
        if (root / candidate).is_dir():
            return root / candidate
    key = "train_split" if split == "train" else "val_split"
    raise DataError(f"data.{key}: no folder {root / name} (set data.{key} to the folder name of the {split} split)")


class _ClassListFolder(ImageFolder):
    """ImageFolder over the listed classes only, labelled in list order."""

    def __init__(self, root: str, classes: Sequence[str]):
        self._class_list = list(classes)
        super().__init__(root)

    def find_classes(self, directory):
        return list(self._class_list), {c: i for i, c in enumerate(self._class_list)}


class _ArrayUnpickler(pickle.Unpickler):
    """Reads the CIFAR pickles: containers, strings, numbers and numpy arrays; any other global is refused, so an
    unverified file cannot run code."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),  # numpy 1 and 2 module names:
                *((module, name) for module in ("numpy.core.multiarray", "numpy._core.multiarray")
                  for name in ("_reconstruct", "scalar"))}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # any malformed content
        raise DataError(f"{path}: not a CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: not a CIFAR pickle (a {type(entry).__name__}, not a dict)")
    return entry


def _load_cifar(base: type, root: Path, files: Sequence[str], num_classes: int):
    """torchvision's CIFAR10/CIFAR100 dataset (its __getitem__, attributes and repr) filled by a loader that
    unpickles arrays only; checks what torchvision takes on trust (shapes, label range)."""
    folder = root / base.base_folder
    data, targets = [], []
    for filename in files:
        entry = _read_cifar_pickle(folder / filename)
        labels = entry.get("labels", entry.get("fine_labels"))
        array = entry.get("data")
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != 3072:
            raise DataError(f"{folder / filename}: 'data' must be a uint8 array of N x 3072 pixels")
        if labels is None or len(labels) != len(array):
            raise DataError(f"{folder / filename}: expected one label per image under 'labels' or 'fine_labels'")
        labels = [int(t) for t in labels]
        if labels and not 0 <= min(labels) <= max(labels) < num_classes:
            raise DataError(f"{folder / filename}: labels outside [0, {num_classes})")
        data.append(array)
        targets.extend(labels)
    meta_path = folder / base.meta["filename"]
    classes = _read_cifar_pickle(meta_path).get(base.meta["key"])
    if not isinstance(classes, list) or len(classes) != num_classes:
        raise DataError(f"{meta_path}: expected {num_classes} class names under {base.meta['key']!r}")
    dataset = base.__new__(base)
    VisionDataset.__init__(dataset, str(root))
    dataset.train = files == [f for f, _ in base.train_list]
    dataset.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision keeps it
    dataset.targets = targets
    dataset.classes = [str(c) for c in classes]
    dataset.class_to_idx = {c: i for i, c in enumerate(dataset.classes)}
    return dataset


def _image_folder(cfg: DataConfig, split: str):
    directory = _split_dir(cfg, split)
    all_names = _class_dirs(_split_dir(cfg, "train"))  # labels follow the train split, whatever val holds
    subset = _select_classes(cfg, all_names) or all_names
    missing = [c for c in subset if not (directory / c).is_dir()]
    if missing:
        raise DataError(f"{directory}: no folder for class(es) {', '.join(missing[:5])}")
    try:
        dataset = _ClassListFolder(str(directory), subset)
    except FileNotFoundError as e:  # a class folder without images
        raise DataError(f"{directory}: {e}") from None
    dataset.num_classes = len(dataset.classes)
    return dataset


def _cifar(cfg: DataConfig, split: str):
    base = CIFAR10 if cfg.kind == "cifar10" else CIFAR100
    root = Path(cfg.root)
    if not root.is_dir():
        raise DataError(f"data.root: dataset directory {root} not found")
    name = cfg.train_split if split == "train" else cfg.val_split
    if name not in ("train", "val", "test"):
        key = "train_split" if split == "train" else "val_split"
        raise DataError(f"data.{key}: CIFAR has the splits train and test (val = test), got {name!r}")
    folder = root / base.base_folder
    needed = base.train_list if name == "train" else base.test_list
    for filename, md5 in [*needed, [base.meta["filename"], base.meta["md5"]]]:
        path = folder / filename
        if not path.is_file():
            raise DataError(f"{path}: CIFAR file not found (data.root must hold {base.base_folder}/)")
        if cfg.verify and not check_integrity(str(path), md5):
            raise DataError(f"{path}: md5 differs from the official {cfg.kind} file "
                            "(set data.verify: false for re-packed files)")
    dataset = _load_cifar(base, root, [f for f, _ in needed], 10 if base is CIFAR10 else 100)
    subset = _select_classes(cfg, dataset.classes)
    if subset is not None:
        old_to_new = {dataset.class_to_idx[c]: i for i, c in enumerate(subset)}
        keep = [i for i, t in enumerate(dataset.targets) if t in old_to_new]
        dataset.data = dataset.data[keep]
        dataset.targets = [old_to_new[dataset.targets[i]] for i in keep]
        dataset.classes = list(subset)
        dataset.class_to_idx = {c: i for i, c in enumerate(subset)}
    dataset.num_classes = len(dataset.classes)
    return dataset


def build_dataset(cfg: DataConfig, split: str) -> Dataset:
    """The untransformed `split` ('train' | 'val') of the configured data: samples are (PIL image, class index);
    the dataset has `.classes` (label order) and `.num_classes`. create_loader adds the transforms."""
    if split not in ("train", "val"):
        raise DataError(f"build_dataset: split must be 'train' or 'val', got {split!r}")
    source = "train" if cfg.val_fraction else split
    if cfg.kind == "embedded":
        num = cfg.num_train if source == "train" else cfg.num_val
        subset = _select_classes(cfg, EMBEDDED_CLASSES)
        # generate enough images that the subset still has `num` of them
        total = num if subset is None else math.ceil(num * len(EMBEDDED_CLASSES) / len(subset))
        dataset = _capped(EmbeddedShapes(source, total, cfg.image_size, cfg.seed, subset), num, cfg.seed)
        return _holdout(dataset, cfg.val_fraction, cfg.seed, split) if cfg.val_fraction else dataset
    dataset = _image_folder(cfg, source) if cfg.kind == "imagefolder" else _cifar(cfg, source)
    if cfg.val_fraction:
        dataset = _holdout(dataset, cfg.val_fraction, cfg.seed, split)
    return _capped(dataset, cfg.num_train if split == "train" else cfg.num_val, cfg.seed)


# ------------------------------------------------------------------------------------------------------ transforms

def build_transform(cfg: DataConfig, train: bool) -> Callable:
    """timm.data.create_transform from the config; train_crop 'pad' swaps the random-resized crop for a padded
    random crop (the CIFAR recipe)."""
    from timm.data import create_transform
    from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_interp_mode
    from torchvision import transforms

    mean = cfg.mean * 3 if len(cfg.mean) == 1 else cfg.mean
    std = cfg.std * 3 if len(cfg.std) == 1 else cfg.std
    fixed_interpolation = "bilinear" if cfg.interpolation == "random" else cfg.interpolation  # for plain resizes
    kwargs = dict(input_size=cfg.image_size, interpolation=cfg.interpolation, mean=mean, std=std,
                  crop_pct=cfg.crop_pct)
    if not train or not cfg.augment:
        return create_transform(**dict(kwargs, interpolation=fixed_interpolation), is_training=train, no_aug=True)
    kwargs.update(scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, vflip=cfg.vflip,
                  color_jitter=cfg.color_jitter or None, auto_augment=cfg.auto_augment, re_prob=cfg.re_prob,
                  re_mode=cfg.re_mode, re_count=cfg.re_count)
    if cfg.train_crop == "rrc":
        return create_transform(is_training=True, **kwargs)
    primary, secondary, final = create_transform(is_training=True, separate=True, **kwargs)
    crop = [] if _native_size(cfg) else [
        transforms.Resize(cfg.image_size, interpolation=str_to_interp_mode(fixed_interpolation)),
        transforms.CenterCrop(cfg.image_size)]
    crop.append(transforms.RandomCrop(cfg.image_size, padding=cfg.crop_padding))
    flips = [t for t in primary.transforms if not isinstance(t, RandomResizedCropAndInterpolation)]
    return transforms.Compose([*crop, *flips, *secondary.transforms, *final.transforms])


def _native_size(cfg: DataConfig) -> bool:
    """Whether the stored images already have the training size (no resize needed before the padded crop)."""
    return (cfg.kind == "embedded") or (cfg.kind in ("cifar10", "cifar100") and cfg.image_size == 32)


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample's augmentation (splitmix64 finaliser)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + 1) & (2**64 - 1)
    for shift, mult in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        z = ((z ^ (z >> shift)) * mult) & (2**64 - 1)
    return (z ^ (z >> 31)) >> 1


class TransformedDataset(Dataset):
    """Applies a transform to (image, target) samples. Given a key (index, epoch) -- what ResumableSampler yields
    for training -- the transform runs under RNGs seeded from (seed, epoch, index) and the caller's RNG states are
    restored afterwards: augmentation is reproducible, worker-count independent, and leaves the training RNG alone.
    """

    def __init__(self, dataset: Dataset, transform: Callable | None, seed: int = 0):
        self.dataset, self.transform, self.seed = dataset, transform, seed
        self.classes = getattr(dataset, "classes", None)
        self.num_classes = getattr(dataset, "num_classes", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, None)
        image, target = self.dataset[index]
        if self.transform is None:
            return image, target
        if epoch is None:
            return self.transform(image), target
        s = _sample_seed(self.seed, epoch, index)
        states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
        try:
            random.seed(s)
            np.random.seed(s % 2**32)
            torch.random.default_generator.manual_seed(s)  # the CPU generator only: CUDA RNGs stay untouched
            return self.transform(image), target
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.random.set_rng_state(states[2])


# -------------------------------------------------------------------------------------------------------- sampling

class ResumableSampler(DistributedSampler):
    """DistributedSampler's order (seed + epoch; ranks take interleaved slices) that can start at a batch.

    Without torch.distributed pass num_replicas=1, rank=0. `set_epoch(epoch, start_batch=k)` makes the next
    iterations yield the tail of that epoch's order from batch k (k * batch_size samples per rank): exactly the
    batches a fresh run yields from k on. With `with_epoch` it yields (index, epoch) keys for TransformedDataset.
    The start holds until the next set_epoch: call set_epoch every epoch (as DistributedSampler requires anyway).
    `pad=False` (evaluation) gives each rank its own samples without DistributedSampler's repeated padding.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = False, epoch: int = 0,
                 with_epoch: bool = False, pad: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.pad = pad
        self.batch_size = batch_size
        self.with_epoch = with_epoch
        self.start_batch = 0
        self.epoch = epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if start_batch < 0:
            raise ValueError(f"start_batch must be >= 0, got {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def start_index(self) -> int:
        return min(self.start_batch * self.batch_size, self.shard_size)

    def __iter__(self) -> Iterator:
        indices = self._indices()[self.start_index:]
        if self.with_epoch:
            return iter([(i, self.epoch) for i in indices])
        return iter(indices)

    def _indices(self) -> list:
        if self.pad:
            return list(super().__iter__())
        # no padding: rank r takes samples r, r + W, ... of the order; every sample is seen once over the ranks
        n = len(self.dataset)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist() \
            if self.shuffle else list(range(n))
        return order[self.rank::self.num_replicas]

    @property
    def shard_size(self) -> int:
        return self.num_samples if self.pad else len(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return self.shard_size - min(self.start_batch * self.batch_size, self.shard_size)


def create_loader(dataset: Dataset, cfg: DataConfig, batch_size: int, train: bool, workers: int = 0,
                  distributed: bool = False, seed: int = 0, epoch: int = 0, drop_last: bool | None = None,
                  pin_memory: bool | None = None) -> DataLoader:
    """A DataLoader over `dataset` (from build_dataset) with the timm transforms of `cfg`.

    The sampler is a ResumableSampler (`loader.sampler`): train shuffles by (seed, epoch), eval keeps the order;
    distributed takes rank and world size from torch.distributed. Call `loader.sampler.set_epoch(epoch)` each epoch
    (`start_batch=k` to resume inside one). drop_last defaults to `train`.
    """
    if batch_size < 1:
        raise DataError(f"batch_size: expected >= 1, got {batch_size}")
    drop_last = train if drop_last is None else drop_last
    wrapped = TransformedDataset(dataset, build_transform(cfg, train), seed=seed)
    replicas = dict(num_replicas=None, rank=None) if distributed else dict(num_replicas=1, rank=0)
    # evaluation shards without padding (DistributedSampler repeats samples to even out the ranks: an exact
    # accuracy must count every sample once)
    sampler = ResumableSampler(wrapped, batch_size, shuffle=train, seed=seed, epoch=epoch, with_epoch=train,
                               pad=train, **replicas)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    # its own generator: DataLoader would otherwise draw the workers' base seed from the global torch RNG
    return DataLoader(wrapped, batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=drop_last,
                      pin_memory=pin_memory, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------------- CLI

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
