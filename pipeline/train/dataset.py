"""What the loader reads: rows of an image store through a per-image transform, batched in one read where it can."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline.data import ImageStore
from pipeline.train.heads import Head


@dataclass
class FoldData:
    """The images and targets every fold of a run reads: train and test stores, targets, fold ids, the task's head."""

    store: ImageStore
    test_store: ImageStore
    y: np.ndarray
    folds: np.ndarray
    head: Head


class ImageDataset(torch.utils.data.Dataset):
    """Rows of an :class:`ImageStore` (or the decoded-image cache) through a per-image transform.

    ``transform`` takes an RGB uint8 ``(H, W, 3)`` array and returns the tensor the loader
    batches (:class:`pipeline.vision.host.HostTransform`: uint8 ``(size, size, 3)``).

    A DataLoader asks for a whole batch at once (``__getitems__``): when the store can read
    many rows in one go (the cache's ``take``) and the transform has nothing to do to
    images of that side, the batch is one array read, with no per-image Python; otherwise
    it is the images one by one. Either way :func:`collate_rows` makes the same batch.
    """

    def __init__(self, store: ImageStore, indices: np.ndarray, transform, labels: np.ndarray | None = None):
        self.store = store
        self.indices = np.asarray(indices)
        self.transform = transform
        self.labels = labels

    def __len__(self) -> int:
        return len(self.indices)

    def _label(self, rows):
        # a class index, a 0/1 label row or a value: the task's head reads it; test rows have none
        if self.labels is None:
            return 0 if np.ndim(rows) == 0 else torch.zeros(len(rows), dtype=torch.int64)
        return torch.as_tensor(self.labels[rows])

    def __getitem__(self, item: int):
        index = int(self.indices[item])
        return self.transform(self.store[index]), self._label(index)

    def __getitems__(self, items: list[int]):
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        take = getattr(self.store, "take", None)
        if take is not None and not self.transform.acts_on(self.store.side):
            return RowBatch((torch.from_numpy(take(rows)), self._label(rows)))
        return [self[item] for item in items]


class RowBatch(tuple):
    """A batch a dataset read in one go: ``(images, labels)``, already stacked."""


def collate_rows(samples):
    """The DataLoader's ``collate_fn``: a :class:`RowBatch` as it is, a list of samples stacked by torch's default."""
    if isinstance(samples, RowBatch):
        return tuple(samples)
    return torch.utils.data.default_collate(samples)
