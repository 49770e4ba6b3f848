"""Durations as users write them (``9h``, ``90m``, ``3600s``, ``3600``; a budget also ``50%``) and as we print them."""

from __future__ import annotations

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, what: str = "--time-limit") -> float:
    """Seconds in ``text``: a number with an optional unit, ``s``, ``m`` or ``h`` (``9h``, ``90m``, ``3600``).

    Parameters
    ----------
    text : str
    what : str
        The setting's name in the error (``--time-limit``, ``BUDGET``, ``export.budget``).

    Raises
    ------
    ValueError
        For anything else, or a duration that is not above zero.
    """
    value = str(text).strip().lower()
    unit = _UNITS.get(value[-1:], None)
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{what} {text!r}: give a duration above zero, e.g. 9h, 90m or 3600s")
    return seconds


def parse_budget(text, what: str = "BUDGET") -> tuple[float | None, float | None]:
    """``(seconds, None)`` for a duration (``2h``, ``90m``, ``3600s``, a number of seconds), ``(None, share)`` for a
    share of the whole ensemble's projected time (``50%`` -> 0.5).

    Raises
    ------
    ValueError
        Naming ``what`` and the forms it takes.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        text = f"{text}s"
    value = str(text).strip()
    if value.endswith("%"):
        try:
            share = float(value[:-1]) / 100
        except ValueError:
            share = float("nan")
        if not 0 < share <= 1:
            raise ValueError(f"{what} {text!r}: a share of the whole ensemble's time is above 0% and at most 100%")
        return None, share
    try:
        return parse_duration(value, what), None
    except ValueError as exc:
        raise ValueError(f"{exc}, or a share of the whole ensemble's time such as 50%") from None


def format_duration(seconds: float) -> str:
    """``3h 05m``, ``12m 30s``, ``45s`` or ``2.5s``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"
