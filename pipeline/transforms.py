"""Augmentation (albumentations, per image on the CPU) and test-time views (tensor ops, per batch).

Training augmentation is a list of albumentations transforms written in YAML as
``- Affine: {rotate: [-10, 10], p: 0.5}``, framed by a resize to the model's input
size and the model's normalisation.

Test-time views act on whole normalised batches on the device, so every view of a
batch goes through the model in one forward pass. Views are named strings:
``identity``, ``hflip``, ``vflip``, ``transpose``, ``shift(dx,dy)`` (pixels) and
``zoom(s)``. Flips are not always safe (digits and text are not flip-invariant):
choose the views per competition.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import albumentations as A
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from albumentations.pytorch import ToTensorV2

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def build_augment_step(step: dict[str, dict[str, Any]]) -> A.BasicTransform:
    """Instantiate one ``{Name: params}`` albumentations step.

    Raises
    ------
    ValueError
        For an unknown transform name or parameters albumentations rejects.
    """
    if len(step) != 1:
        raise ValueError(f"each augment step is one {{Name: params}} mapping, got {step}")
    (name, params), = step.items()
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        raise ValueError(f"unknown albumentations transform {name!r} (see albumentations.ai/docs for the list)")
    try:
        return cls(**(params or {}))
    except Exception as exc:  # albumentations validates with pydantic and raises several types
        raise ValueError(f"bad parameters for {name}: {exc}") from None


def check_augment_steps(steps: list[dict[str, dict[str, Any]]]) -> None:
    for step in steps:
        build_augment_step(step)


def build_transform(image_size: int, mean, std, interpolation: str, augment: list | None = None) -> A.Compose:
    """Resize to the model's size, optional augmentation, the model's normalisation, CHW tensor."""
    steps = [A.Resize(image_size, image_size, interpolation=INTERPOLATIONS[interpolation])]
    steps += [build_augment_step(step) for step in augment or []]
    steps += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)


# -- test-time views -----------------------------------------------------------------

def _shift(dx: float = 0, dy: float = 0) -> Callable[[torch.Tensor], torch.Tensor]:
    dx, dy = int(dx), int(dy)

    def view(x: torch.Tensor) -> torch.Tensor:
        # replicate the border so the shifted-in pixels look like the image edge
        pad = (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0))
        padded = F.pad(x, pad, mode="replicate")
        h, w = x.shape[-2:]
        top, left = max(-dy, 0), max(-dx, 0)
        return padded[..., top : top + h, left : left + w]

    return view


def _zoom(scale: float = 1.1) -> Callable[[torch.Tensor], torch.Tensor]:
    def view(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        resized = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
        if scale >= 1:
            top, left = (nh - h) // 2, (nw - w) // 2
            return resized[..., top : top + h, left : left + w]
        pad_h, pad_w = h - nh, w - nw
        return F.pad(resized, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode="replicate")

    return view


TTA_VIEWS: dict[str, Callable[..., Callable[[torch.Tensor], torch.Tensor]]] = {
    "identity": lambda: (lambda x: x),
    "hflip": lambda: (lambda x: x.flip(-1)),
    "vflip": lambda: (lambda x: x.flip(-2)),
    "transpose": lambda: (lambda x: x.transpose(-1, -2)),
    "shift": _shift,
    "zoom": _zoom,
}

_VIEW_PATTERN = re.compile(r"^\s*([a-z_]+)\s*(?:\(([^()]*)\))?\s*$")


def parse_view(spec: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Turn a view string such as ``"shift(2,0)"`` into a batch function.

    Raises
    ------
    ValueError
        Naming the bad view and the known ones.
    """
    match = _VIEW_PATTERN.match(spec)
    if not match or match.group(1) not in TTA_VIEWS:
        raise ValueError(f"unknown TTA view {spec!r}; known views: {', '.join(TTA_VIEWS)} (e.g. 'shift(2,0)', 'zoom(1.1)')")
    name, raw_args = match.groups()
    try:
        args = [float(a) for a in raw_args.split(",")] if raw_args and raw_args.strip() else []
        return TTA_VIEWS[name](*args)
    except (TypeError, ValueError):
        raise ValueError(f"bad arguments in TTA view {spec!r}") from None


def apply_views(x: torch.Tensor, views: list[Callable[[torch.Tensor], torch.Tensor]]) -> torch.Tensor:
    """Stack all views of a batch: ``(N, C, H, W)`` -> ``(V * N, C, H, W)``, view-major."""
    return torch.cat([view(x) for view in views], dim=0)


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Grayscale or RGBA arrays to 3-channel uint8 RGB."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image, dtype=np.uint8)
