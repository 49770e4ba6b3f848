"""Test-time views: named strings that act on whole normalised batches on the device.

Every view of a batch goes through the model in one forward pass (one pass per output shape: see
:func:`view_groups`). Views: ``identity``, ``hflip``, ``vflip``, ``transpose``, ``shift(dx,dy)`` (pixels),
``zoom(s)`` (same size, centre crop or pad) and ``resize(s)`` (the whole image at ``s`` times the side: FixRes,
Touvron et al. 2019). Flips are not always safe (digits and text are not flip-invariant): choose the views per
competition.
"""

from __future__ import annotations

import math
import re
from typing import Callable

import torch
import torch.nn.functional as F

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

#: The largest ``resize(s)`` factor: the view's input grows by s^2 in memory.
MAX_RESIZE = 4.0

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
        raise ValueError(
            f"unknown TTA view {spec!r}; known views: {', '.join(TTA_VIEWS)} (e.g. 'shift(2,0)', 'zoom(1.1)', "
            "'resize(1.15)')"
        )
    name, raw_args = match.groups()
    try:
        args = [float(a) for a in raw_args.split(",")] if raw_args and raw_args.strip() else []
    except ValueError:
        raise ValueError(f"bad arguments in TTA view {spec!r}: numbers such as 'shift(2,0)'") from None
    # float() reads 'inf' and 'nan': a view sized by them would fail (or allocate without bound) at predict time
    if not all(math.isfinite(a) for a in args):
        raise ValueError(f"TTA view {spec!r}: its arguments must be finite numbers")
    if name == "resize" and args and not 0 < args[0] <= MAX_RESIZE:
        raise ValueError(f"TTA view {spec!r}: the resize factor must be above 0 and at most {MAX_RESIZE:g} "
                         "(FixRes uses about 1.15)")
    try:
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
