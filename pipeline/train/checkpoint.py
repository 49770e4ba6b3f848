"""Checkpoints of a fold: the training state after every epoch (resume) and the best weights (predict).

The training state is written so that a crash at any instant leaves at least one
complete state on disk; the best checkpoint is a safetensors file that records its own
epoch and score, so a resume never trusts a stale figure.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file as save_safetensors

from pipeline.core import io
from pipeline.store import previous_version

log = logging.getLogger(__name__)


def save_state(path: Path, state: dict) -> None:
    """Save the training state, keeping the one before it as a fallback.

    The older file is renamed aside before the new one is written (itself atomically),
    so at any moment of a crash at least one complete state is on disk.
    """
    if path.is_file():
        os.replace(path, previous_version(path))
    io.write_with(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict | None:
    """The last complete training state: ``last.pt``, else the one before it, else None.

    A state that cannot be loaded safely (damaged, or a pickle that ``weights_only`` refuses) is never
    used and never dropped silently: a warning names the file, why, and what is trained again, and the
    file is kept beside as ``<name>.damaged`` for inspection.
    """
    refused = []
    for candidate in (path, previous_version(path)):
        if not candidate.is_file():
            continue
        try:
            state = torch.load(candidate, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file raises one of several torch/pickle errors
            reason = (
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:160] if str(exc).strip() else 'no detail'}"
            )
            kept = candidate.with_name(candidate.name + ".damaged")
            candidate.replace(kept)
            log.warning(
                "  warning: training state %s cannot be loaded safely (%s); kept as %s, not used",
                candidate,
                reason,
                kept.name,
            )
            refused.append(candidate.name)
            continue
        if refused:
            log.warning(
                "  resuming from the previous training state %s (after epoch %d): the epoch after it is trained again",
                candidate.name,
                state["epoch"] + 1,
            )
        elif candidate != path:
            log.info("  using the previous training state %s (epoch %d)", candidate.name, state["epoch"] + 1)
        return state
    if refused:
        log.warning(
            "  warning: no usable training state in %s (%s refused): this fold restarts from epoch 1 and "
            "every epoch it had trained is trained again",
            path.parent,
            ", ".join(refused),
        )
    return None


def save_best(path: Path, model: torch.nn.Module, epoch: int, score: float) -> None:
    """The model's weights as safetensors, with the epoch and score they were taken at."""
    # the checkpoint carries its own epoch and score, so a resume never trusts a stale figure
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"epoch": str(epoch), "score": repr(float(score))}
    io.write_with(path, lambda tmp: save_safetensors(tensors, str(tmp), metadata=metadata))


def best_checkpoint_info(path: Path) -> tuple[int, float] | None:
    """(epoch, score) recorded in a best checkpoint, or None if it is missing or damaged."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        return int(metadata["epoch"]), float(metadata["score"])
    except Exception:  # noqa: BLE001 - any unreadable checkpoint is treated as absent
        return None
