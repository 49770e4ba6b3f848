"""Atomic file writes: a reader never sees a half-written file.

Every file the pipeline writes goes to a temporary name in the same folder and is
renamed into place (``os.replace`` is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd

from pipeline.core.errors import PipelineError

# one path component: no separator, no leading dot (so neither '..' nor a hidden file), nothing a shell quotes
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class UnsafeNameError(PipelineError, ValueError):
    """A name that becomes a file or folder name is not one plain path component."""


def safe_name(value: str, what: str, fix: str = "") -> str:
    """Return ``value`` if it can name a file or folder inside ours, else raise.

    Run names, competition names and imported run names become folder names; a name
    such as ``../x`` or ``/tmp/x`` would write outside the store.

    Parameters
    ----------
    value : str
        The name.
    what : str
        How the user spelled the setting, for the message (``MODEL``, ``NAME``).
    fix : str, optional
        A hint appended to the message.

    Raises
    ------
    UnsafeNameError
        Unless ``value`` is 1-128 letters, digits, ``.``, ``_`` or ``-``, starting with a letter or digit.
    """
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
        raise UnsafeNameError(f"{what}={value!r} must be one name of letters, digits, '.', '_' and '-' "
                              f"(it names a folder), not a path{'; ' + fix if fix else ''}")
    return value


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes files readable by their owner only; finished outputs get the usual permissions
_FILE_MODE = 0o666 & ~_current_umask()


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary file is removed if the block raises, so a crash leaves the old
    file (or nothing) in place, never a partial one. ``suffix`` ends the temporary
    name (a reader that goes by the file's type can then open it before the rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_with(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    return write_with(path, lambda tmp: tmp.write_text(text))


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    return write_with(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_parquet(path: str | Path, frame: pd.DataFrame) -> Path:
    return write_with(path, lambda tmp: frame.to_parquet(tmp, index=False))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(value: Any) -> Any:
    # NumPy scalars and paths appear in metadata; JSON has no type for them.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """The sha256 of a file, read in chunks (checkpoints can be large)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
