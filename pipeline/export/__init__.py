"""``make export``: the chosen ensemble as an offline folder for a Kaggle code competition.

``build`` makes the folder (refusals, checkpoints, ``export.json``, the wheel, ``predict.py``, the manifest,
``--check``);
``predict`` is the offline predictor that ``predict.py`` runs, built from the training code.
"""

from pipeline.export.build import (
    EXPORT_VERSION,
    PREDICT_PY,
    PREDICT_REQUIRES,
    ExportError,
    build_wheel,
    check_export,
    compare_submissions,
    image_pattern,
    log,
    model_entry,
    replace_problem,
    run_export,
)

__all__ = [
    "log",
    "EXPORT_VERSION",
    "PREDICT_PY",
    "ExportError",
    "image_pattern",
    "replace_problem",
    "model_entry",
    "PREDICT_REQUIRES",
    "build_wheel",
    "run_export",
    "compare_submissions",
    "check_export",
]
