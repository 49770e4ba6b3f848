"""What each piece of an export costs at prediction time: ms per image of every (model, fold model, TTA view).

``make export`` measures it on the device the export is made on (a GPU when there is one; the device is recorded
with the figures), writes ``cost.csv`` beside ``export.json`` and prints the projected time for the test set.
Each fold model is built and loaded as ``predict.py`` does and run once on a warm-up batch; then each view runs on
its own over synthetic images at the model's input size, in timed batches, so a view's cost includes its own
transform (a ``resize`` view's larger input costs more than an ``hflip``). Each fold model's row also carries what it
costs apart from its views: ``load_seconds`` (building and loading it, and its first batch beyond a steady one) and
``decode_ms_per_image`` (each fold model's pass reads every test image again: decoding timed on up to 200 of the
competition's test images). :func:`projected_seconds` adds them up, with the start of a fresh interpreter.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.export.spec import ExportSpec

COST_FILE = "cost.csv"
COLUMNS = ["model", "fold", "view", "ms_per_image", "images_timed", "batch_size", "device", "load_seconds",
           "decode_ms_per_image"]


def measure_costs(folder: Path, spec: ExportSpec | dict, device: str = "auto", batch_size: int | None = None,
                  warmup: int = 1, timed: int = 2, seed: int = 0, images: list[Path] | None = None) -> pd.DataFrame:
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
    images : list of Path, optional
        Test images to time decoding on (up to :data:`DECODE_SAMPLE`); without them decoding counts 0.

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
        pixels = torch.from_numpy(rng.integers(0, 256, size=(size, side, side, 3), dtype=np.uint8))
        batch = (pixels, torch.zeros(size, dtype=torch.int64))
        where = device_description(runtime)
        decode_ms = decode_cost(model, images or [])
        for fold in model.folds:
            started = time.perf_counter()
            net = load_fold_model(folder, model, fold, cfg, runtime)
            loaded = time.perf_counter()
            if warmup:  # once per fold model: the first passes pay for allocation and kernel selection
                predict_views(net, [batch] * warmup, [parse_view(fold.tta[0])], runtime, None, inputs)
            warmed = time.perf_counter()
            fold_rows = []
            for name in fold.tta:
                view = [parse_view(name)]
                timer = time.perf_counter()
                predict_views(net, [batch] * timed, view, runtime, None, inputs)  # returns on the host: synced
                seconds = time.perf_counter() - timer
                fold_rows.append({"model": model.run, "fold": fold.fold, "view": name,
                                  "ms_per_image": 1000 * seconds / (size * timed), "images_timed": size * timed,
                                  "batch_size": size, "device": where, "decode_ms_per_image": decode_ms})
            # what the fold model costs once, whatever the test set's size: building and loading it, and what its
            # first batch takes beyond a steady one
            steady = fold_rows[0]["ms_per_image"] * size * warmup / 1000
            once = (loaded - started) + max(0.0, (warmed - loaded) - steady)
            rows.extend({**row, "load_seconds": once} for row in fold_rows)
            del net
    return pd.DataFrame(rows, columns=COLUMNS)


#: test images decoded to time decoding (each fold model's pass decodes every test image again)
DECODE_SAMPLE = 200


def decode_cost(model, images: list[Path]) -> float:
    """ms per image to read a test image as ``predict.py`` does for this model (decode, and the cache's resize when
    the run used one), on up to :data:`DECODE_SAMPLE` of them; 0.0 without images."""
    from pipeline.export.predict import TestImages, cache_side_for

    sample = list(images)[:DECODE_SAMPLE]
    if not sample:
        return 0.0
    store = TestImages(sample, cache_side_for(sample, model.resize))
    started = time.perf_counter()
    for i in range(len(store)):
        store[i]
    return 1000 * (time.perf_counter() - started) / len(sample)


def startup_seconds() -> float:
    """Seconds a fresh interpreter takes to import what ``predict.py`` imports first (torch, timm, pandas)."""
    import subprocess
    import sys

    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, timm, pandas"], check=True, capture_output=True)
    return time.perf_counter() - started


def planning_costs(costs: pd.DataFrame) -> pd.DataFrame:
    """``costs`` with each fold model's figure replaced by the median over its run's fold models, view by view.

    A run's fold models share the architecture, input size and batch, so they cost the same; their timings differ by
    noise (on the 2-core CPU machine one lite0 view timed 6.1 to 9.9 ms per image across five fold models). The
    median of k timings is what the projection and the budget plan with.
    """
    out = costs.copy()
    if len(out):
        out["ms_per_image"] = costs.groupby(["model", "view"], sort=False)["ms_per_image"].transform("median")
    return out


def projected_seconds(costs: pd.DataFrame, n_images: int, startup: float = 0.0) -> float:
    """Seconds the export would take on ``n_images`` test images at the measured costs: the forward passes, and
    per fold model its loading and the decoding of every test image (each fold model's pass decodes them), plus
    ``startup``."""
    if n_images < 0:
        raise ValueError(f"the number of test images must be >= 0, got {n_images}")
    forward = float(costs["ms_per_image"].sum()) * n_images / 1000
    per_fold = costs.drop_duplicates(["model", "fold"])
    once = float(per_fold["load_seconds"].sum()) if "load_seconds" in costs else 0.0
    decode = float(per_fold["decode_ms_per_image"].sum()) * n_images / 1000 if "decode_ms_per_image" in costs else 0.0
    return forward + once + decode + startup


def cost_summary(costs: pd.DataFrame) -> pd.DataFrame:
    """Per model: fold models, views, and ms per image summed over them (what dropping the whole run saves)."""
    grouped = costs.groupby("model", sort=False)
    return pd.DataFrame({
        "fold models": grouped["fold"].nunique(),
        "views": grouped["view"].nunique(),
        "ms per image": grouped["ms_per_image"].sum(),
    }).reset_index()
