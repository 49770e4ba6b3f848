"""Leaderboard tables for the terminal and for files."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def format_table(rows: list[dict[str, Any]], title: str | None = None) -> str:
    """A plain-text table with a header rule; columns are the union of the rows' keys in first-seen order."""
    if not rows:
        return f"{title}\n(empty)" if title else "(empty)"
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    cells = [[_cell(row.get(col)) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    numeric = [all(_is_number(row.get(col)) for row in rows) for col in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    out = [title] if title else []
    out += [line(columns), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    return "\n".join(out)


def _is_number(value: Any) -> bool:
    return value is None or isinstance(value, (int, float)) and not isinstance(value, bool)


def format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """A tqdm bar on a terminal; a silent one when stderr is not a terminal (a log file, CI) or ``enabled`` is False.

    A log file would otherwise receive every carriage-return update; the stages log one line
    per epoch or step instead when ``bar.disable`` is true.
    """
    import sys

    from tqdm.auto import tqdm

    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, disable=not (enabled and sys.stderr.isatty()), **kwargs)


def configure_logging(level: int | None = None) -> None:
    """Send the pipeline's log records (``logging.getLogger("pipeline....")``) to stdout as plain lines.

    Library modules log; the command line decides what is shown by calling this once. Calling
    it again replaces the handler instead of adding a second one.
    """
    import logging
    import sys

    class StdoutHandler(logging.Handler):
        # sys.stdout is looked up per record, so a replaced stdout (pytest's capture) receives it
        def emit(self, record: logging.LogRecord) -> None:
            sys.stdout.write(self.format(record) + "\n")
            sys.stdout.flush()

    logger = logging.getLogger("pipeline")
    for handler in list(logger.handlers):
        if getattr(handler, "pipeline_console", False):
            logger.removeHandler(handler)
    handler = StdoutHandler()
    handler.pipeline_console = True
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if level is None else level)
    logger.propagate = False


@contextlib.contextmanager
def log_to_file(path: Path, enabled: bool = True) -> Iterator[None]:
    """Also append the pipeline's log records to ``path`` while the block runs (a fold's ``train.log``).

    The file is a log: appended to, one line per record with its time, so a resumed fold's file
    tells its whole story, warnings about refused resume states included.
    """
    import logging

    if not enabled:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("pipeline")
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:  # a library caller that set up no logging still gets the file
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()
