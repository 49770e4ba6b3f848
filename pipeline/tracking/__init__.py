"""Experiment tracking, off by default: every fold, run, ensemble and zoo screen recorded in MLflow or TensorBoard.

``tracking: {backend: mlflow}`` in the config (or ``ARGS="tracking.backend=mlflow"``) records

* one tracked run per (run, fold): its per-epoch history as metrics (step = epoch), its scores and timings, the
  resolved settings as parameters and as ``config.yaml``, the settings hash, tagged with the competition, the
  folds' fingerprint, the run and the fold;
* one per finished run (its fold table), one per ``make ensemble`` (the leaderboard, ``ensemble.png``) and one per
  zoo screen (the report and its leaderboard).

MLflow's embedded default is a local SQLite store, ``<output_dir>/mlflow.db`` (``mlflow ui --backend-store-uri
sqlite:///mlflow.db`` shows it); ``tracking.uri`` or ``MLFLOW_TRACKING_URI`` names a team's server. TensorBoard
writes event files under ``<output_dir>/tensorboard/`` (``tensorboard --logdir tensorboard``).

A tracker never stops the work it records: its first failure (a server down, a full disk) is logged once as a
warning and tracking is off for the rest of the process; the stage goes on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackingSettings:
    """Where tracked runs go: the backend's name, its URI (None: the embedded default) and the experiment."""

    backend: str
    uri: str | None
    experiment: str
    out_dir: Path


class MlflowTracker:
    """One MLflow run per :meth:`start`, through ``MlflowClient`` (no global active run to leak between folds)."""

    def __init__(self, settings: TrackingSettings):
        # a server that is down must cost one short wait, not MLflow's default of 7 retries with back-off
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        uri = settings.uri or os.environ.get("MLFLOW_TRACKING_URI")
        embedded = uri is None
        if embedded:
            settings.out_dir.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{(settings.out_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(settings.experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            location = (settings.out_dir / "mlartifacts").resolve().as_uri() if embedded else None
            self.experiment_id = self.client.create_experiment(settings.experiment, artifact_location=location)
        self.run_id: str | None = None

    def start(self, name: str, tags: dict[str, str]) -> None:
        self.run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id

    def params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        from pipeline.tracking.values import now_ms

        stamp = now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in values.items()])

    def text(self, name: str, text: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def artifact(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path))

    def end(self, failed: bool = False) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")
            self.run_id = None


class TensorBoardTracker:
    """One event-file folder per :meth:`start`: ``<output_dir>/tensorboard/<experiment>/<name>``."""

    def __init__(self, settings: TrackingSettings):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self._writer_class = SummaryWriter
        self.root = Path(settings.uri) if settings.uri else settings.out_dir / "tensorboard" / settings.experiment
        self.writer = None

    def start(self, name: str, tags: dict[str, str]) -> None:
        from pipeline.tracking.values import safe_path

        self.writer = self._writer_class(log_dir=str(self.root / safe_path(name)))
        self.writer.add_text("tags", "\n".join(f"    {k}: {v}" for k, v in sorted(tags.items())))

    def params(self, params: dict[str, str]) -> None:
        self.writer.add_text("params", "\n".join(f"    {k}: {v}" for k, v in sorted(params.items())))

    def metrics(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def text(self, name: str, text: str) -> None:
        # indented: TensorBoard renders text as markdown, a table as a code block keeps its columns
        self.writer.add_text(name, "\n".join("    " + line for line in text.splitlines()))

    def artifact(self, path: Path) -> None:
        path = Path(path)
        if path.suffix.lower() == ".png":
            import numpy as np
            from PIL import Image

            with Image.open(path) as image:
                self.writer.add_image(path.stem, np.asarray(image.convert("RGB")), dataformats="HWC")
        else:
            self.text(path.name, path.read_text(errors="replace"))

    def end(self, failed: bool = False) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


#: name -> tracker class: a new backend is one entry (``tracking.backend`` is checked against it on load)
TRACKERS = {"mlflow": MlflowTracker, "tensorboard": TensorBoardTracker}
_FAILED: set[str] = set()  # backends that failed in this process: warned once, off since


def track(settings: TrackingSettings | None, name: str, tags: dict[str, str], params: dict[str, str] | None = None,
          history: Iterable[dict] = (), metrics: dict[str, float] | None = None, texts: dict[str, str] | None = None,
          artifacts: Iterable[Path] = ()) -> bool:
    """Record one tracked run; never raises.

    Parameters
    ----------
    settings : TrackingSettings or None
        None (``backend: none``) records nothing.
    name, tags : str, dict
        The tracked run's name and its tags.
    params : dict, optional
        Flat ``key -> text`` parameters (:func:`pipeline.tracking.values.flatten`).
    history : iterable of dict
        One dict per epoch with an ``epoch`` key: every other finite number is a metric at that step.
    metrics : dict, optional
        Final values, at step 0.
    texts, artifacts : dict, iterable of Path
        Files to attach, as text or as they are (a missing file is skipped).

    Returns
    -------
    bool
        True when everything was recorded; False when tracking is off or failed (warned once).
    """
    if settings is None or settings.backend in _FAILED:
        return False
    from pipeline.tracking.values import finite

    tracker = None
    try:
        tracker = TRACKERS[settings.backend](settings)
        tracker.start(name, {k: str(v) for k, v in tags.items()})
        if params:
            tracker.params(params)
        for row in history:
            values = finite({k: v for k, v in row.items() if k != "epoch"})
            if values:
                tracker.metrics(values, int(row.get("epoch", 0)))
        if metrics:
            tracker.metrics(finite(metrics), 0)
        for file_name, text in (texts or {}).items():
            tracker.text(file_name, text)
        for path in artifacts:
            if Path(path).is_file():
                tracker.artifact(Path(path))
        tracker.end()
        return True
    except Exception as exc:  # noqa: BLE001 - any failure of a tracker (network, disk, a library) must not stop work
        _FAILED.add(settings.backend)
        where = settings.uri or "the embedded store"
        log.warning(f"tracking with {settings.backend} ({where}) failed and is off for the rest of this command: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}; the work goes on")
        try:
            if tracker is not None:
                tracker.end(failed=True)
        except Exception:  # noqa: BLE001 - already reported above
            pass
        return False


def reset_failures() -> None:
    """Forget earlier failures (a long-lived process after the server came back; the tests)."""
    _FAILED.clear()


__all__ = ["TRACKERS", "TrackingSettings", "MlflowTracker", "TensorBoardTracker", "track", "reset_failures"]
