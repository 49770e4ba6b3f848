"""Batched augmentation kernels on the device: each image of a batch with its own random parameters, one
``grid_sample`` per batch for the geometric steps. Parameters follow albumentations' names, so a step moves between
``train.augment`` and ``train.device_augment`` unchanged.
"""

from __future__ import annotations

from typing import Any

import cv2
import torch
import torch.nn.functional as F

# -- batched augmentation on the device ----------------------------------------------------


def param_range(value: Any, name: str, fixed_is_symmetric: bool = False) -> tuple[float, float]:
    """A number or ``[low, high]`` as a range; ``fixed_is_symmetric``: a number ``v`` means ``[-v, v]``."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{name} must be a number or [low, high], got {value!r}")
    if isinstance(value, (int, float)):
        value = float(value)
        return (-abs(value), abs(value)) if fixed_is_symmetric else (value, value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        low, high = float(value[0]), float(value[1])
        if low > high:
            raise ValueError(f"{name} must be [low, high] with low <= high, got {list(value)}")
        return low, high
    raise ValueError(f"{name} must be a number or [low, high], got {value!r}")


def xy_ranges(value: Any, name: str, default: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """albumentations' per-axis argument: a number, ``[low, high]`` (both axes) or ``{x: ..., y: ...}``."""
    if isinstance(value, dict):
        unknown = set(value) - {"x", "y"}
        if unknown or not value:
            raise ValueError(f"{name} as a mapping takes the keys x and/or y, got {sorted(value) or '{}'}")
        return param_range(value.get("x", default), f"{name}.x"), param_range(value.get("y", default), f"{name}.y")
    both = param_range(value, name)
    return both, both


def probability(p: Any) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    return float(p)


def uniform_draw(bounds: tuple[float, float], n: int, device: torch.device) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, device=device)


def chosen_rows(p: float, n: int, device: torch.device) -> torch.Tensor:
    """Which of ``n`` images a step with probability ``p`` applies to (a bool tensor on the device)."""
    return torch.rand(n, device=device) < p


# cv2 flags as albumentations takes them -> grid_sample's names
_GRID_INTERPOLATION = {cv2.INTER_NEAREST: "nearest", cv2.INTER_LINEAR: "bilinear", cv2.INTER_CUBIC: "bicubic"}
_GRID_PADDING = {
    cv2.BORDER_CONSTANT: "zeros",
    cv2.BORDER_REPLICATE: "border",
    cv2.BORDER_REFLECT: "reflection",
    cv2.BORDER_REFLECT_101: "reflection",
}


