"""The run lock: one process trains a run at a time, and a lock left by a dead process is taken over."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from pipeline.store.layout import RunLayout, StoreError


class RunLock:
    """An exclusive lock on a run folder; a lock whose owner process died is taken over.

    Two processes training the same run would overwrite each other's checkpoints. The
    lock names its owner as ``host:pid``: on a folder shared by several machines, a lock
    held from another machine is never taken over (its process cannot be checked from
    here); the message names the machine and the file to delete if that job is gone.
    """

    def __init__(self, run_dir: Path, lock_path: Path | None = None):
        # lock_path: a finer lock inside the run, e.g. one fold's, for jobs that train folds of one run at once
        self.path = lock_path or RunLayout(run_dir).lock

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner[0] != _HOST:
                    raise StoreError(
                        f"{self.path.parent} is being trained by process {owner[1]} on machine {owner[0]}; "
                        f"wait for it, or delete {self.path} if that job is gone"
                    ) from None
                if owner is not None and _alive(owner[1]):
                    raise StoreError(
                        f"{self.path.parent} is being trained by process {owner[1]}; wait for it or stop it"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{_HOST}:{os.getpid()}")
            return self
        raise StoreError(f"could not lock {self.path}")

    def _owner(self) -> tuple[str, int] | None:
        """(machine, process id) of the holder; a lock written as a bare pid is from this machine."""
        try:
            host, _, pid = self.path.read_text().strip().rpartition(":")
            return host or _HOST, int(pid)
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


_HOST = platform.node() or "localhost"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
