"""Values as trackers take them: flat parameters, finite metrics, safe names."""

from __future__ import annotations

import math
import re
import time


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.001}}`` -> ``{"train.lr": "0.001"}``; lists and other leaves as their text."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value)
    return out


def finite(values: dict) -> dict[str, float]:
    """The entries that are finite numbers (not booleans), as floats: what a metric can hold."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            out[str(key)] = float(value)
    return out


def safe_path(name: str) -> str:
    """A run name as a folder name: letters, digits, ``.-_`` and ``/`` (a sub-folder per fold)."""
    return re.sub(r"[^A-Za-z0-9._/-]+", "_", name).strip("/") or "run"


def now_ms() -> int:
    return int(time.time() * 1000)
