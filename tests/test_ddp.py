"""DistributedDataParallel under torchrun, on the CPU with gloo and 2 processes: every row predicted exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import build_small_competition

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.store import StoreError
from pipeline.task.metrics import get_metric
from pipeline.train.distributed import DistContext, gather_rows, shard
from pipeline.train.stage import on_main

ROOT = Path(__file__).resolve().parents[1]
CLASSES = [str(k) for k in range(10)]


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "pipeline",
        *args,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    context = DistContext(rank=rank, world_size=world, local_rank=rank, local_world_size=world)
    results = {}
    for n_rows in (7, 1):
        rows = shard(np.arange(n_rows), context)
        values = np.stack([rows * 10.0, rows * 10.0 + 1], axis=1)[None].repeat(2, axis=0)  # (views, rows, classes)
        results[f"rows{n_rows}"] = gather_rows(values, context, n_rows, axis=1)

    def only_rank_0_knows():
        raise StoreError("run x exists with other settings")

    try:
        on_main(context, only_rank_0_knows)
    except StoreError as exc:
        results["error"] = np.array(str(exc))
    results["value"] = np.array(on_main(context, lambda: rank + 41))  # rank 0's answer everywhere
    np.savez(f"{out}.{rank}.npz", **results)
    dist.destroy_process_group()


def test_shard_gather_and_decisions_of_rank_0_reach_every_rank(tmp_path):
    out = tmp_path / "result"
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, start_method="spawn")
    for rank in (0, 1):
        result = np.load(f"{out}.{rank}.npz")
        for n_rows in (7, 1):
            gathered = result[f"rows{n_rows}"]
            assert gathered.shape == (2, n_rows, 2)  # every row once: no padding, none missing
            np.testing.assert_array_equal(gathered[0, :, 0], np.arange(n_rows) * 10.0)  # row i holds row i's prediction
        assert str(result["error"]) == "run x exists with other settings"  # raised on rank 1 too: no rank waits forever
        assert int(result["value"]) == 41


@pytest.fixture()
def odd_competition(digits_dir, tmp_path):
    """60 training images in 4 folds of 15 (odd, so 2 ranks split them 8/7) and 21 test images."""
    return build_small_competition(digits_dir, tmp_path / "odd", n_train=60, n_test=21)


def test_torchrun_two_processes_train_and_predict_every_row_once(odd_competition, write_config, tmp_path):
    config_path = write_config(odd_competition, {"folds": {"n_splits": 4}})
    config = load_config(config_path)
    result = _torchrun("train", "--config", str(config_path), "--model", "digits_resnet")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-12000:]
    assert "on cpu x 2 processes" in result.stdout
    assert result.stdout.count("digits_resnet (test_resnet, accuracy) - finished") == 1  # rank 0 alone reports

    run_dir = config.runs_dir / "digits_resnet"
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["folds_done"] == [0, 1, 2, 3]
    assert {info["processes"] for info in meta["folds"].values()} == {2}
    train = pd.read_csv(config.data_dir / "train.csv", dtype=str)
    folds = pd.read_csv(config.folds_csv, dtype={"id": str})
    oof = pd.read_parquet(run_dir / "oof.parquet")
    assert sorted(oof["id"]) == sorted(train["id"]) and oof["id"].is_unique  # every row once, no padded duplicate
    assert oof["fold"].tolist() == folds["fold"].tolist()
    for fold in range(4):
        rows = pd.read_parquet(run_dir / f"fold{fold}" / "valid.parquet")["row"]
        assert rows.is_unique and len(rows) == 15
    probs = oof[CLASSES].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert meta["cv"] == pytest.approx(get_metric("accuracy")(train["label"].astype(int).to_numpy(), probs))
    test = pd.read_parquet(run_dir / "test.parquet")
    assert len(test) == 21 and test["id"].is_unique
    assert not (run_dir / ".lock").exists() and not list(run_dir.rglob("last*.pt"))

    # the same checkpoints predicted by one process and by two: the same numbers for every row
    assert main(["predict", "--config", str(config_path), "--model", "digits_resnet"]) == 0
    single_oof, single_test = pd.read_parquet(run_dir / "oof.parquet"), pd.read_parquet(run_dir / "test.parquet")
    result = _torchrun("predict", "--config", str(config_path), "--model", "digits_resnet")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-12000:]
    ddp_oof, ddp_test = pd.read_parquet(run_dir / "oof.parquet"), pd.read_parquet(run_dir / "test.parquet")
    assert ddp_oof["id"].tolist() == single_oof["id"].tolist()
    np.testing.assert_allclose(ddp_oof[CLASSES].to_numpy(), single_oof[CLASSES].to_numpy(), atol=1e-6)
    np.testing.assert_allclose(ddp_test[CLASSES].to_numpy(), single_test[CLASSES].to_numpy(), atol=1e-6)
    # and the rank-0 training predictions agree with them too (the ranks predicted with rank 0's statistics)
    np.testing.assert_allclose(oof[CLASSES].to_numpy(), single_oof[CLASSES].to_numpy(), atol=1e-6)


def test_a_lock_held_from_another_machine_is_never_taken_over(tmp_path):
    from pipeline.store.lock import _HOST, RunLock

    lock = tmp_path / "run" / ".lock"
    lock.parent.mkdir()
    lock.write_text("gpu-box-7:4242")
    with pytest.raises(StoreError, match=f"process 4242 on machine gpu-box-7; wait for it, or delete {lock}"):
        RunLock(lock.parent).__enter__()
    assert lock.read_text() == "gpu-box-7:4242"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for stale in (f"{_HOST}:{dead.stdout.strip()}", dead.stdout.strip()):  # this machine, process gone: taken over
        lock.write_text(stale)
        with RunLock(lock.parent):
            assert lock.read_text() == f"{_HOST}:{os.getpid()}"
        assert not lock.exists()
