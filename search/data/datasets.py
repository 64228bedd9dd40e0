"""build_dataset: ImageFolder (ImageNet layout), CIFAR-10/100 from local files, the embedded dataset; caps,
class subsets and held-out splits."""
from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100, ImageFolder, VisionDataset
from torchvision.datasets.utils import check_integrity

from .classes import _class_dirs, _select_classes, read_class_list
from .config import DataConfig, DataError
from .embedded import EMBEDDED_CLASSES, EmbeddedShapes


def num_classes_of(cfg: DataConfig) -> int:
    """The number of classes `build_dataset(cfg, ...)` will have, without building it (no images are read); for
    an ImageFolder whose root is not there (yet), the ImageNet-1k count."""
    if isinstance(cfg.classes, int):
        return cfg.classes
    if isinstance(cfg.classes, str) and Path(cfg.classes).is_file():
        return len(read_class_list(cfg.classes))
    if cfg.kind == "embedded":
        return len(EMBEDDED_CLASSES)
    if cfg.kind in ("cifar10", "cifar100"):
        return 10 if cfg.kind == "cifar10" else 100
    root = Path(cfg.root or "") / cfg.train_split
    return len(_class_dirs(root)) if root.is_dir() else 1000




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
