"""Run ``python -m pipeline <args>`` in this process and kill it with SIGKILL at a chosen point.

Used by tests/test_faults.py as ``python tests/fault_runner.py <fault> <pipeline args...>``.
Faults (N counts from 1 within this process):

    none                  no fault
    step:N                SIGKILL right after the N-th optimizer step (mid-epoch)
    after-state:N         SIGKILL right after the N-th training state is saved (between epochs)
    mid-write:NAME:N      SIGKILL while the N-th write of file NAME is half done: the temporary
                          file holds half of the bytes and has not been renamed into place
    after-write:NAME:N    SIGKILL right after the N-th write of file NAME is renamed into place

SIGKILL cannot be caught or cleaned up after, exactly like ``kill -9`` or a preempted machine.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(fault: str) -> None:
    if fault == "none":
        return
    kind, _, rest = fault.partition(":")
    if kind == "step":
        from torch.optim.optimizer import register_optimizer_step_post_hook

        target, seen = int(rest), [0]

        def after_step(optimizer, args, kwargs):
            seen[0] += 1
            if seen[0] == target:
                _die()

        register_optimizer_step_post_hook(after_step)
    elif kind == "after-state":
        from pipeline.train import checkpoint

        target, seen, real_save = int(rest), [0], checkpoint.save_state

        def save_then_die(path, state):
            real_save(path, state)
            seen[0] += 1
            if seen[0] == target:
                _die()

        checkpoint.save_state = save_then_die
    elif kind == "mid-write":
        from pipeline.core import io

        name, _, count = rest.rpartition(":")
        target, seen, real_write_with = int(count), [0], io.write_with

        def half_write_then_die(path, writer):
            if Path(path).name == name:
                seen[0] += 1
                if seen[0] == target:
                    with io.atomic_path(path) as tmp:
                        writer(tmp)
                        data = tmp.read_bytes()
                        tmp.write_bytes(data[: len(data) // 2])
                        _die()
            return real_write_with(path, writer)

        io.write_with = half_write_then_die
    elif kind == "after-write":
        from pipeline.core import io

        name, _, count = rest.rpartition(":")
        target, seen, real_write_with = int(count), [0], io.write_with

        def write_then_die(path, writer):
            written = real_write_with(path, writer)
            if Path(path).name == name:
                seen[0] += 1
                if seen[0] == target:
                    _die()
            return written

        io.write_with = write_then_die
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    install(sys.argv[1])
    from pipeline.cli import main

    sys.exit(main(sys.argv[2:]))
