"""The embedded dataset: procedurally drawn shapes, generated on first use (no download)."""
from __future__ import annotations

import functools
import math
from typing import Mapping, Sequence

import numpy as np
import torch

from PIL import Image
from torch.utils.data import Dataset

from .config import DataError


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
