"""The device half of the input path: pixels to floats, the ``device_augment`` steps (:data:`DEVICE_AUGMENTS`), the
model's normalisation.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch

from pipeline.vision.host import one_step
from pipeline.vision.kernels import Affine, CoarseDropout, HorizontalFlip, RandomBrightnessContrast, VerticalFlip
from pipeline.vision.policies import RandAugment, TrivialAugment


class DeviceTransform:
    """Per batch on the device: pixels to floats in [0, 1], the ``device_augment`` steps, the model's normalisation.

    Parameters
    ----------
    mean, std : sequence of 3 floats
        The model's normalisation (from its timm config).
    augment : list of ``{Name: params}``, optional
        Steps of :data:`DEVICE_AUGMENTS`, applied in order to training batches only.
    channels_last : bool
        Return the batch in channels_last memory format (the GPU path).

    Batches come from the loader as images are stored, ``(N, H, W, 3)``; the returned
    batch is ``(N, 3, H, W)`` floats. A uint8 batch is divided by 255; a float batch (an
    ``augment`` step such as ``ToFloat`` already scaled it) is taken as it is. The random
    parameters are drawn on the batch's device from torch's generator there (seeded per
    epoch by the training loop), so nothing waits for the host.
    """

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], augment: list | None = None, channels_last: bool = False
    ):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.augment = [build_device_augment_step(step) for step in augment or []]
        self.channels_last = channels_last
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor, train: bool = False) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # a view: NCHW indexing over the channels_last bytes the loader copied
        if not self.channels_last:
            x = x.contiguous()  # reordered while still uint8: a quarter of the bytes
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        if train:
            for step in self.augment:
                x = step(x)
        if x.device not in self._on_device:
            self._on_device[x.device] = (self.mean.to(x.device), self.std.to(x.device))
        mean, std = self._on_device[x.device]
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)


DEVICE_AUGMENTS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        Affine,
        HorizontalFlip,
        VerticalFlip,
        RandomBrightnessContrast,
        CoarseDropout,
        TrivialAugment,
        RandAugment,
    )
}


def build_device_augment_step(step: dict[str, dict[str, Any]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Instantiate one ``{Name: params}`` step of :data:`DEVICE_AUGMENTS`.

    Raises
    ------
    ValueError
        For an unknown step (naming the known ones) or a parameter it does not take or rejects.
    """
    name, params = one_step(step, "device_augment")
    cls = DEVICE_AUGMENTS.get(name)
    if cls is None:
        import albumentations as A  # only on this error path, for the hint

        hint = (
            " (an albumentations transform: put it under train.augment)"
            if isinstance(getattr(A, name, None), type)
            else ""
        )
        raise ValueError(f"unknown device_augment step {name!r}{hint}; known steps: {', '.join(DEVICE_AUGMENTS)}")
    accepted = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"device_augment step {name} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )
    try:
        return cls(**params)
    except ValueError as exc:
        raise ValueError(f"bad parameters for device_augment step {name}: {exc}") from None


def check_device_augment_steps(steps: list[dict[str, dict[str, Any]]]) -> None:
    for step in steps:
        build_device_augment_step(step)
