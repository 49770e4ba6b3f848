"""Augmentation and test-time views.

Two places augment a training image, and a config may use either or both:

- ``train.augment``: albumentations transforms, per image on the CPU, written in YAML as
  ``- Affine: {rotate: [-10, 10], p: 0.5}``. They run after the resize to the model's
  input size (:class:`HostTransform`), on uint8 pixels.
- ``train.device_augment``: the same kind of steps, but on whole batches on the training
  device (:class:`DeviceTransform`), each image with its own random parameters. Where
  albumentations costs a fraction of a millisecond per image in Python (its ``Affine``
  is about 0.3 ms at 32-74 px on the development CPU), a batched affine warp is one
  ``grid_sample`` per batch. The registry :data:`DEVICE_AUGMENTS` names the steps; their
  parameters follow albumentations' names so a step moves between the two lists unchanged.

The loader carries uint8 pixels (four times less to copy to a GPU); the device turns
them into floats, augments, and applies the model's normalisation.

Test-time views act on whole normalised batches on the device, so every view of a
batch goes through the model in one forward pass (one pass per output shape: see
:func:`view_groups`). Views are named strings: ``identity``, ``hflip``, ``vflip``,
``transpose``, ``shift(dx,dy)`` (pixels), ``zoom(s)`` (same size, centre crop or pad) and
``resize(s)`` (the whole image at ``s`` times the side: FixRes, Touvron et al. 2019).
Flips are not always safe (digits and text are not flip-invariant): choose the views per
competition.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

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

    name, params = _one_step(step, "augment")
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


def _one_step(step: dict[str, dict[str, Any]], key: str) -> tuple[str, dict[str, Any]]:
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

    def __init__(self, mean: Sequence[float], std: Sequence[float], augment: list | None = None, channels_last: bool = False):
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


# -- batched augmentation on the device ----------------------------------------------------

def _range(value: Any, name: str, fixed_is_symmetric: bool = False) -> tuple[float, float]:
    """A number or ``[low, high]`` as a range; ``fixed_is_symmetric``: a number ``v`` means ``[-v, v]``."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a number or [low, high], got {value!r}")
    if isinstance(value, (int, float)):
        value = float(value)
        return (-abs(value), abs(value)) if fixed_is_symmetric else (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        low, high = float(value[0]), float(value[1])
        if low > high:
            raise ValueError(f"{name} must be [low, high] with low <= high, got {list(value)}")
        return low, high
    raise ValueError(f"{name} must be a number or [low, high], got {value!r}")


def _xy_ranges(value: Any, name: str, default: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """albumentations' per-axis argument: a number, ``[low, high]`` (both axes) or ``{x: ..., y: ...}``."""
    if isinstance(value, dict):
        unknown = set(value) - {"x", "y"}
        if unknown or not value:
            raise ValueError(f"{name} as a mapping takes the keys x and/or y, got {sorted(value) or '{}'}")
        return _range(value.get("x", default), f"{name}.x"), _range(value.get("y", default), f"{name}.y")
    both = _range(value, name)
    return both, both


def _probability(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    return float(p)


def _uniform(bounds: tuple[float, float], n: int, device: torch.device) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, device=device)


def _chosen(p: float, n: int, device: torch.device) -> torch.Tensor:
    """Which of ``n`` images a step with probability ``p`` applies to (a bool tensor on the device)."""
    return torch.rand(n, device=device) < p


# cv2 flags as albumentations takes them -> grid_sample's names
_GRID_INTERPOLATION = {cv2.INTER_NEAREST: "nearest", cv2.INTER_LINEAR: "bilinear", cv2.INTER_CUBIC: "bicubic"}
_GRID_PADDING = {cv2.BORDER_CONSTANT: "zeros", cv2.BORDER_REPLICATE: "border", cv2.BORDER_REFLECT: "reflection",
                 cv2.BORDER_REFLECT_101: "reflection"}


def affine_theta(scale_x: torch.Tensor, scale_y: torch.Tensor, angle: torch.Tensor, shear_x: torch.Tensor,
                 shear_y: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-image ``(2, 3)`` matrices as ``F.affine_grid`` takes them (output -> input, normalised coordinates).

    The forward map is in pixels about the image centre, composed as albumentations does:
    shear @ rotate @ scale, then the shift. ``angle`` is in radians, ``shear_x``/``shear_y``
    are shear factors (tangents), shifts are pixels; every argument is one value per image.
    """
    n = angle.shape[0]
    cos, sin = torch.cos(angle), torch.sin(angle)
    a, b = (cos - shear_x * sin) * scale_x, (sin + shear_x * cos) * scale_y
    c, d = (shear_y * cos - sin) * scale_x, (shear_y * sin + cos) * scale_y
    # grid_sample wants the inverse, in coordinates normalised to [-1, 1] (x by width/2, y by height/2)
    det = a * d - b * c
    inv_a, inv_b, inv_c, inv_d = d / det, -b / det, -c / det, a / det
    half_w, half_h = width / 2.0, height / 2.0
    theta = torch.stack([inv_a, inv_b * half_h / half_w, -(inv_a * shift_x + inv_b * shift_y) / half_w,
                         inv_c * half_w / half_h, inv_d, -(inv_c * shift_x + inv_d * shift_y) / half_h], dim=1)
    return theta.view(n, 2, 3)


def sampling_grid(theta: torch.Tensor, height: int, width: int, cache: dict) -> torch.Tensor:
    """``F.affine_grid``'s result (align_corners=False) by broadcasting: a bmm with an inner size of 3 is slower.

    ``cache`` keeps the pixel coordinates per (height, width, device) between batches.
    """
    key = (height, width, theta.device)
    if key not in cache:
        xs = (torch.arange(width, dtype=torch.float32, device=theta.device) * 2 + 1) / width - 1
        ys = (torch.arange(height, dtype=torch.float32, device=theta.device) * 2 + 1) / height - 1
        cache[key] = (xs.view(1, 1, width), ys.view(1, height, 1))
    xs, ys = cache[key]
    t = theta.reshape(-1, 6, 1, 1)
    return torch.stack([t[:, 0] * xs + t[:, 1] * ys + t[:, 2], t[:, 3] * xs + t[:, 4] * ys + t[:, 5]], dim=-1)


def warp(x: torch.Tensor, grid: torch.Tensor, mode: str, padding: str, fill: float) -> torch.Tensor:
    """``F.grid_sample`` of a batch; with zeros padding, pixels from outside the image get ``fill`` (0-1)."""
    if padding == "zeros" and fill:
        # sample a channel of ones alongside: where it falls below 1 the pixel came from outside the image
        ones = torch.ones_like(x[:, :1])
        warped = F.grid_sample(torch.cat([x, ones], dim=1), grid, mode=mode, padding_mode="zeros", align_corners=False)
        return warped[:, :-1] + (1 - warped[:, -1:]) * fill
    return F.grid_sample(x, grid, mode=mode, padding_mode=padding, align_corners=False)


class Affine:
    """Random scale, translation, rotation and shear, one matrix per image, one ``grid_sample`` per batch.

    The parameters and their meaning are albumentations' ``Affine``: ``scale`` (a number,
    ``[low, high]`` or ``{x, y}``; with ``keep_ratio`` one factor for both axes),
    ``translate_percent`` or ``translate_px`` (per axis), ``rotate`` (degrees), ``shear``
    (degrees, per axis), ``interpolation`` (cv2 flag: nearest, linear, cubic),
    ``border_mode`` (cv2 flag: constant, replicate, reflect), ``fill`` (0-255) and ``p``.
    The image is transformed about its centre, as albumentations does; the translation is
    not rounded to whole pixels.
    """

    def __init__(self, scale: Any = 1.0, translate_percent: Any = None, translate_px: Any = None, rotate: Any = 0.0,
                 shear: Any = 0.0, keep_ratio: bool = False, interpolation: int = cv2.INTER_LINEAR,
                 border_mode: int = cv2.BORDER_CONSTANT, fill: float = 0.0, p: float = 0.5):
        if translate_percent is not None and translate_px is not None:
            raise ValueError("give translate_percent or translate_px, not both")
        self.scale = _xy_ranges(scale, "scale", 1.0)
        if keep_ratio and self.scale[0] != self.scale[1]:
            raise ValueError(f"keep_ratio needs the same scale range for x and y, got {scale!r}")
        self.keep_ratio = bool(keep_ratio)
        self.translate_percent = _xy_ranges(translate_percent if translate_percent is not None else 0.0, "translate_percent", 0.0)
        self.translate_px = _xy_ranges(translate_px if translate_px is not None else 0.0, "translate_px", 0.0)
        self.rotate = _range(rotate, "rotate")
        self.shear = _xy_ranges(shear, "shear", 0.0)
        if interpolation not in _GRID_INTERPOLATION:
            raise ValueError(f"interpolation must be a cv2 flag among {sorted(_GRID_INTERPOLATION)} "
                             f"(nearest, linear, cubic), got {interpolation!r}")
        if border_mode not in _GRID_PADDING:
            raise ValueError(f"border_mode must be a cv2 flag among {sorted(_GRID_PADDING)} "
                             f"(constant, replicate, reflect, reflect_101), got {border_mode!r}")
        if isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise ValueError(f"fill must be one number (0-255, every channel), got {fill!r}")
        self.mode = _GRID_INTERPOLATION[interpolation]
        self.padding = _GRID_PADDING[border_mode]
        self.fill = float(fill) / 255.0
        self.p = _probability(p)
        self._bounds_on: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._pixels_on: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _bounds(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # every range as one row of lows and one of spans, so a batch's parameters are one torch.rand call
        if device not in self._bounds_on:
            ranges = [*self.scale, self.rotate, *self.shear, *self.translate_percent, *self.translate_px]
            low = torch.tensor([r[0] for r in ranges], dtype=torch.float32)
            span = torch.tensor([r[1] - r[0] for r in ranges], dtype=torch.float32)
            self._bounds_on[device] = (low.to(device), span.to(device))
        return self._bounds_on[device]

    def matrices(self, n: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """``n`` random ``(2, 3)`` matrices, as ``F.affine_grid`` takes them: output coordinates -> input coordinates."""
        low, span = self._bounds(device)
        draw = low + span * torch.rand(n, len(low), device=device)
        scale_x, scale_y, angle, shear_x, shear_y, percent_x, percent_y, px_x, px_y = draw.unbind(dim=1)
        if self.keep_ratio:
            scale_y = scale_x
        angle = torch.deg2rad(angle)
        shear_x, shear_y = torch.tan(torch.deg2rad(-shear_x)), torch.tan(torch.deg2rad(-shear_y))
        shift_x, shift_y = percent_x * width + px_x, percent_y * height + px_y
        return affine_theta(scale_x, scale_y, angle, shear_x, shear_y, shift_x, shift_y, height, width)

    def _grid(self, theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return sampling_grid(theta, height, width, self._pixels_on)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        chosen = _chosen(self.p, n, x.device)
        grid = self._grid(self.matrices(n, height, width, x.device), height, width)
        warped = warp(x, grid, self.mode, self.padding, self.fill)
        # the images the step skips stay bit for bit what they were
        return torch.where(chosen.view(-1, 1, 1, 1), warped, x)


class HorizontalFlip:
    """Mirror left-right with probability ``p``."""

    axis = -1

    def __init__(self, p: float = 0.5):
        self.p = _probability(p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(_chosen(self.p, x.shape[0], x.device).view(-1, 1, 1, 1), x.flip(self.axis), x)


class VerticalFlip(HorizontalFlip):
    """Mirror top-bottom with probability ``p``."""

    axis = -2


class RandomBrightnessContrast:
    """albumentations' ``RandomBrightnessContrast``: ``x * (1 + c) + b``, ``c`` and ``b`` drawn per image.

    ``brightness_limit`` and ``contrast_limit`` are a number ``v`` (meaning ``[-v, v]``) or
    ``[low, high]``. ``b`` is a fraction of the largest pixel value, or of the image's mean
    with ``brightness_by_max: false``. The result is clipped to [0, 1], as uint8 pixels are.
    """

    def __init__(self, brightness_limit: Any = (-0.2, 0.2), contrast_limit: Any = (-0.2, 0.2), brightness_by_max: bool = True,
                 p: float = 0.5):
        self.brightness = _range(brightness_limit, "brightness_limit", fixed_is_symmetric=True)
        self.contrast = _range(contrast_limit, "contrast_limit", fixed_is_symmetric=True)
        self.by_max = bool(brightness_by_max)
        self.p = _probability(p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, device = x.shape[0], x.device
        chosen = _chosen(self.p, n, device)
        alpha = torch.where(chosen, 1 + _uniform(self.contrast, n, device), torch.ones(n, device=device))
        beta = torch.where(chosen, _uniform(self.brightness, n, device), torch.zeros(n, device=device)).view(-1, 1, 1, 1)
        if not self.by_max:
            beta = beta * x.mean(dim=(1, 2, 3), keepdim=True)
        return (x * alpha.view(-1, 1, 1, 1) + beta).clamp_(0, 1)


class CoarseDropout:
    """albumentations' ``CoarseDropout``: up to ``num_holes_range[1]`` rectangles per image filled with ``fill``.

    Hole sides are fractions of the image side when given as floats in (0, 1], pixels when
    given as integers; ``fill`` is one number (0-255).
    """

    def __init__(self, num_holes_range: Any = (1, 2), hole_height_range: Any = (0.1, 0.2),
                 hole_width_range: Any = (0.1, 0.2), fill: float = 0.0, p: float = 0.5):
        low, high = _range(num_holes_range, "num_holes_range")
        if low < 1 or low != int(low) or high != int(high):
            raise ValueError(f"num_holes_range must be whole numbers >= 1, got {num_holes_range!r}")
        self.holes = (int(low), int(high))
        self.height = self._side(hole_height_range, "hole_height_range")
        self.width = self._side(hole_width_range, "hole_width_range")
        if isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise ValueError(f"fill must be one number (0-255, every channel), got {fill!r}")
        self.fill = float(fill) / 255.0
        self.p = _probability(p)

    @staticmethod
    def _side(value: Any, name: str) -> tuple[tuple[float, float], bool]:
        low, high = _range(value, name)
        pixels = all(isinstance(v, int) for v in (value if isinstance(value, (list, tuple)) else [value]))
        if not (low >= 1 if pixels else 0 < low <= high <= 1):
            raise ValueError(f"{name} must be pixels (integers >= 1) or fractions in (0, 1], got {value!r}")
        return (low, high), not pixels

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        device = x.device
        most = self.holes[1]
        # every image draws `most` holes and keeps the first k of them, k drawn from num_holes_range
        kept = torch.randint(self.holes[0], most + 1, (n, 1), device=device) > torch.arange(most, device=device)
        kept &= _chosen(self.p, n, device).view(-1, 1)
        (h_range, h_fraction), (w_range, w_fraction) = self.height, self.width
        hole_h = (_uniform(h_range, n * most, device) * (height if h_fraction else 1)).round().clamp(1, height).view(n, most)
        hole_w = (_uniform(w_range, n * most, device) * (width if w_fraction else 1)).round().clamp(1, width).view(n, most)
        top = (torch.rand(n, most, device=device) * (height - hole_h + 1)).floor()
        left = (torch.rand(n, most, device=device) * (width - hole_w + 1)).floor()
        rows = torch.arange(height, device=device).view(1, 1, height, 1)
        cols = torch.arange(width, device=device).view(1, 1, 1, width)
        inside = ((rows >= top[..., None, None]) & (rows < (top + hole_h)[..., None, None])
                  & (cols >= left[..., None, None]) & (cols < (left + hole_w)[..., None, None]) & kept[..., None, None])
        hole = inside.any(dim=1, keepdim=True)
        return torch.where(hole, torch.full_like(x, self.fill), x)


# -- TrivialAugment and RandAugment on the device ----------------------------------------------
# An op's largest magnitude in each search space, as torchvision defines them (transforms/autoaugment.py):
# TrivialAugment's "wide" space (Mueller & Hutter 2021) and RandAugment's (Cubuk et al. 2019). Shear is a factor
# (the tangent), translation a fraction of the side (torchvision's 32 px are given for 224-px images; 150/331 of
# the side for RandAugment), rotation degrees, the four blends a factor 1 +- m, posterize the bits taken away,
# solarize 1 - threshold. Equalize (a per-image histogram) is left out.
OpSpace = tuple[bool, float, float]   # (signed, TrivialAugment's largest magnitude, RandAugment's)
AUGMENT_OPS: dict[str, OpSpace] = {
    "Identity": (False, 0.0, 0.0),
    "ShearX": (True, 0.99, 0.3),
    "ShearY": (True, 0.99, 0.3),
    "TranslateX": (True, 32 / 224, 150 / 331),
    "TranslateY": (True, 32 / 224, 150 / 331),
    "Rotate": (True, 135.0, 30.0),
    "Brightness": (True, 0.99, 0.9),
    "Color": (True, 0.99, 0.9),
    "Contrast": (True, 0.99, 0.9),
    "Sharpness": (True, 0.99, 0.9),
    "Posterize": (False, 6.0, 4.0),
    "Solarize": (False, 1.0, 1.0),
    "AutoContrast": (False, 0.0, 0.0),
}
_GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def _gray(x: torch.Tensor) -> torch.Tensor:
    # torchvision's rgb_to_grayscale weights; another channel count: the plain mean
    if x.shape[1] == 3:
        r, g, b = x.unbind(dim=1)
        return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)
    return x.mean(dim=1, keepdim=True)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    # factor * x + (1 - factor) * other, as torchvision's _blend: a factor of exactly 1 returns x bit for bit
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _blurred(x: torch.Tensor) -> torch.Tensor:
    # torchvision's sharpness reference: a 3x3 smoothing (centre weight 5 of 13), the border pixels kept
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(x.shape[1], 1, 3, 3)
    out = x.clone()
    out[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=x.shape[1])
    return out


def _posterize(x: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    # on the 0-255 scale: keep the top 8 - removed bits of each value; removed 0 is the identity
    step = torch.pow(2.0, removed.round()).view(-1, 1, 1, 1)
    out = torch.floor((x * 255).round() / step) * step / 255
    return torch.where(step > 1, out, x)


def _solarize(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    # pixels above the threshold 1 - amount are inverted; amount 0 (threshold 1) touches nothing
    return torch.where(x > (1 - amount).view(-1, 1, 1, 1), 1 - x, x)


def _autocontrast(x: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    low, high = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    flat = high <= low
    scale = torch.where(flat, torch.ones_like(high), 1 / (high - low).clamp_min(1e-12))
    return ((x - torch.where(flat, torch.zeros_like(low), low)) * scale).clamp_(0, 1)


# colour ops: (batch in [0, 1], signed magnitude per image) -> batch; Identity and the geometric ops are handled apart
_COLOUR_OPS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Brightness": lambda x, m: _blend(x, torch.zeros_like(x), 1 + m),
    "Color": lambda x, m: _blend(x, _gray(x), 1 + m),
    "Contrast": lambda x, m: _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), 1 + m),
    "Sharpness": lambda x, m: _blend(x, _blurred(x), 1 + m) if min(x.shape[-2:]) > 2 else x,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "AutoContrast": _autocontrast,
}


class _OpPolicy:
    """One op per image per layer from :data:`AUGMENT_OPS`, on a whole ``(N, C, H, W)`` batch in [0, 1].

    Each image draws its op (uniformly among ``ops``), a sign for the signed ops, and its
    magnitude (:meth:`levels`). The geometric ops of a layer become one matrix per image
    and one ``grid_sample`` for the batch; each colour op is a batched blend or mask
    applied where an image drew it. Every random number comes from torch's generator on
    the batch's device, as for the other steps, so a resumed run draws the same.
    """

    space = 1   # the column of AUGMENT_OPS's largest magnitudes this policy uses

    def __init__(self, ops: list[str] | None, fill: float, p: float):
        names = list(AUGMENT_OPS) if ops is None else ops
        if not isinstance(names, list) or not names or any(name not in AUGMENT_OPS for name in map(str, names)):
            raise ValueError(f"ops must be a non-empty list of op names among {', '.join(AUGMENT_OPS)}; got {ops!r}")
        if isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise ValueError(f"fill must be one number (0-255, every channel), got {fill!r}")
        self.ops = names
        self.fill = float(fill) / 255.0
        self.p = _probability(p)
        self._largest = torch.tensor([AUGMENT_OPS[name][self.space] for name in names], dtype=torch.float32)
        self._signed = torch.tensor([AUGMENT_OPS[name][0] for name in names])
        self._geometric = torch.tensor([name in _GEOMETRIC for name in names])
        self._on: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._pixels_on: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def levels(self, n: int, device: torch.device) -> torch.Tensor:
        """Each image's magnitude as a fraction of its op's largest, ``(n,)`` in [0, 1]."""
        raise NotImplementedError

    def layers(self) -> int:
        return 1

    def _tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # per op: largest magnitude, signed, geometric; copied to a device once
        if device not in self._on:
            self._on[device] = (self._largest.to(device), self._signed.to(device), self._geometric.to(device))
        return self._on[device]

    def layer(self, x: torch.Tensor) -> torch.Tensor:
        """One op per image: ``x`` with each image changed by the op it drew."""
        n, _, height, width = x.shape
        device = x.device
        largest, signed, is_geometric = self._tables(device)
        op = torch.randint(len(self.ops), (n,), device=device)
        sign = torch.where(signed[op] & (torch.rand(n, device=device) < 0.5), -1.0, 1.0)
        amount = self.levels(n, device) * largest[op] * sign
        out = x
        if any(name in _GEOMETRIC for name in self.ops):
            def where(name: str) -> torch.Tensor:
                # this op's amount where the image drew it, else 0 (no change on that axis)
                return amount * (op == self.ops.index(name)) if name in self.ops else torch.zeros_like(amount)

            one = torch.ones_like(amount)
            theta = affine_theta(one, one, torch.deg2rad(where("Rotate")), where("ShearX"), where("ShearY"),
                                 where("TranslateX") * width, where("TranslateY") * height, height, width)
            warped = warp(x, sampling_grid(theta, height, width, self._pixels_on), "bilinear", "zeros", self.fill)
            moved = is_geometric[op] & (amount != 0)   # magnitude 0 leaves the image bit for bit
            out = torch.where(moved.view(-1, 1, 1, 1), warped, out)
        for k, name in enumerate(self.ops):
            if name in _COLOUR_OPS:
                out = torch.where((op == k).view(-1, 1, 1, 1), _COLOUR_OPS[name](x, amount), out)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        chosen = _chosen(self.p, x.shape[0], x.device)
        out = x
        for _ in range(self.layers()):
            out = self.layer(out)
        # the images the step skips stay bit for bit what they were
        return torch.where(chosen.view(-1, 1, 1, 1), out, x)


class TrivialAugment(_OpPolicy):
    """TrivialAugment (Mueller & Hutter 2021) on the device: per image one op, its magnitude drawn uniformly.

    As torchvision's ``TrivialAugmentWide``: the "wide" magnitudes of :data:`AUGMENT_OPS`,
    the magnitude one of ``num_magnitude_bins`` evenly spaced levels from 0 to the op's
    largest (1 bin: magnitude 0). ``ops`` restricts the op list (default: all of them);
    ``fill`` (0-255) fills what a geometric op moves in; ``p`` the share of images augmented.
    """

    space = 1

    def __init__(self, num_magnitude_bins: int = 31, ops: list[str] | None = None, fill: float = 0.0, p: float = 1.0):
        if isinstance(num_magnitude_bins, bool) or not isinstance(num_magnitude_bins, int) or num_magnitude_bins < 1:
            raise ValueError(f"num_magnitude_bins must be a whole number >= 1, got {num_magnitude_bins!r}")
        super().__init__(ops, fill, p)
        self.bins = num_magnitude_bins

    def levels(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randint(self.bins, (n,), device=device).float() / max(self.bins - 1, 1)


class RandAugment(_OpPolicy):
    """RandAugment (Cubuk et al. 2019) on the device: ``num_ops`` ops in a row per image, all at ``magnitude``.

    As torchvision's ``RandAugment``: ``magnitude`` (0 to ``num_magnitude_bins - 1``, 9 of
    31 by default) picks the fraction ``magnitude / (num_magnitude_bins - 1)`` of each op's
    largest magnitude in :data:`AUGMENT_OPS`; each op is drawn per image and per layer.
    ``ops``, ``fill`` and ``p`` as for :class:`TrivialAugment`.
    """

    space = 2

    def __init__(self, num_ops: int = 2, magnitude: int = 9, num_magnitude_bins: int = 31, ops: list[str] | None = None,
                 fill: float = 0.0, p: float = 1.0):
        for name, value, low in (("num_ops", num_ops, 1), ("num_magnitude_bins", num_magnitude_bins, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
        if isinstance(magnitude, bool) or not isinstance(magnitude, (int, float)) or not 0 <= magnitude <= num_magnitude_bins - 1:
            raise ValueError(f"magnitude must be a number from 0 to num_magnitude_bins - 1 ({num_magnitude_bins - 1}), "
                             f"got {magnitude!r}")
        super().__init__(ops, fill, p)
        self.num_ops = num_ops
        self.level = float(magnitude) / (num_magnitude_bins - 1)

    def layers(self) -> int:
        return self.num_ops

    def levels(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.full((n,), self.level, device=device)


DEVICE_AUGMENTS: dict[str, type] = {cls.__name__: cls for cls in (Affine, HorizontalFlip, VerticalFlip,
                                                                  RandomBrightnessContrast, CoarseDropout,
                                                                  TrivialAugment, RandAugment)}

# Named augmentation policies (train.augment_policy): device steps run before the config's own device_augment.
# The flips suit photographs, not digits or text: the *_noflip policies leave orientation alone.
AUGMENT_POLICIES: dict[str, list[dict[str, dict[str, Any]]]] = {
    "none": [],
    "flip": [{"HorizontalFlip": {"p": 0.5}}],
    "light": [{"HorizontalFlip": {"p": 0.5}},
              {"Affine": {"scale": [0.9, 1.1], "translate_percent": [-0.0625, 0.0625], "rotate": [-15, 15], "p": 0.5}},
              {"RandomBrightnessContrast": {"p": 0.5}}],
    "trivial": [{"HorizontalFlip": {"p": 0.5}}, {"TrivialAugment": {}}],
    "trivial_noflip": [{"TrivialAugment": {}}],
    "randaugment": [{"HorizontalFlip": {"p": 0.5}}, {"RandAugment": {"num_ops": 2, "magnitude": 9}}],
    "randaugment_noflip": [{"RandAugment": {"num_ops": 2, "magnitude": 9}}],
}


def augment_policy_steps(name: str) -> list[dict[str, dict[str, Any]]]:
    """The device steps of a named policy of :data:`AUGMENT_POLICIES` (a copy).

    Raises
    ------
    ValueError
        For an unknown name, listing the known ones.
    """
    if name not in AUGMENT_POLICIES:
        raise ValueError(f"unknown augment_policy {name!r}; known policies: {', '.join(AUGMENT_POLICIES)}")
    return [{step: dict(params) for step, params in entry.items()} for entry in AUGMENT_POLICIES[name]]


def build_device_augment_step(step: dict[str, dict[str, Any]]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Instantiate one ``{Name: params}`` step of :data:`DEVICE_AUGMENTS`.

    Raises
    ------
    ValueError
        For an unknown step (naming the known ones) or a parameter it does not take or rejects.
    """
    name, params = _one_step(step, "device_augment")
    cls = DEVICE_AUGMENTS.get(name)
    if cls is None:
        import albumentations as A  # only on this error path, for the hint

        hint = " (an albumentations transform: put it under train.augment)" if isinstance(getattr(A, name, None), type) else ""
        raise ValueError(f"unknown device_augment step {name!r}{hint}; known steps: {', '.join(DEVICE_AUGMENTS)}")
    accepted = [p for p in inspect.signature(cls).parameters]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"device_augment step {name} does not take {', '.join(unknown)}; it takes {', '.join(accepted)}")
    try:
        return cls(**params)
    except ValueError as exc:
        raise ValueError(f"bad parameters for device_augment step {name}: {exc}") from None


