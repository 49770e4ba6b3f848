"""``train.optimizer`` checked against timm's optimizer registry (timm is imported only when a command trains)."""

from __future__ import annotations

import difflib


def check_optimizer(name: str) -> None:
    """Raise ValueError unless ``name`` is in timm's registry, or is ``lookahead_<name>`` of one that is.

    The message offers the closest registered names.
    """
    from timm.optim import get_optimizer_info, list_optimizers

    # timm's factory reads "lookahead_<name>" as <name> wrapped in Lookahead
    prefix, _, base = name.lower().rpartition("_")
    try:
        if prefix not in ("", "lookahead"):
            raise ValueError(name)
        get_optimizer_info(base)
    except ValueError:
        close = difflib.get_close_matches(name.lower(), list_optimizers(), n=4, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown optimizer {name!r}{hint} (timm.optim.list_optimizers() lists the "
                         "names; lookahead_<name> wraps one in Lookahead)") from None
