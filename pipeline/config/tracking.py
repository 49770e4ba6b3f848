"""``tracking:``: where experiment tracking records the work (:mod:`pipeline.tracking`); off by default."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_validator


class TrackingConfig(BaseModel):
    """``backend``: none, mlflow or tensorboard; ``uri``: MLflow's tracking server or store (default
    ``MLFLOW_TRACKING_URI``, else ``<output_dir>/mlflow.db``), TensorBoard's log folder (default
    ``<output_dir>/tensorboard/<experiment>``); ``experiment``: default the competition's name."""

    # as strict as the other sections (pipeline.config.schema.StrictModel, which imports this module)
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)

    backend: str = "none"
    uri: str | None = None
    experiment: str | None = None

    @field_validator("backend")
    @classmethod
    def _known(cls, backend: str) -> str:
        from pipeline.tracking import TRACKERS

        if backend != "none" and backend not in TRACKERS:
            raise ValueError(f"unknown tracking backend {backend!r}; choose none or one of {sorted(TRACKERS)}")
        return backend

    def settings(self, out_dir: Path, competition: str):
        """The :class:`pipeline.tracking.TrackingSettings` to record with, or None when tracking is off."""
        from pipeline.tracking import TrackingSettings

        if self.backend == "none":
            return None
        return TrackingSettings(self.backend, self.uri, self.experiment or competition, Path(out_dir))