def check_device_augment_steps(steps: list[dict[str, dict[str, Any]]]) -> None:
    for step in steps:
        build_device_augment_step(step)


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


def _resize(scale: float = 1.15) -> Callable[[torch.Tensor], torch.Tensor]:
    # FixRes (Touvron et al. 2019): random-crop training shows objects larger than a plain test resize does,
    # so the whole image at a larger side matches the object sizes the model learned; the output is larger
    if not scale > 0:
        raise ValueError(f"resize needs a positive factor, got {scale}")

    def view(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        if size == (h, w):
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)

    return view


TTA_VIEWS: dict[str, Callable[..., Callable[[torch.Tensor], torch.Tensor]]] = {
    "identity": lambda: (lambda x: x),
    "hflip": lambda: (lambda x: x.flip(-1)),
    "vflip": lambda: (lambda x: x.flip(-2)),
    "transpose": lambda: (lambda x: x.transpose(-1, -2)),
    "shift": _shift,
    "zoom": _zoom,
    "resize": _resize,
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
        raise ValueError(f"unknown TTA view {spec!r}; known views: {', '.join(TTA_VIEWS)} (e.g. 'shift(2,0)', 'zoom(1.1)', 'resize(1.15)')")
    name, raw_args = match.groups()
    try:
        args = [float(a) for a in raw_args.split(",")] if raw_args and raw_args.strip() else []
        return TTA_VIEWS[name](*args)
    except (TypeError, ValueError):
        raise ValueError(f"bad arguments in TTA view {spec!r}") from None


def apply_views(x: torch.Tensor, views: list[Callable[[torch.Tensor], torch.Tensor]]) -> torch.Tensor:
    """Stack all views of a batch: ``(N, C, H, W)`` -> ``(V * N, C, H, W)``, view-major.

    The views must give one output shape (:func:`view_groups` sorts them into such groups).
    """
    return torch.cat([view(x) for view in views], dim=0)


def view_shapes(views: list[Callable[[torch.Tensor], torch.Tensor]], height: int, width: int) -> list[tuple[int, int]]:
    """The ``(height, width)`` each view makes of a ``height x width`` batch (run on a one-pixel-deep zero image)."""
    probe = torch.zeros(1, 1, height, width)
    return [tuple(view(probe).shape[-2:]) for view in views]


def view_groups(views: list[Callable[[torch.Tensor], torch.Tensor]], height: int, width: int) -> list[list[int]]:
    """The indices of ``views`` grouped by output shape, in order of first appearance.

    A group's views can share one forward pass (:func:`apply_views`); views of the same
    shape as the input (every view but ``resize``) make one group, in their given order.
    """
    groups: dict[tuple[int, int], list[int]] = {}
    for k, shape in enumerate(view_shapes(views, height, width)):
        groups.setdefault(shape, []).append(k)
    return list(groups.values())
