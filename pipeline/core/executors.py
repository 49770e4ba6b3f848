"""Where a grid of jobs runs: in this process one after another (``local``), or as Ray tasks (``ray``).

A job is a top-level function and its arguments: one (run, fold) of ``make train``, one architecture of
``make zoo``. Executors are a registry keyed by name, like the blend methods; each yields every job's
outcome as it finishes, so the caller records results (``meta.json``, the zoo's records) in one process,
in the order they arrive. Neither the caller nor the job knows which executor runs it.

Why Ray: it schedules tasks by resources (a GPU each, or CPUs), retries a task whose worker died, runs
with no set-up on one machine (``ray.init()`` starts a local cluster) and on many (``ray start --head`` on
one, ``ray start --address=...`` on the others, ``RAY_ADDRESS=...`` for the driver). We only describe
jobs and read outcomes; scheduling, placement and retries are Ray's.

Failures: an error raised by a job (ours or not: a bad recipe, out of memory at batch size 1) would
repeat, so it is returned as the job's outcome, never retried. A worker process that dies (SIGKILL, a
preempted machine) is retried by Ray up to ``max_retries`` times; a fold job resumes from its last
complete epoch, so a retry loses at most one epoch.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import PipelineError

log = logging.getLogger(__name__)


class ExecutorError(PipelineError, RuntimeError):
    """An executor cannot start (Ray not installed, no cluster at RAY_ADDRESS); the message says what to do."""


@dataclass(frozen=True)
class Job:
    """One unit of a grid: ``function(*args)``; ``key`` names it in progress lines and outcomes."""

    key: str
    function: Callable[..., Any]
    args: tuple = ()


@dataclass
class JobOutcome:
    """What one job gave: its return value, or the error it raised (type and first line)."""

    job: Job
    value: Any = None
    error: str | None = None
    worker: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ExecutorSettings:
    """Resources per job and the retry budget; ``gpus_per_job`` None means 1 where the cluster has GPUs, else 0."""

    gpus_per_job: float | None = None
    cpus_per_job: float = 1.0
    max_retries: int = 2
    extra: dict = field(default_factory=dict)


def worker_name() -> str:
    return f"{platform.node() or 'localhost'}:{os.getpid()}"


def call_job(job: Job) -> JobOutcome:
    """Run one job here and return its outcome; an exception becomes the outcome's ``error``.

    This is also the body of a Ray task, so a job's failure travels back as data and is never retried.
    """
    from pipeline.core.report import configure_logging

    if not logging.getLogger("pipeline").handlers:  # a fresh Ray worker: its log lines reach the driver's console
        configure_logging()
    log.info("job %s: started on %s", job.key, worker_name())
    started = time.perf_counter()
    try:
        value = job.function(*job.args)
    except Exception as exc:  # noqa: BLE001 - one job's failure is recorded; the grid goes on
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return JobOutcome(job, error=f"{type(exc).__name__}: {first_line}"[:300], worker=worker_name(),
                          seconds=time.perf_counter() - started)
    return JobOutcome(job, value=value, worker=worker_name(), seconds=time.perf_counter() - started)


class Executor:
    """Runs jobs and yields each one's :class:`JobOutcome` as it finishes (in any order)."""

    name = ""

    def __init__(self, settings: ExecutorSettings | None = None):
        self.settings = settings or ExecutorSettings()

    def run(self, jobs: list[Job]) -> Iterator[JobOutcome]:
        raise NotImplementedError

    def describe(self) -> str:
        """One line for the console: where the jobs run."""
        return self.name


EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(cls: type[Executor]) -> type[Executor]:
    EXECUTORS[cls.name] = cls
    return cls


def get_executor(name: str, settings: ExecutorSettings | None = None) -> Executor:
    """The executor registered as ``name``.

    Raises
    ------
    ExecutorError
        For an unknown name, listing the known ones.
    """
    if name not in EXECUTORS:
        raise ExecutorError(f"unknown executor {name!r}; choose one of {sorted(EXECUTORS)} (EXECUTOR=...)")
    return EXECUTORS[name](settings)


@register_executor
class LocalExecutor(Executor):
    """One job after another in this process: today's behaviour, and the reference the others must match."""

    name = "local"

    def run(self, jobs: list[Job]) -> Iterator[JobOutcome]:
        for job in jobs:
            yield call_job(job)


