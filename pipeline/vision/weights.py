"""Local weights files: read without running code from them, and loaded through timm's own pretrained path.

A Kaggle code competition has no internet, so ImageNet weights come from a file (``train.pretrained: <path>``).
:func:`read_weights_file` reads only safe formats; :func:`create_from_file` builds the architecture with the file's
weights the way timm builds it with hub weights, and names the missing, unexpected or mis-shaped tensors when they
do not fit.
"""

from __future__ import annotations

import re
from pathlib import Path

import timm
import torch
from timm.models import load_state_dict

from pipeline.core.errors import PipelineError

# the weights files train.pretrained may name (a pickle of any other kind is never opened)
WEIGHTS_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class ModelError(PipelineError, ValueError):
    """An unknown model name or a weights file that does not fit the architecture."""


def read_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local weights file without running code from it.

    Only safe formats are read: safetensors, or ``torch.load(weights_only=True)``, which
    refuses pickles that would run code. A checkpoint dict gives its EMA weights first
    (``state_dict_ema``, ``model_ema``), then ``state_dict`` or ``model`` (timm's
    ``load_state_dict``); a ``module.`` prefix (DataParallel) is dropped.

    Parameters
    ----------
    path : str or Path
        A ``.safetensors``, ``.pth``, ``.pt`` or ``.bin`` file.

    Returns
    -------
    dict
        Tensor name -> tensor.

    Raises
    ------
    ModelError
        If the file is missing, of an unknown type, unreadable, or not a dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"pretrained weights file {path} does not exist; set train.pretrained to a file path, true "
                         "(hub) or false")
    if path.suffix not in WEIGHTS_SUFFIXES:
        raise ModelError(f"pretrained weights file {path} must be .safetensors, .pth, .pt or .bin")
    try:
        state = load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or others for a bad file
        raise ModelError(
            f"cannot read weights file {path}: {exc}. Only safetensors files and plain state dicts "
            "(loadable with torch.load(weights_only=True)) are accepted; convert others with "
            "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            f"weights file {path} holds no state dict of tensors; save one with "
            "safetensors.torch.save_file(model.state_dict(), 'model.safetensors')"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def _file_head_classes(state: dict[str, torch.Tensor], timm_name: str) -> int:
    """How many outputs the file's classifier has (0 for a headless backbone file)."""
    cfg = timm.models.get_pretrained_cfg(timm_name)
    names = (cfg.classifier if cfg is not None else None) or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    for name in names:
        weight = state.get(f"{name}.weight")
        if weight is not None and weight.ndim >= 1:
            return int(weight.shape[0])
    return 0


def _load_error(path: Path, timm_name: str, exc: RuntimeError) -> ModelError:
    # torch's message lists the keys: "Missing key(s) in state_dict: ...", "Unexpected key(s) ...", "size mismatch ..."
    text = str(exc)
    details = []
    for label, pattern in (
        ("missing", r"Missing key\(s\) in state_dict: ([^\n]*)"),
        ("unexpected", r"Unexpected key\(s\) in state_dict: ([^\n]*)"),
        ("wrong shape", r"size mismatch for ([^:]+):"),
    ):
        keys = [k.strip(' ".') for hit in re.findall(pattern, text) for k in hit.split(",")]
        if keys:
            details.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    summary = "; ".join(details) or text.splitlines()[0][:200].rstrip(".")
    return ModelError(
        f"weights file {path} does not match architecture {timm_name!r}: {summary}. "
        "Use weights saved from the same timm architecture, or convert them "
        "(docs/scripts/convert_weights.py maps another naming to a timm architecture)"
    )


def create_from_file(timm_name: str, path: str | Path, num_classes: int, **kwargs) -> torch.nn.Module:
    """Build ``timm_name`` with the weights of a local file, through timm's own pretrained loading.

    timm's path (``pretrained_cfg_overlay=dict(file=...)``) runs what it runs for hub weights:
    the architecture's checkpoint filter (a ViT's position embeddings resampled to another
    ``img_size``, its patch embedding to another ``patch_size``) and the input convolution
    adapted to other ``in_chans``. The model is first built with the file's own head size, so
    the load is strict (a missing or unexpected tensor is an error, not a silently random
    layer); then the classifier is re-initialised for ``num_classes`` if that differs.
    """
    path = Path(path)
    state = read_weights_file(path)  # checks the file is safe to read and finds its head size
    head = _file_head_classes(state, timm_name)
    overlay = {"file": str(path), "num_classes": head}
    try:
        model = timm.create_model(
            timm_name,
            pretrained=True,
            num_classes=head,
            pretrained_cfg_overlay=overlay,
            pretrained_strict=True,
            **kwargs,
        )
    except RuntimeError as exc:  # load_state_dict(strict=True): missing, unexpected or mis-shaped tensors
        raise _load_error(path, timm_name, exc) from None
    if head != num_classes:
        model.reset_classifier(num_classes)
    return model
