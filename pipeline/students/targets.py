"""A student's targets in its head's form: the true labels, the teacher's softened predictions, packed into one array
per row with the distillation loss (:class:`TeacherLoss`) that reads them, and the datasets that carry them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.train.dataset import ImageDataset, collate_rows
from pipeline.train.heads import Head

# -- targets in the head's form -------------------------------------------------------------------

def head_targets(head: Head, stored: np.ndarray) -> np.ndarray:
    """Stored-form predictions (probabilities per column, or values) as the head's targets: a binary
    two-logit softmax head takes ``[1 - p, p]``; every other head takes the stored columns."""
    stored = np.asarray(stored, dtype=np.float64).reshape(len(stored), -1)
    if head.loss_name == "ce" and head.task == "binary":
        return np.concatenate([1.0 - stored, stored], axis=1)
    return stored


def true_targets(head: Head, y: np.ndarray, n_cols: int) -> np.ndarray:
    """The true labels as the head's targets, label smoothing applied as :meth:`Head.loss` applies it."""
    smooth = head.label_smoothing
    if head.loss_name == "ce":
        n_out = head.n_outputs(n_cols)
        onehot = np.eye(n_out)[np.asarray(y, dtype=np.int64).reshape(-1)]
        return onehot * (1 - smooth) + smooth / n_out
    target = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    if not head.values and smooth:
        target = target * (1 - smooth) + 0.5 * smooth
    return target


def soften(head: Head, target: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's probabilities at temperature T, as Hinton's soft targets: ``softmax(log p / T)`` for a
    softmax head, ``sigmoid(logit p / T)`` per label for a sigmoid head; values are left as they are."""
    if head.values:
        return target
    p = np.clip(target, 1e-7, 1 - 1e-7)
    if head.loss_name == "ce":
        logits = np.log(p) / temperature
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / temperature))


def pack(hard: np.ndarray, soft: np.ndarray | None, weight: float, alpha: float) -> np.ndarray:
    """Rows of ``[hard target | soft target | loss weight | alpha]`` (float32), what the loader carries per row."""
    n, n_out = hard.shape
    soft = np.zeros_like(hard) if soft is None else soft
    return np.concatenate([hard, soft, np.full((n, 1), weight), np.full((n, 1), alpha)], axis=1).astype(np.float32)


class TeacherLoss(torch.nn.Module):
    """Per row ``(1 - alpha) * task loss + alpha * T^2 * KL(teacher_T || student_T)``, weighted mean over the batch.

    The task loss is :meth:`Head.soft_loss_rows` against the row's hard target (a true label, or
    a pseudo-label, soft or one-hot). The distillation term (Hinton et al. 2015) is the KL
    divergence from the teacher's softened distribution to the student's at the same
    temperature, times T^2 so its gradients keep their scale; for a sigmoid head it is each
    label's binary KL, averaged; for values (regression, ordinal) the head's own loss to the
    teacher's value, with no temperature (a value has no distribution to soften).
    """

    def __init__(self, head: Head, n_out: int, temperature: float = 1.0, distill: bool = False):
        super().__init__()
        self.head, self.n_out, self.temperature, self.distill = head, n_out, temperature, distill

    def distill_rows(self, logits: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        if self.head.values:
            return self.head.soft_loss_rows(logits, soft)
        t = self.temperature
        if self.head.loss_name == "ce":
            return t * t * (torch.xlogy(soft, soft) - soft * F.log_softmax(logits / t, dim=-1)).sum(dim=-1)
        cross = F.binary_cross_entropy_with_logits(logits / t, soft, reduction="none")
        entropy = -(torch.xlogy(soft, soft) + torch.xlogy(1 - soft, 1 - soft))
        return t * t * (cross - entropy).mean(dim=1)

    def forward(self, logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        logits, n = logits.float(), self.n_out
        packed = packed.float()
        hard, soft, weight, alpha = packed[:, :n], packed[:, n:2 * n], packed[:, 2 * n], packed[:, 2 * n + 1]
        rows = self.head.soft_loss_rows(logits, hard)
        if self.distill:
            rows = (1 - alpha) * rows + alpha * self.distill_rows(logits, soft)
        return (weight * rows).sum() / weight.sum()


class ConcatRows(torch.utils.data.Dataset):
    """Two or more :class:`ImageDataset` one after another (the fold's training rows, then its pseudo rows);
    a batch is read part by part with each part's one-read path and put back in the sampler's order."""

    def __init__(self, parts: list[ImageDataset]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _part(self, item: int) -> int:
        return int(np.searchsorted(self.offsets, item, side="right") - 1)

    def __getitem__(self, item: int):
        k = self._part(item)
        return self.parts[k][item - int(self.offsets[k])]

    def __getitems__(self, items: list[int]):
        items = np.asarray(items, dtype=np.int64)
        which = np.searchsorted(self.offsets, items, side="right") - 1
        images, labels, order = [], [], []
        for k, part in enumerate(self.parts):
            positions = np.flatnonzero(which == k)
            if not len(positions):
                continue
            x, y = collate_rows(part.__getitems__((items[positions] - self.offsets[k]).tolist()))
            images.append(x)
            labels.append(y)
            order.append(positions)
        back = np.argsort(np.concatenate(order), kind="stable")
        from pipeline.train.dataset import RowBatch

        index = torch.from_numpy(back)
        return RowBatch((torch.cat(images)[index], torch.cat(labels)[index]))


@dataclass
class SoftRows:
    """A fold's training rows with packed targets, its pseudo rows, the loss, and what to record in ``fold.json``."""

    train_packed: np.ndarray      # (n_train_images, P): rows outside the fold filled
    pseudo_rows: np.ndarray       # test indices
    pseudo_packed: np.ndarray     # (n_test_images, P): the pseudo rows filled
    loss: TeacherLoss
    info: dict = field(default_factory=dict)

    def dataset(self, store, test_store, train_idx: np.ndarray, transform) -> torch.utils.data.Dataset:
        parts = [ImageDataset(store, train_idx, transform, self.train_packed)]
        if len(self.pseudo_rows):
            parts.append(ImageDataset(test_store, self.pseudo_rows, transform, self.pseudo_packed))
        return parts[0] if len(parts) == 1 else ConcatRows(parts)
