"""Per-image augmentation on the CPU: albumentations steps (``train.augment``) after the resize to the model's input.

Written in YAML as ``- Affine: {rotate: [-10, 10], p: 0.5}``; they run on uint8 pixels (:class:`HostTransform`).
The loader carries uint8 pixels (four times less to copy to a GPU); :mod:`pipeline.vision.device` turns them into
floats on the device. The package's docstring says where each kind of augmentation runs.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch

INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def build_augment_step(step: dict[str, dict[str, Any]]):
    """Instantiate one ``{Name: params}`` albumentations step (an ``albumentations.BasicTransform``).

    albumentations (about 30 MB resident) is imported here, so a run without ``augment``
    steps never loads it.

    Raises
    ------
    ValueError
        For an unknown transform name or parameters albumentations rejects.
    """
    import albumentations as A

    name, params = one_step(step, "augment")
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        raise ValueError(f"unknown albumentations transform {name!r} (see albumentations.ai/docs for the list)")
    try:
        return cls(**params)
    except Exception as exc:  # albumentations validates with pydantic and raises several types
        raise ValueError(f"bad parameters for {name}: {exc}") from None


def check_augment_steps(steps: list[dict[str, dict[str, Any]]]) -> None:
    for step in steps:
        build_augment_step(step)


def one_step(step: dict[str, dict[str, Any]], key: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(step, dict) or len(step) != 1:
        raise ValueError(f"each {key} step is one {{Name: params}} mapping, got {step}")
    (name, params), = step.items()
    if params is not None and not isinstance(params, dict):
        raise ValueError(f"the parameters of {key} step {name} must be a mapping, got {params!r}")
    return name, dict(params or {})


class HostTransform:
    """Per image on the CPU: resize to the model's input size, the ``augment`` steps, a ``(H, W, 3)`` tensor.

    Without ``augment`` steps it is at most one ``cv2.resize`` (the same call
    albumentations' ``Resize`` makes), and nothing for an image already at the input size
    (:meth:`acts_on`), so the loader can read whole batches from the cache.
    """

    def __init__(self, image_size: int, interpolation: str, augment: list | None = None):
        self.image_size = int(image_size)
        self.interpolation = INTERPOLATIONS[interpolation]
        steps = [build_augment_step(step) for step in augment or []]
        self.augment = None
        if steps:
            import albumentations as A

            self.augment = A.Compose(steps)

    def set_random_seed(self, seed: int) -> None:
        if self.augment is not None:
            self.augment.set_random_seed(seed)

    def acts_on(self, side: int) -> bool:
        """Whether a square image of this side changes here (a resize or augmentation steps)."""
        return self.augment is not None or side != self.image_size

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        size = self.image_size
        if image.shape[0] != size or image.shape[1] != size:
            image = cv2.resize(image, (size, size), interpolation=self.interpolation)
        if self.augment is not None:
            image = self.augment(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(image))
