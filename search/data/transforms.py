"""timm transforms per config, and reproducible per-sample augmentation (seeded by seed, epoch, index)."""
from __future__ import annotations

import random
from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from .config import DataConfig


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
        made = create_transform(is_training=True, **kwargs)
        return transforms.Compose([made, Cutout(cfg.cutout)]) if cfg.cutout else made
    primary, secondary, final = create_transform(is_training=True, separate=True, **kwargs)
    crop = [] if _native_size(cfg) else [
        transforms.Resize(cfg.image_size, interpolation=str_to_interp_mode(fixed_interpolation)),
        transforms.CenterCrop(cfg.image_size)]
    crop.append(transforms.RandomCrop(cfg.image_size, padding=cfg.crop_padding))
    flips = [t for t in primary.transforms if not isinstance(t, RandomResizedCropAndInterpolation)]
    cutout = [Cutout(cfg.cutout)] if cfg.cutout else []
    return transforms.Compose([*crop, *flips, *secondary.transforms, *final.transforms, *cutout])


class Cutout:
    """DARTS' cutout (DeVries & Taylor 2017): one length x length square, centred at a uniformly random pixel and
    clipped at the border, set to zero after normalisation. Written here because torchvision's RandomErasing draws
    area and aspect instead (a different augmentation); the position comes from torch's RNG, which
    TransformedDataset seeds per (seed, epoch, index)."""

    def __init__(self, length: int):
        self.length = int(length)

    def __call__(self, img):
        import torch
        h, w = img.shape[-2:]
        y, x = int(torch.randint(h, ())), int(torch.randint(w, ()))
        half = self.length // 2
        img = img.clone()
        img[..., max(0, y - half):min(h, y + half), max(0, x - half):min(w, x + half)] = 0
        return img

    def __repr__(self) -> str:
        return f"Cutout(length={self.length})"


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
