"""Training batches through `torch.utils.data`: a seeded batch sampler and worker processes.

`StepBatches` makes every micro-batch a function of (seed, rank, step, micro-batch), drawn from this
rank's shard of the dataset, so a resumed run draws exactly the next batches and data-parallel
ranks never share a shard. Workers (`TrainItems`) read and decode the images, resize them to the
student's input and place the first taps; only what needs the model or the teacher (unlabeled
first taps, corrective clicks) stays in the training loop. The dataset holds file names only, so
memory does not grow with the number of images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from distill.data.datasets import DatasetError, SampleDataset
from distill.data.prompts import TapMix
from distill.training.batch import Prepared, prepare


@dataclass
class Item:
    prepared: Prepared
    tap: tuple[float, float] | None  # the first tap; None for an unlabeled image (the teacher's mask decides)


@dataclass
class Batch:
    items: list[Item]
    images: torch.Tensor  # (B, 3, R, R) normalised, zero-padded

    def pin_memory(self) -> Batch:  # DataLoader(pin_memory=True) calls this
        self.images = self.images.pin_memory()
        return self


class StepBatches(Sampler):
    """The keys `(image index, item seed, resolution)` of every micro-batch from `start_step` to `steps`."""

    def __init__(self, n: int, batch_size: int, accumulate: int, seed: int, rank: int, world_size: int,
                 steps: int, start_step: int, resolutions: tuple[int, ...]):
        shard = np.arange(rank, n, world_size)
        self.shard = shard if len(shard) else np.arange(n)  # fewer images than ranks: every rank reads all
        self.batch_size, self.accumulate, self.seed, self.rank = batch_size, accumulate, seed, rank
        self.steps, self.start_step, self.resolutions = steps, start_step, resolutions

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accumulate

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            # the resolution a step trains at (several in supernet mode): one per step, for all its micro-batches
            pick = np.random.default_rng([self.seed, self.rank, step, 0]).integers(len(self.resolutions))
            for micro in range(self.accumulate):
                rng = np.random.default_rng([self.seed, self.rank, step, micro + 1])
                images = self.shard[rng.integers(len(self.shard), size=self.batch_size)]
                yield [(int(i), (self.seed, self.rank, step, micro, j), self.resolutions[pick])
                       for j, i in enumerate(images)]


class TrainItems(Dataset):
    """What a worker makes of one key: the image's instances at the student's input, with their first taps."""

    def __init__(self, samples: SampleDataset, tap_mix: TapMix, instances_per_image: int):
        self.samples, self.tap_mix, self.instances_per_image = samples, tap_mix, instances_per_image

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, tuple[int, ...], int]) -> list[Item]:
        index, seed, resolution = key
        rng = np.random.default_rng(seed)
        return [Item(prepare(s, resolution), None if s.mask is None else self.tap_mix.draw(s.mask, rng))
                for s in self.samples.read(index, self.instances_per_image, rng) if s.mask is None or s.mask.any()]


def collate(items: list[list[Item]]) -> Batch:
    flat = [item for image_items in items for item in image_items]
    if not flat:
        raise DatasetError("no image of this batch could be read (see the warnings above)")
    return Batch(flat, torch.stack([item.prepared.image for item in flat]))


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # a worker's own process: decoding is parallel across workers, not inside one


def batch_loader(items: TrainItems, batches: StepBatches, workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(items, batch_sampler=batches, num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
                      worker_init_fn=_worker_init if workers else None, prefetch_factor=2 if workers else None)
