"""TrivialAugment and RandAugment on the device (one op per image per layer: geometric ops in one warp, colour ops as
batched blends and masks) and the named policies of ``train.augment_policy``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

from pipeline.vision.kernels import affine_theta, chosen_rows, probability, sampling_grid, warp

# -- TrivialAugment and RandAugment on the device ----------------------------------------------
# An op's largest magnitude in each search space, as torchvision defines them (transforms/autoaugment.py):
# TrivialAugment's "wide" space (Mueller & Hutter 2021) and RandAugment's (Cubuk et al. 2019). Shear is a factor
# (the tangent), translation a fraction of the side (torchvision's 32 px are given for 224-px images; 150/331 of
# the side for RandAugment), rotation degrees, the four blends a factor 1 +- m, posterize the bits taken away,
# solarize 1 - threshold. Equalize (a per-image histogram) is left out.
OpSpace = tuple[bool, float, float]  # (signed, TrivialAugment's largest magnitude, RandAugment's)
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

    space = 1  # the column of AUGMENT_OPS's largest magnitudes this policy uses

    def __init__(self, ops: list[str] | None, fill: float, p: float):
        names = list(AUGMENT_OPS) if ops is None else ops
        if not isinstance(names, list) or not names or any(name not in AUGMENT_OPS for name in map(str, names)):
            raise ValueError(f"ops must be a non-empty list of op names among {', '.join(AUGMENT_OPS)}; got {ops!r}")
        if isinstance(fill, bool) or not isinstance(fill, (int, float)):
            raise ValueError(f"fill must be one number (0-255, every channel), got {fill!r}")
        self.ops = names
        self.fill = float(fill) / 255.0
        self.p = probability(p)
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
            theta = affine_theta(
                one,
                one,
                torch.deg2rad(where("Rotate")),
                where("ShearX"),
                where("ShearY"),
                where("TranslateX") * width,
                where("TranslateY") * height,
                height,
                width,
            )
            warped = warp(x, sampling_grid(theta, height, width, self._pixels_on), "bilinear", "zeros", self.fill)
            moved = is_geometric[op] & (amount != 0)  # magnitude 0 leaves the image bit for bit
            out = torch.where(moved.view(-1, 1, 1, 1), warped, out)
        for k, name in enumerate(self.ops):
            if name in _COLOUR_OPS:
                out = torch.where((op == k).view(-1, 1, 1, 1), _COLOUR_OPS[name](x, amount), out)
        return out

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        chosen = chosen_rows(self.p, x.shape[0], x.device)
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

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        num_magnitude_bins: int = 31,
        ops: list[str] | None = None,
        fill: float = 0.0,
        p: float = 1.0,
    ):
        for name, value, low in (("num_ops", num_ops, 1), ("num_magnitude_bins", num_magnitude_bins, 2)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
        if (
            isinstance(magnitude, bool)
            or not isinstance(magnitude, (int, float))
            or not 0 <= magnitude <= num_magnitude_bins - 1
        ):
            raise ValueError(
                f"magnitude must be a number from 0 to num_magnitude_bins - 1 ({num_magnitude_bins - 1}), "
                f"got {magnitude!r}"
            )
        super().__init__(ops, fill, p)
        self.num_ops = num_ops
        self.level = float(magnitude) / (num_magnitude_bins - 1)

    def layers(self) -> int:
        return self.num_ops

    def levels(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.full((n,), self.level, device=device)


# Named augmentation policies (train.augment_policy): device steps run before the config's own device_augment.
# The flips suit photographs, not digits or text: the *_noflip policies leave orientation alone.
AUGMENT_POLICIES: dict[str, list[dict[str, dict[str, Any]]]] = {
    "none": [],
    "flip": [{"HorizontalFlip": {"p": 0.5}}],
    "light": [
        {"HorizontalFlip": {"p": 0.5}},
        {"Affine": {"scale": [0.9, 1.1], "translate_percent": [-0.0625, 0.0625], "rotate": [-15, 15], "p": 0.5}},
        {"RandomBrightnessContrast": {"p": 0.5}},
    ],
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
