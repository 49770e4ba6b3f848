"""Fault injection: `make train` killed with SIGKILL at many points, then rerun, ends bit-identical to an
uninterrupted run (CPU), and a damaged training state falls back to the one before it."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "fault_runner.py"
RUN_FILES = ("oof.parquet", "oof_plain.parquet", "test.parquet")
FOLD_FILES = ("valid.parquet", "valid_plain.parquet", "test.parquet")


def _train(config: Path, fault: str, kill_after_start: float | None = None) -> tuple[int, str]:
    """Run `pipeline train` in a child process with a fault; optionally SIGKILL it a while after training starts."""
    command = [sys.executable, str(RUNNER), fault, "train", "--config", str(config), "--model", "digits_resnet"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    child = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    started = threading.Event()

    def read():
        for line in child.stdout:
            lines.append(line)
            # the run's start line names the device it trains on, whichever that is ("on cpu", "on cuda:0")
            if re.match(r"digits_resnet: \S+ on \S+", line):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if kill_after_start is not None:
        # an earlier random kill can land after the run finished (while the process exits, which a loaded machine
        # makes slow): then this run prints "already finished" and exits 0 without a start line, nothing to kill
        deadline = time.monotonic() + 120
        while not started.wait(timeout=0.1) and child.poll() is None:
            assert time.monotonic() < deadline, f"the training never printed its start line:\n{''.join(lines)}"
        if started.is_set():
            time.sleep(kill_after_start)
            child.kill()  # SIGKILL, from outside, at whatever the child was doing
    code = child.wait(timeout=300)
    reader.join(timeout=10)
    return code, "".join(lines)


def test_sigkill_at_many_points_then_resume_matches_an_uninterrupted_run(
    small_competition, write_config, tmp_path, capsys
):
    changes = {"train": {"epochs": 3, "batch_size": 8}}
    straight = write_config(small_competition, {**changes, "output_dir": str(tmp_path / "straight")}, name="a.yaml")
    faulty = write_config(small_competition, {**changes, "output_dir": str(tmp_path / "faulty")}, name="b.yaml")
    assert main(["train", "--config", str(straight), "--model", "digits_resnet"]) == 0
    capsys.readouterr()
    run_dir = tmp_path / "faulty" / "runs" / "digits" / "digits_resnet"
    killed = -9

    log = []
    # 3 folds x 3 epochs x 5 steps; each run resumes from what the kill before it left
    for fault in (
        "step:3",  # mid-epoch, before any state exists
        "after-state:2",  # between epochs: fold 0 has states after epochs 1 and 2
        "damage last.pt",  # a damaged state on disk: detected, the one before it is used
        "mid-write:last.pt:1",  # the training state half written, the previous one renamed aside
        "mid-write:best.safetensors:2",  # the best checkpoint half written
        "step:12",
    ):  # mid-epoch again, in a later fold
        if fault == "damage last.pt":
            state = run_dir / "fold0" / "last.pt"
            assert (run_dir / "fold0" / "last.prev.pt").is_file()
            state.write_bytes(state.read_bytes()[:1000])
            code, out = _train(faulty, "after-state:1")
            assert "last.pt cannot be loaded safely" in out, out
            assert "resuming from the previous training state last.prev.pt (after epoch 1)" in out, out
            assert "last.pt cannot be loaded safely" in (run_dir / "fold0" / "train.log").read_text()
            assert "resuming after epoch 1/3" in out
        else:
            code, out = _train(faulty, fault)
        assert code == killed, f"{fault} did not kill the run:\n{out}"
        log.append((fault, out))

    # kill -9 from outside at random moments of training
    rng = random.Random(0)
    for _ in range(2):
        code, out = _train(faulty, "none", kill_after_start=rng.uniform(1.0, 4.0))
        log.append(("random SIGKILL", out))
        if code == 0:
            break  # the run finished before the kill landed

    code, out = _train(faulty, "none")
    assert code == 0, out
    log.append(("final", out))
    everything = "".join(out for _, out in log)
    assert "resuming after epoch" in everything and "done before, skipped" in everything

    for name in RUN_FILES:
        a = pd.read_parquet(tmp_path / "straight" / "runs" / "digits" / "digits_resnet" / name)
        b = pd.read_parquet(run_dir / name)
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    for fold_dir in sorted(run_dir.glob("fold*")):
        for name in FOLD_FILES:
            a = pd.read_parquet(tmp_path / "straight" / "runs" / "digits" / "digits_resnet" / fold_dir.name / name)
            pd.testing.assert_frame_equal(a, pd.read_parquet(fold_dir / name), check_exact=True)
    # nothing half-written is left behind as a finished file, and resume states are gone once folds finish
    assert not list(run_dir.rglob("last*.pt")) and not list(run_dir.rglob("*.tmp"))
    print("\n".join(f"{fault}: {out.strip().splitlines()[-1] if out.strip() else ''}" for fault, out in log))


def _run(fault: str, *args: str) -> tuple[int, str]:
    """``python -m pipeline <args>`` in a child process with a fault installed."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, str(RUNNER), fault, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stdout + done.stderr


def test_a_training_state_that_cannot_be_loaded_is_reported_and_the_fold_restarts(
    small_competition, write_config, tmp_path, capsys
):
    config = write_config(small_competition, {"train": {"epochs": 2, "batch_size": 8}})
    code, out = _run("after-state:1", "train", "--config", str(config), "--model", "digits_resnet")
    assert code == -9, out
    fold_dir = tmp_path / "out" / "runs" / "digits" / "digits_resnet" / "fold0"
    (fold_dir / "last.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--config", str(config), "--model", "digits_resnet", "--folds", "0"]) == 0
    out = capsys.readouterr().out
    assert re.search(
        r"training state .*fold0/last\.pt cannot be loaded safely \(\w+Error: .*\); kept as "
        r"last\.pt\.damaged",
        out,
    ), out
    assert "no usable training state" in out and "restarts from epoch 1" in out
    assert (fold_dir / "last.pt.damaged").read_bytes() == b"not a checkpoint"
    log = (fold_dir / "train.log").read_text()
    assert "cannot be loaded safely" in log and "restarts from epoch 1" in log and "epoch 2/2" in log


@pytest.mark.parametrize(
    "fault", ["after-write:submission.csv:1", "mid-write:leaderboard.csv:1", "after-write:.written.json:2"]
)
def test_an_ensemble_killed_while_writing_reruns_cleanly(small_config, tmp_path, capsys, fault):
    assert main(["train", "--config", str(small_config), "--model", "digits_resnet"]) == 0
    code, out = _run(fault, "ensemble", "--config", str(small_config))
    assert code == -9, out
    assert main(["ensemble", "--config", str(small_config)]) == 0, capsys.readouterr().err
    folder = tmp_path / "out" / "submissions" / "digits"
    assert (folder / "submission.csv").is_file() and (folder / "leaderboard.csv").is_file()
    assert not list(folder.glob(".*.tmp"))
