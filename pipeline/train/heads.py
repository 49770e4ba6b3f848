"""The torch half of a task: the loss it trains with and the activation that turns logits into stored predictions.

The task registry itself (targets, strata, submission formats) is :mod:`pipeline.task.tasks`, which
imports no torch so that the folds and the ensemble run without it.
"""

from __future__ import annotations

import numpy as np
import torch
from timm.loss import SoftTargetCrossEntropy

from pipeline.task.tasks import Targets, get_task, resolve_loss


class Head(torch.nn.Module):
    """The loss a task trains with and the activation that turns logits into stored predictions.

    ``loss(logits, y)`` takes the model's raw output; ``activate(logits)`` gives
    probabilities (softmax or sigmoid) or values on the target's own scale. Regression
    targets are standardised for MSE/Huber and scaled to [0, 1] for BCE (as strong
    Pawpularity solutions did), and mapped back by ``activate``.
    """

    def __init__(self, task: str, loss: str, targets: Targets | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.task, self.loss_name, self.label_smoothing = task, loss, label_smoothing
        targets = targets or Targets(np.zeros(0), [], [])
        self.low, self.high = targets.value_range or (0.0, 1.0)
        self.mean, self.std = targets.value_mean, targets.value_std
        self.values = get_task(task).output == "value"

    def _scaled(self, y: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "bce":
            return ((y - self.low) / max(self.high - self.low, 1e-12)).clamp(0.0, 1.0)
        return (y - self.mean) / self.std

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.loss_name == "ce":
            if self.task == "binary":  # a two-logit softmax head for a binary target
                return torch.nn.functional.cross_entropy(logits, y.long(), label_smoothing=self.label_smoothing)
            return torch.nn.functional.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        if self.values:
            target = self._scaled(y.float().reshape(logits.shape))
        else:
            target = y.float().reshape(logits.shape)
            if self.label_smoothing:
                target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        if self.loss_name == "bce":
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        if self.loss_name == "huber":
            return torch.nn.functional.smooth_l1_loss(logits, target)
        return torch.nn.functional.mse_loss(logits, target)

    forward = loss

    def soft_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss on soft targets (mixup/cutmix), already smoothed by the mixer.

        A softmax head takes timm's ``SoftTargetCrossEntropy`` (cross-entropy against a label
        distribution); a sigmoid head takes BCE on each label's mixed probability.
        """
        logits = logits.float()
        if self.loss_name == "ce":
            return SoftTargetCrossEntropy()(logits, target)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.reshape(logits.shape))

    def soft_loss_rows(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of each row against targets in the head's own form, ``(batch,)``: a label distribution
        (softmax head; :meth:`soft_loss`'s cross-entropy), a probability per label (sigmoid head), or values on
        the target's scale (value tasks: scaled as :meth:`loss` scales them). Pseudo-labels and distillation
        (:mod:`pipeline.students.teacher`) weight the rows."""
        logits = logits.float()
        target = target.float().reshape(logits.shape)
        if self.loss_name == "ce":
            return torch.sum(-target * torch.nn.functional.log_softmax(logits, dim=-1), dim=-1)
        if self.values:
            target = self._scaled(target)
            if self.loss_name == "huber":
                return torch.nn.functional.smooth_l1_loss(logits, target, reduction="none").mean(dim=1)
            if self.loss_name == "mse":
                return torch.nn.functional.mse_loss(logits, target, reduction="none").mean(dim=1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.loss_name == "ce":
            probs = logits.softmax(dim=1)
            return probs[:, 1:2] if self.task == "binary" else probs
        if not self.values:
            return logits.sigmoid()
        if self.loss_name == "bce":
            return logits.sigmoid() * (self.high - self.low) + self.low
        return logits * self.std + self.mean

    def n_outputs(self, n_columns: int) -> int:
        """Logits the model needs: one per stored column, two for a binary softmax head."""
        return 2 if (self.loss_name == "ce" and self.task == "binary") else n_columns


def make_head(task: str, loss: str, targets: Targets | None = None, label_smoothing: float = 0.0) -> Head:
    """The head of ``task`` with ``loss`` resolved (``auto``: the task's default)."""
    return Head(task, resolve_loss(task, loss), targets, label_smoothing)
