"""The executors: every registered one runs a grid and isolates a failing job; on a local Ray cluster of two
CPU workers, a 2-model x 3-fold grid ends with the same files as the local executor, bit for bit, even when a
worker is killed with SIGKILL mid-fold."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray  # installed by the test extra: `make test` always tests the Ray executor
import torch

from pipeline.cli import main
from pipeline.core.executors import EXECUTORS, ExecutorSettings, Job, get_executor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of two CPU workers for the whole module (starting one costs seconds)."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # this module's job functions travel by value: Ray's workers do not have tests/ on their path
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(params=sorted(EXECUTORS))
def executor_name(request):
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    return request.param


def square(x: int) -> int:
    if x == 3:
        raise ValueError("three is refused")
    return x * x


def test_every_executor_runs_every_job_and_isolates_a_failure(executor_name):
    executor = get_executor(executor_name, ExecutorSettings(cpus_per_job=1, max_retries=0))
    outcomes = {o.job.key: o for o in executor.run([Job(f"job {x}", square, (x,)) for x in range(5)])}
    assert sorted(outcomes) == [f"job {x}" for x in range(5)]
    assert {k: o.value for k, o in outcomes.items() if o.ok} == {"job 0": 0, "job 1": 1, "job 2": 4, "job 4": 16}
    assert outcomes["job 3"].error == "ValueError: three is refused"
    assert all(":" in o.worker and o.seconds >= 0 for o in outcomes.values())


def test_an_unknown_executor_is_named(small_config, capsys):
    assert main(["train", "--config", str(small_config), "--model", "digits_resnet", "--executor", "slurm"]) == 2
    assert "unknown executor 'slurm'; choose one of ['local', 'ray']" in capsys.readouterr().err


RUN_FILES = ("oof.parquet", "oof_plain.parquet", "test.parquet")


def _train(config, *extra) -> int:
    return main(["train", "--config", str(config), "--model", "digits_resnet,digits_effnet", *extra])


def _same_runs(a_root, b_root):
    for model in ("digits_resnet", "digits_effnet"):
        for name in RUN_FILES:
            pd.testing.assert_frame_equal(
                pd.read_parquet(a_root / model / name), pd.read_parquet(b_root / model / name), check_exact=True
            )


@pytest.fixture()
def local_reference(small_competition, write_config, tmp_path, capsys):
    """The 2-model x 3-fold grid trained by the local executor, with one thread like a one-CPU Ray job."""
    config = write_config(
        small_competition,
        {"train": {"epochs": 2, "batch_size": 8}, "output_dir": str(tmp_path / "local")},
        name="local.yaml",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert _train(config) == 0
    finally:
        torch.set_num_threads(threads)
    capsys.readouterr()
    return tmp_path / "local" / "runs" / "digits"


def test_a_grid_on_ray_equals_the_local_executor(
    ray_cluster, local_reference, small_competition, write_config, tmp_path, capsys
):
    config = write_config(
        small_competition,
        {"train": {"epochs": 2, "batch_size": 8}, "output_dir": str(tmp_path / "ray")},
        name="ray.yaml",
    )
    assert _train(config, "--executor", "ray") == 0
    out = capsys.readouterr().out
    assert "grid: 6 job(s) of 2 run(s) on ray" in out
    assert out.count("done on ") == 6 and "digits_effnet (test_efficientnet, accuracy) - finished" in out
    _same_runs(local_reference, tmp_path / "ray" / "runs" / "digits")
    assert _train(config, "--executor", "ray") == 0  # a rerun finds both runs finished
    assert "grid: 0 job(s) of 2 run(s)" in capsys.readouterr().out


def _kill_a_worker_mid_fold(run_root, killed: list) -> None:
    """SIGKILL the first process seen holding a fold's lock once that fold has saved a training state."""
    deadline = time.time() + 240
    while time.time() < deadline and not killed:
        for lock in run_root.glob("*/fold*/fold.lock"):
            try:
                host, _, pid = lock.read_text().strip().rpartition(":")
            except OSError:
                continue
            if (lock.parent / "last.pt").is_file() and pid:
                os.kill(int(pid), signal.SIGKILL)
                killed.append((lock.parent, int(pid)))
                return
        time.sleep(0.05)


def test_a_worker_killed_mid_fold_is_retried_and_the_run_ends_bit_exact(
    ray_cluster, local_reference, small_competition, write_config, tmp_path, capsys
):
    config = write_config(
        small_competition,
        {"train": {"epochs": 2, "batch_size": 8}, "output_dir": str(tmp_path / "ray")},
        name="ray.yaml",
    )
    run_root = tmp_path / "ray" / "runs" / "digits"
    killed: list = []
    killer = threading.Thread(target=_kill_a_worker_mid_fold, args=(run_root, killed), daemon=True)
    killer.start()
    assert _train(config, "--executor", "ray") == 0
    killer.join(timeout=5)
    assert killed, "no fold was caught mid-training"
    fold_dir, _ = killed[0]
    assert "resuming after epoch 1/2" in (fold_dir / "train.log").read_text()
    _same_runs(local_reference, run_root)


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_failing_model_is_isolated_in_a_grid(executor, small_competition, write_config, tmp_path, capsys, request):
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    shutil.copy(ROOT / "configs" / "recipes" / "digits_resnet.yaml", recipes)
    # a ViT built for 64-px inputs gets 32-px images: each of its folds fails in the forward pass
    (recipes / "vit64.yaml").write_text(
        "model: test_vit\nimage_size: 32\nmodel_kwargs: {img_size: 64, patch_size: 4, dynamic_img_size: false}\n"
    )
    config = write_config(
        small_competition, {"train": {"batch_size": 8}, "executor": {"max_retries": 0}, "recipes_dir": str(recipes)}
    )
    from pipeline.config import load_config
    from pipeline.core.executors import get_executor as make
    from pipeline.train.grid import run_train_grid

    loaded = load_config(config)
    results = run_train_grid(loaded, ["digits_resnet", "vit64"], make(executor, loaded.executor.settings()))
    by_name = {name: (meta, error) for name, meta, error in results}
    assert by_name["digits_resnet"][0].status == "finished" and by_name["digits_resnet"][1] == ""
    assert by_name["vit64"][1].count("fold ") == 3 and "doesn't match model (64)" in by_name["vit64"][1]
    assert by_name["vit64"][0].status == "running" and by_name["vit64"][0].folds_done == []