@register_executor
class RayExecutor(Executor):
    """Each job is a Ray task with ``gpus_per_job`` GPUs and ``cpus_per_job`` CPUs.

    ``ray.init()`` joins the cluster at ``RAY_ADDRESS`` if set, else starts one on this machine (stopped
    again when the grid ends). Every worker reads and writes the same ``output_dir``: on a cluster it must be
    a shared path (NFS, a mounted bucket), which is also where a retried fold finds its last training state.
    """

    name = "ray"

    def _start(self):
        # worker lines are shown as they come; Ray's default folds repeated lines into one
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        try:
            import ray
        except ImportError:
            raise ExecutorError("EXECUTOR=ray needs Ray: pip install -e '.[ray]' (or pip install "
                                "'ray>=2.40')") from None
        started_here = not ray.is_initialized()
        if started_here:
            try:
                ray.init(include_dashboard=False, logging_level="ERROR", **self.settings.extra)
            except ConnectionError as exc:
                raise ExecutorError(
                    f"cannot join the Ray cluster at RAY_ADDRESS={os.environ.get('RAY_ADDRESS')!r} "
                    f"({exc}); start it with 'ray start --head', or unset RAY_ADDRESS"
                ) from None
        return ray, started_here

    def describe(self) -> str:
        return f"ray ({self.settings.cpus_per_job:g} CPU, {self.gpus_for_jobs(None)} GPU per job)"

    def gpus_for_jobs(self, cluster_gpus: float | None) -> float:
        if self.settings.gpus_per_job is not None:
            return self.settings.gpus_per_job
        return 1.0 if cluster_gpus else 0.0

    def check_fits(self, resources: dict, cpus: float, gpus: float) -> None:
        """Refuse a job that no machine of the cluster can hold: Ray would wait for it forever.

        Parameters
        ----------
        resources : dict
            ``ray.cluster_resources()`` (``CPU``, ``GPU``, ...).
        cpus, gpus : float
            What each job asks for.

        Raises
        ------
        ExecutorError
            Saying what the cluster has and which setting to lower.
        """
        have_cpus, have_gpus = float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0))
        problems = []
        if cpus > have_cpus:
            problems.append(f"{cpus:g} CPU(s) per job (executor.cpus_per_job)")
        if gpus > have_gpus:
            problems.append(f"{gpus:g} GPU(s) per job (executor.gpus_per_job)")
        if problems:
            raise ExecutorError(
                f"EXECUTOR=ray: the cluster has {have_cpus:g} CPU(s) and {have_gpus:g} GPU(s) in all, so no job "
                f"asking for {' and '.join(problems)} could ever start; lower the setting "
                "(ARGS=\"executor.cpus_per_job=1\") or add machines to the cluster"
            )

    def run(self, jobs: list[Job]) -> Iterator[JobOutcome]:
        if not jobs:
            return
        ray, started_here = self._start()
        pending: dict = {}
        try:
            resources = ray.cluster_resources()
            gpus = self.gpus_for_jobs(resources.get("GPU", 0.0))
            self.check_fits(resources, self.settings.cpus_per_job, gpus)  # before the first job is submitted
            task = ray.remote(call_job).options(
                num_cpus=self.settings.cpus_per_job,
                num_gpus=gpus,
                max_retries=self.settings.max_retries,
                retry_exceptions=False,
            )
            pending = {task.remote(job): job for job in jobs}
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(done[0])
                try:
                    yield ray.get(done[0])
                except ray.exceptions.RayError as exc:  # the worker died more often than max_retries allows
                    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    yield JobOutcome(job, error=f"{type(exc).__name__}: {first_line}"[:300], worker="ray")
        except BaseException:
            # Ctrl-C, or the caller stopped reading: the jobs still queued or running are cancelled, so no
            # worker goes on training for a driver that is gone
            self.cancel(ray, list(pending))
            raise
        finally:
            if started_here:
                ray.shutdown()  # the local cluster this grid started ends with it

    @staticmethod
    def cancel(ray, refs: list) -> None:
        """Cancel every job not yet finished (force: a running fold is killed; it resumes from its last epoch)."""
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - a job that finished meanwhile cannot be cancelled; nothing to do
                log.debug("could not cancel a Ray job", exc_info=True)