def affine_theta(
    scale_x: torch.Tensor,
    scale_y: torch.Tensor,
    angle: torch.Tensor,
    shear_x: torch.Tensor,
    shear_y: torch.Tensor,
    shift_x: torch.Tensor,
    shift_y: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
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
    theta = torch.stack(
        [
            inv_a,
            inv_b * half_h / half_w,
            -(inv_a * shift_x + inv_b * shift_y) / half_w,
            inv_c * half_w / half_h,
            inv_d,
            -(inv_c * shift_x + inv_d * shift_y) / half_h,
        ],
        dim=1,
    )
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

    def __init__(
        self,
        scale: Any = 1.0,
        translate_percent: Any = None,
        translate_px: Any = None,
        rotate: Any = 0.0,
        shear: Any = 0.0,
        keep_ratio: bool = False,
        interpolation: int = cv2.INTER_LINEAR,
        border_mode: int = cv2.BORDER_CONSTANT,
        fill: float = 0.0,
        p: float = 0.5,
    ):
        if translate_percent is not None and translate_px is not None:
            raise ValueError("give translate_percent or translate_px, not both")
        self.scale = xy_ranges(scale, "scale", 1.0)
        if keep_ratio and self.scale[0] != self.scale[1]:
            raise ValueError(f"keep_ratio needs the same scale range for x and y, got {scale!r}")
        self.keep_ratio = bool(keep_ratio)
        self.translate_percent = xy_ranges(
            translate_percent if translate_percent is not None else 0.0, "translate_percent", 0.0
        )
        self.translate_px = xy_ranges(translate_px if translate_px is not None else 0.0, "translate_px", 0.0)
        self.rotate = param_range(rotate, "rotate")
        self.shear = xy_ranges(shear, "shear", 0.0)
        if interpolation not in _GRID_INTERPOLATION:
            raise ValueError(
                f"interpolation must be a cv2 flag among {sorted(_GRID_INTERPOLATION)} "
                f"(nearest, linear, cubic), got {interpolation!r}"
            )
        if border_mode not in _GRID_PADDING:
            raise ValueError(
                f"border_mode must be a cv2 flag among {sorted(_GRID_PADDING)} "
                f"(constant, replicate, reflect, reflect_101), got {border_mode!r}"
            )
        if isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise ValueError(f"fill must be one number (0-255, every channel), got {fill!r}")
        self.mode = _GRID_INTERPOLATION[interpolation]
        self.padding = _GRID_PADDING[border_mode]
        self.fill = float(fill) / 255.0
        self.p = probability(p)
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
        """``n`` random ``(2, 3)`` matrices, as ``F.affine_grid`` takes them: output coordinates -> input coordinates.
        """
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
        chosen = chosen_rows(self.p, n, x.device)
        grid = self._grid(self.matrices(n, height, width, x.device), height, width)
        warped = warp(x, grid, self.mode, self.padding, self.fill)
        # the images the step skips stay bit for bit what they were
        return torch.where(chosen.view(-1, 1, 1, 1), warped, x)


class HorizontalFlip:
    """Mirror left-right with probability ``p``."""

    axis = -1

    def __init__(self, p: float = 0.5):
        self.p = probability(p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(chosen_rows(self.p, x.shape[0], x.device).view(-1, 1, 1, 1), x.flip(self.axis), x)


class VerticalFlip(HorizontalFlip):
    """Mirror top-bottom with probability ``p``."""

    axis = -2


class RandomBrightnessContrast:
    """albumentations' ``RandomBrightnessContrast``: ``x * (1 + c) + b``, ``c`` and ``b`` drawn per image.

    ``brightness_limit`` and ``contrast_limit`` are a number ``v`` (meaning ``[-v, v]``) or
    ``[low, high]``. ``b`` is a fraction of the largest pixel value, or of the image's mean
    with ``brightness_by_max: false``. The result is clipped to [0, 1], as uint8 pixels are.
    """

    def __init__(
        self,
        brightness_limit: Any = (-0.2, 0.2),
        contrast_limit: Any = (-0.2, 0.2),
        brightness_by_max: bool = True,
        p: float = 0.5,
    ):
        self.brightness = param_range(brightness_limit, "brightness_limit", fixed_is_symmetric=True)
        self.contrast = param_range(contrast_limit, "contrast_limit", fixed_is_symmetric=True)
        self.by_max = bool(brightness_by_max)
        self.p = probability(p)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, device = x.shape[0], x.device
        chosen = chosen_rows(self.p, n, device)
        alpha = torch.where(chosen, 1 + uniform_draw(self.contrast, n, device), torch.ones(n, device=device))
        beta = torch.where(chosen, uniform_draw(self.brightness, n, device), torch.zeros(n, device=device)).view(
            -1, 1, 1, 1
        )
        if not self.by_max:
            beta = beta * x.mean(dim=(1, 2, 3), keepdim=True)
        return (x * alpha.view(-1, 1, 1, 1) + beta).clamp_(0, 1)


class CoarseDropout:
    """albumentations' ``CoarseDropout``: up to ``num_holes_range[1]`` rectangles per image filled with ``fill``.

    Hole sides are fractions of the image side when given as floats in (0, 1], pixels when
    given as integers; ``fill`` is one number (0-255).
    """

    def __init__(
        self,
        num_holes_range: Any = (1, 2),
        hole_height_range: Any = (0.1, 0.2),
        hole_width_range: Any = (0.1, 0.2),
        fill: float = 0.0,
        p: float = 0.5,
    ):
        low, high = param_range(num_holes_range, "num_holes_range")
        if low < 1 or low != int(low) or high != int(high):
            raise ValueError(f"num_holes_range must be whole numbers >= 1, got {num_holes_range!r}")
        self.holes = (int(low), int(high))
        self.height = self._side(hole_height_range, "hole_height_range")
        self.width = self._side(hole_width_range, "hole_width_range")
        if isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise ValueError(f"fill must be one number (0-255, every channel), got {fill!r}")
        self.fill = float(fill) / 255.0
        self.p = probability(p)

    @staticmethod
    def _side(value: Any, name: str) -> tuple[tuple[float, float], bool]:
        low, high = param_range(value, name)
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
        kept &= chosen_rows(self.p, n, device).view(-1, 1)
        (h_range, h_fraction), (w_range, w_fraction) = self.height, self.width
        hole_h = (
            (uniform_draw(h_range, n * most, device) * (height if h_fraction else 1))
            .round()
            .clamp(1, height)
            .view(n, most)
        )
        hole_w = (
            (uniform_draw(w_range, n * most, device) * (width if w_fraction else 1))
            .round()
            .clamp(1, width)
            .view(n, most)
        )
        top = (torch.rand(n, most, device=device) * (height - hole_h + 1)).floor()
        left = (torch.rand(n, most, device=device) * (width - hole_w + 1)).floor()
        rows = torch.arange(height, device=device).view(1, 1, height, 1)
        cols = torch.arange(width, device=device).view(1, 1, 1, width)
        inside = (
            (rows >= top[..., None, None])
            & (rows < (top + hole_h)[..., None, None])
            & (cols >= left[..., None, None])
            & (cols < (left + hole_w)[..., None, None])
            & kept[..., None, None]
        )
        hole = inside.any(dim=1, keepdim=True)
        return torch.where(hole, torch.full_like(x, self.fill), x)
