"""``EXECUTOR=ray`` under requests the cluster cannot meet, and under Ctrl-C, on a real local Ray cluster of one CPU.

A job asking for more CPUs or GPUs than the cluster has is refused before anything is submitted (it used to
wait forever), naming what the cluster has; an interrupt cancels the jobs and ends the cluster the grid started.
"""

from __future__ import annotations

import os
import re
import sys
import time

import pytest
import ray  # installed by the test extra

from pipeline.cli import main
from pipeline.core.executors import ExecutorSettings, Job, get_executor


def quick(value: int) -> int:
    return value


def slow(marker: str) -> str:
    time.sleep(20)
    with open(marker, "w") as handle:
        handle.write("finished")
    return marker


@pytest.fixture()
def no_cluster():
    """No Ray cluster before or after: the executor starts and ends its own."""
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    if ray.is_initialized():
        ray.shutdown()
    yield
    if ray.is_initialized():
        ray.shutdown()


CASES = [
    ("1000 CPUs per job", ["executor.cpus_per_job=1000"],
     r"the cluster has 1 CPU\(s\) and 0 GPU\(s\) in all, so no job asking for 1000 CPU\(s\) per job "
     r"\(executor\.cpus_per_job\) could ever start"),
    ("a GPU on a cluster without", ["executor.gpus_per_job=1"],
     r"the cluster has 1 CPU\(s\) and 0 GPU\(s\) in all, so no job asking for 1 GPU\(s\) per job"),
]


@pytest.fixture()
def one_cpu_cluster(no_cluster):
    """A local cluster of one CPU and no GPU, which the grid joins (as one started with 'ray start')."""
    ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, logging_level="ERROR")
    yield


@pytest.mark.parametrize("overrides, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_job_the_cluster_cannot_hold_is_refused(one_cpu_cluster, small_competition, write_config, tmp_path, capsys,
                                                  overrides, message):
    config = write_config(small_competition)
    started = time.perf_counter()
    code = main(["train", "--config", str(config), "--model", "digits_resnet", "--executor", "ray", *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert time.perf_counter() - started < 120  # refused, not waiting for a node that never comes
    assert not any((tmp_path / "out").rglob("*.safetensors"))


def test_an_interrupt_cancels_the_jobs_and_ends_the_cluster(no_cluster, tmp_path):
    marker = tmp_path / "slow.done"
    executor = get_executor("ray", ExecutorSettings(cpus_per_job=1, extra={"num_cpus": 1}))
    outcomes = executor.run([Job("quick", quick, (1,)), Job("slow", slow, (str(marker),))])
    first = next(outcomes)
    assert first.ok and first.job.key in ("quick", "slow")
    with pytest.raises(KeyboardInterrupt):
        outcomes.throw(KeyboardInterrupt)  # Ctrl-C while the driver handles an outcome
    assert not ray.is_initialized()
    time.sleep(1)
    assert not marker.exists()
