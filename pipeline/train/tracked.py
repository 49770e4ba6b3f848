"""What a training run records with experiment tracking (:mod:`pipeline.tracking`, ``tracking:`` in the config)."""

from __future__ import annotations

import yaml

from pipeline.config import Config
from pipeline.store import RunMeta
from pipeline.tracking import track
from pipeline.tracking.values import flatten
from pipeline.train.spec import RunSpec

#: a fold's scores and timings recorded at the end (its history is recorded per epoch)
FOLD_VALUES = ("score", "score_plain", "best_epoch", "epochs_run", "train_seconds", "predict_seconds",
               "train_images_per_s", "data_wait_share")


def run_tags(config: Config, spec: RunSpec, meta: RunMeta) -> dict[str, str]:
    return {"competition": config.competition.name, "folds_fingerprint": spec.fingerprint, "run": spec.name,
            "model": meta.timm_name or spec.cfg.model, "settings_hash": spec.settings_hash}


def track_fold(config: Config, spec: RunSpec, meta: RunMeta, fold: int, result: dict) -> bool:
    """One tracked run for this (run, fold): per-epoch history, scores, the resolved settings and their hash."""
    settings = config.tracking.settings(config.out, config.competition.name)
    if settings is None:
        return False
    resolved = spec.cfg.model_dump(mode="json")
    return track(
        settings,
        f"{spec.name}/fold{fold}",
        {**run_tags(config, spec, meta), "fold": str(fold), "stage": "train"},
        params=flatten(resolved),
        history=result.get("history", ()),
        metrics={key: result[key] for key in FOLD_VALUES if result.get(key) is not None},
        texts={"config.yaml": yaml.safe_dump(resolved, sort_keys=True)},
    )


def track_run(config: Config, spec: RunSpec, meta: RunMeta, fold_table: str) -> bool:
    """One tracked run for the finished run: CV, TTA gain, times and the fold table."""
    settings = config.tracking.settings(config.out, config.competition.name)
    if settings is None or meta.status != "finished":
        return False
    values = {"cv": meta.cv, "cv_plain": meta.cv_plain, "tta_gain": meta.tta_gain, "train_seconds": meta.train_seconds,
              "predict_seconds": meta.predict_seconds, "private_lb": meta.private_lb}
    return track(
        settings,
        spec.name,
        {**run_tags(config, spec, meta), "stage": "train"},
        metrics={key: value for key, value in values.items() if value is not None},
        texts={"fold_table.txt": fold_table},
    )
