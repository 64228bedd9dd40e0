"""Class lists: read / write them, class folders, deterministic class subsets (e.g. ImageNet-100)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence



from .config import DataConfig, DataError


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
    from nas_zoo.io import atomic_write_text
    atomic_write_text(out, "".join(f"{n}\n" for n in names))


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
