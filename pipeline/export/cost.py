"""What each piece of an export costs at prediction time: ms per image of every (model, fold model, TTA view).

``make export`` measures it on the device the export is made on (a GPU when there is one; the device is recorded
with the figures), writes ``cost.csv`` beside ``export.json`` and prints the projected time for the test set.
Each fold model is built and loaded as ``predict.py`` does and run once on a warm-up batch; then each view runs on
its own over synthetic images at the model's input size, in timed batches, so a view's cost includes its own
transform (a ``resize`` view's larger input costs more than an ``hflip``). Decoding the images is not included: it
is the same for every piece, and ``predict.py``'s own estimate after its first batches includes it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.export.spec import ExportSpec

COST_FILE = "cost.csv"
COLUMNS = ["model", "fold", "view", "ms_per_image", "images_timed", "batch_size", "device"]


def measure_costs(folder: Path, spec: ExportSpec | dict, device: str = "auto", batch_size: int | None = None,
                  warmup: int = 1, timed: int = 2, seed: int = 0) -> pd.DataFrame:
    """Forward time per image of each fold model and view of an export.

    Parameters
    ----------
    folder : Path
        The export folder (its checkpoints).
    spec : ExportSpec or dict
        Its ``export.json``.
    device : {"auto", "cpu", "cuda"}
    batch_size : int, optional
        Default: each run's own prediction batch.
    warmup, timed : int
        Batches run before timing, and timed.

    Returns
    -------
    DataFrame
        One row per (model, fold, view): :data:`COLUMNS`.
    """
    import torch

    from pipeline.config import TrainConfig
    from pipeline.export.predict import load_fold_model, model_inputs, prediction_runtime
    from pipeline.train.predict import predict_views
    from pipeline.train.timing import device_description
    from pipeline.vision.views import parse_view

    if warmup < 0 or timed < 1:
        raise ValueError(f"warmup must be >= 0 and timed >= 1, got {warmup} and {timed}")
    spec = spec if isinstance(spec, ExportSpec) else ExportSpec.model_validate(spec)
    rng = np.random.default_rng(seed)
    rows = []
    for model in spec.models:
        cfg = TrainConfig.model_validate(model.train)
        runtime = prediction_runtime(device, cfg, 0)
        inputs = model_inputs(model, cfg, runtime)
        size = batch_size or model.batch_size
        side = int(model.data["image_size"])
        images = torch.from_numpy(rng.integers(0, 256, size=(size, side, side, 3), dtype=np.uint8))
        batch = (images, torch.zeros(size, dtype=torch.int64))
        where = device_description(runtime)
        for fold in model.folds:
            net = load_fold_model(folder, model, fold, cfg, runtime)
            if warmup:  # once per fold model: the first passes pay for allocation and kernel selection
                predict_views(net, [batch] * warmup, [parse_view(fold.tta[0])], runtime, None, inputs)
            for name in fold.tta:
                view = [parse_view(name)]
                started = time.perf_counter()
                predict_views(net, [batch] * timed, view, runtime, None, inputs)  # returns on the host: synced
                seconds = time.perf_counter() - started
                rows.append({"model": model.run, "fold": fold.fold, "view": name,
                             "ms_per_image": 1000 * seconds / (size * timed), "images_timed": size * timed,
                             "batch_size": size, "device": where})
            del net
    return pd.DataFrame(rows, columns=COLUMNS)


def projected_seconds(costs: pd.DataFrame, n_images: int) -> float:
    """Seconds the whole export would take on ``n_images`` test images at the measured costs (decoding aside)."""
    if n_images < 0:
        raise ValueError(f"the number of test images must be >= 0, got {n_images}")
    return float(costs["ms_per_image"].sum()) * n_images / 1000


def cost_summary(costs: pd.DataFrame) -> pd.DataFrame:
    """Per model: fold models, views, and ms per image summed over them (what dropping the whole run saves)."""
    grouped = costs.groupby("model", sort=False)
    return pd.DataFrame({
        "fold models": grouped["fold"].nunique(),
        "views": grouped["view"].nunique(),
        "ms per image": grouped["ms_per_image"].sum(),
    }).reset_index()
