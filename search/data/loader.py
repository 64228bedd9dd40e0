"""Resumable sampling and the DataLoader: an epoch can restart at any batch; evaluation shards without padding."""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .config import DataConfig, DataError
from .transforms import TransformedDataset, build_transform


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
