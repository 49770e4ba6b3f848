"""Prediction with test-time augmentation: every view of a batch in one pass, a fold's validation rows and the test set.

Fold files are keyed by row index (``fold<k>/valid.parquet``, ``valid_plain.parquet``,
``test.parquet``); the run's id-keyed files are assembled from them by the stage.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file as load_safetensors

from pipeline import io
from pipeline.config import TrainConfig
from pipeline.distributed import gather_rows, shard
from pipeline.metrics import Metric
from pipeline.models import data_config
from pipeline.store import RunLayout
from pipeline.train.dataset import FoldData, ImageDataset
from pipeline.train.model import prepare_model
from pipeline.train.runtime import (Runtime, autocast, batch_to_device, device_transform, eval_batch_size,
                                    free_device_memory, is_oom, make_loader, to_device)
from pipeline.transforms import DeviceTransform, HostTransform, apply_views


CPU_PIXELS_PER_PASS = 2**19

@torch.inference_mode()
def predict_views(model: torch.nn.Module, loader, views: list[Callable], runtime: Runtime,
                  activate: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  inputs: DeviceTransform | None = None) -> np.ndarray:
    """Predictions for every view: ``(n_views, n_rows, n_columns)``.

    ``inputs`` turns the loader's uint8 batches into the model's normalised input on the
    device; without it the loader's batches are taken as model input already.

    ``activate`` turns logits into what is stored and averaged over views (the task
    head's softmax, sigmoid or value scale, :class:`pipeline.tasks.Head`); softmax when None.

    On a GPU all views of a batch go through the model in one forward pass while memory
    allows; after an out-of-memory error the views are split into fewer per pass (halving)
    for the rest of the loader. On the CPU a pass holds at most :data:`CPU_PIXELS_PER_PASS`
    input pixels (larger passes spill out of the CPU caches and run slower per image).
    Results stay on the device until the end, so the loop never waits for a copy to the host.
    """
    model.eval()
    activate = activate or (lambda logits: logits.float().softmax(dim=1))
    outputs = []
    per_pass = None
    for x, _ in loader:
        x = to_device(x, runtime) if inputs is None else batch_to_device(x, runtime, inputs)
        n = x.shape[0]
        if per_pass is None:
            per_pass = len(views)
            if not runtime.is_cuda:
                per_pass = min(per_pass, max(1, CPU_PIXELS_PER_PASS // (n * x.shape[-2] * x.shape[-1])))
        while True:
            try:
                chunks = []
                for first in range(0, len(views), per_pass):
                    with autocast(runtime):
                        logits = model(apply_views(x, views[first:first + per_pass]))
                    out = activate(logits)
                    chunks.append(out.reshape(-1, n, out.shape[-1]))
                break
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
                if not is_oom(exc) or per_pass == 1:
                    raise
                chunks = logits = None
                free_device_memory()
                per_pass = max(1, per_pass // 2)
        outputs.append(torch.cat(chunks, dim=0))
    if not outputs:  # no rows: a screen without a test set, or a DDP shard left empty
        width = activate(torch.zeros(1, model.num_classes)).shape[-1]
        return np.zeros((len(views), 0, width), dtype=np.float32)
    return torch.cat(outputs, dim=1).cpu().numpy()


def predict_fold(cfg: TrainConfig, fold: int, data: FoldData, classes: list[str], metric: Metric, runtime: Runtime,
                 layout: RunLayout, views: list[Callable], view_names: list[str], model: torch.nn.Module | None = None) -> dict:
    """Load a fold's best checkpoint and predict its validation rows and the test set with TTA.

    Under torchrun each rank predicts every ``world_size``-th row (no padding) and the rows
    are gathered back in order, so each row is predicted exactly once; rank 0 writes.
    """
    started = time.perf_counter()
    context = runtime.dist
    if model is None:
        model = prepare_model(cfg, data.head.n_outputs(len(classes)), runtime, False)
    model.load_state_dict(load_safetensors(str(layout.best(fold)), device=str(runtime.device)))
    dcfg = data_config(model, cfg.image_size, cfg.mean, cfg.std, cfg.interpolation)
    eval_tf = HostTransform(dcfg.image_size, dcfg.interpolation)
    inputs = device_transform(cfg, dcfg, runtime)
    valid_idx = np.flatnonzero(data.folds == fold)
    test_rows = np.arange(len(data.test_store))
    batch_size = eval_batch_size(cfg.batch_size, runtime)
    valid_loader = make_loader(ImageDataset(data.store, shard(valid_idx, context), eval_tf, data.y), batch_size, runtime)
    test_loader = make_loader(ImageDataset(data.test_store, shard(test_rows, context), eval_tf), batch_size, runtime)

    def summary(probs: np.ndarray) -> np.ndarray:
        # the plain view and the mean over views: all that is kept, and all that ranks exchange
        return np.stack([probs[0], probs.mean(axis=0)])

    valid_views = gather_rows(summary(predict_views(model, valid_loader, views, runtime, data.head.activate, inputs)),
                              context, len(valid_idx), axis=1)
    test_views = gather_rows(summary(predict_views(model, test_loader, views, runtime, data.head.activate, inputs)),
                             context, len(test_rows), axis=1)
    valid_plain, valid_tta = valid_views
    valid_y = data.y[valid_idx]
    result = {
        "fold": fold,
        "score": metric(valid_y, valid_tta),
        "score_plain": metric(valid_y, valid_plain),
        "predict_seconds": time.perf_counter() - started,
        "tta": view_names,
        "finished": True,
    }
    if context.is_main:
        # the weights these predictions came from: make export refuses a checkpoint that is not this one
        result["checkpoint_sha256"] = io.file_sha256(layout.best(fold))
    if context.is_main:
        write_fold_predictions(layout, fold, valid_idx, valid_tta, valid_plain, test_views[1])
    return result


def write_fold_predictions(layout: RunLayout, fold: int, valid_idx: np.ndarray, valid_tta: np.ndarray,
                           valid_plain: np.ndarray, test_tta: np.ndarray) -> None:
    """A fold's validation (with and without TTA) and test predictions, keyed by row index.

    The run-level files, keyed by id, are assembled from these once every fold is done.
    """
    columns = [str(k) for k in range(valid_tta.shape[1])]
    for name, rows, probs in (("valid", valid_idx, valid_tta), ("valid_plain", valid_idx, valid_plain),
                              ("test", np.arange(len(test_tta)), test_tta)):
        frame = pd.DataFrame(probs, columns=columns)
        frame.insert(0, "row", rows)
        io.write_parquet(layout.fold_predictions(fold, name), frame)


def read_fold_predictions(layout: RunLayout, fold: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, predictions) of one of a fold's prediction files (``valid``, ``valid_plain``, ``test``)."""
    frame = pd.read_parquet(layout.fold_predictions(fold, name))
    return frame["row"].to_numpy(), frame.drop(columns="row").to_numpy(dtype=np.float64)
