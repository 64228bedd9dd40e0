"""The `data:` section of a config: DataConfig, its defaults per kind and its checks."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any, Mapping


from nas_zoo.errors import NasZooError


KINDS = ("embedded", "imagefolder", "cifar10", "cifar100")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "random")
TRAIN_CROPS = ("rrc", "pad")
RE_MODES = ("const", "rand", "pixel")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class DataError(NasZooError):
    """A data config, class list or dataset directory that cannot be used; the message names the key or path."""



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
    cutout: int = 0
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
    for key, minimum in (("image_size", 1), ("num_train", 1), ("num_val", 1), ("crop_padding", 0), ("re_count", 1),
                         ("cutout", 0)):
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
