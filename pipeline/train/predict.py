"""Prediction with test-time augmentation: the views of a batch in one pass per output shape, a fold's validation
rows and the test set.

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

from pipeline.config import TrainConfig
from pipeline.core import io
from pipeline.store import RunLayout
from pipeline.store.views import view_frame
from pipeline.task.metrics import Metric
from pipeline.train.dataset import FoldData, ImageDataset
from pipeline.train.distributed import gather_rows, shard
from pipeline.train.model import prepare_model
from pipeline.train.runtime import (Runtime, autocast, batch_to_device, device_transform, eval_batch_size,
                                    free_device_memory, is_oom, make_loader, to_device)
from pipeline.vision.device import DeviceTransform
from pipeline.vision.host import HostTransform
from pipeline.vision.models import data_config
from pipeline.vision.views import apply_views, view_groups

CPU_PIXELS_PER_PASS = 2**19


@torch.inference_mode()
def predict_views(
    model: torch.nn.Module,
    loader,
    views: list[Callable],
    runtime: Runtime,
    activate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    inputs: DeviceTransform | None = None,
) -> np.ndarray:
    """Predictions for every view: ``(n_views, n_rows, n_columns)``.

    ``inputs`` turns the loader's uint8 batches into the model's normalised input on the
    device; without it the loader's batches are taken as model input already.

    ``activate`` turns logits into what is stored and averaged over views (the task
    head's softmax, sigmoid or value scale, :class:`pipeline.task.tasks.Head`); softmax when None.

    On a GPU all views of a batch that give one output shape go through the model in one
    forward pass while memory allows (a ``resize`` view, whose output is larger, gets its
    own); after an out-of-memory error the views are split into fewer per pass (halving)
    for the rest of the loader. On the CPU a pass holds at most :data:`CPU_PIXELS_PER_PASS`
    input pixels (larger passes spill out of the CPU caches and run slower per image).
    Results stay on the device until the end, so the loop never waits for a copy to the host.
    """
    model.eval()
    activate = activate or (lambda logits: logits.float().softmax(dim=1))
    outputs = []
    per_pass = None
    groups: dict[tuple[int, int], list[list[int]]] = {}
    for x, _ in loader:
        x = to_device(x, runtime) if inputs is None else batch_to_device(x, runtime, inputs)
        n = x.shape[0]
        if per_pass is None:
            per_pass = len(views)
            if not runtime.is_cuda:
                per_pass = min(per_pass, max(1, CPU_PIXELS_PER_PASS // (n * x.shape[-2] * x.shape[-1])))
        side = (x.shape[-2], x.shape[-1])
        if side not in groups:
            groups[side] = view_groups(views, *side)
        while True:
            try:
                by_view: list[torch.Tensor | None] = [None] * len(views)
                for group in groups[side]:  # views of one output shape share a pass; other shapes get their own
                    for first in range(0, len(group), per_pass):
                        chosen = group[first : first + per_pass]
                        with autocast(runtime):
                            logits = model(apply_views(x, [views[k] for k in chosen]))
                        out = activate(logits)
                        for k, rows in zip(chosen, out.reshape(-1, n, out.shape[-1]).unbind(0)):
                            by_view[k] = rows
                break
            except Exception as exc:  # noqa: BLE001 - only out-of-memory errors are retried
                if not is_oom(exc) or per_pass == 1:
                    raise
                by_view = logits = None
                free_device_memory()
                per_pass = max(1, per_pass // 2)
        outputs.append(torch.stack(by_view, dim=0))
    if not outputs:  # no rows: a screen without a test set, or a DDP shard left empty
        width = activate(torch.zeros(1, model.num_classes)).shape[-1]
        return np.zeros((len(views), 0, width), dtype=np.float32)
    return torch.cat(outputs, dim=1).cpu().numpy()


def check_views_fit_model(cfg: TrainConfig, views: list[Callable], view_names: list[str], size: int) -> None:
    """Refuse TTA views whose input size the model cannot take, before any work.

    A view that changes the input's shape (``resize``) needs a model that takes other
    sizes: convolutional networks do, a timm ViT only with ``dynamic_img_size``. Asking
    the architecture itself is the robust test: the model is built (no weights: they do
    not change what sizes it takes) and run once on one blank image per other shape.
    Nothing is built when every view keeps the training size.

    Raises
    ------
    ConfigError
        Naming the view, the sizes and the fix.
    """
    from pipeline.config import ConfigError
    from pipeline.vision.models import create_model
    from pipeline.vision.views import view_shapes

    others: dict[tuple[int, int], str] = {}
    for name, shape in zip(view_names, view_shapes(views, size, size)):
        if shape != (size, size):
            others.setdefault(shape, name)
    if not others:
        return
    model = create_model(cfg.model, 2, False, small_input=cfg.small_input, **cfg.model_kwargs).eval()
    for (height, width), name in others.items():
        try:
            with torch.inference_mode():
                model(torch.zeros(1, 3, height, width))
        except Exception as exc:  # noqa: BLE001 - timm raises AssertionError, RuntimeError or others for a size it cannot take
            raise ConfigError(
                f"TTA view {name!r} feeds {cfg.model} {height}x{width} images, but it takes only its training size "
                f"{size}x{size} ({type(exc).__name__}: {str(exc)[:200]}); for a timm ViT set "
                "model_kwargs: {dynamic_img_size: true} in the recipe (as configs/recipes/vit.yaml does), "
                "or drop the view from train.tta"
            ) from None


def predict_fold(
    cfg: TrainConfig,
    fold: int,
    data: FoldData,
    classes: list[str],
    metric: Metric,
    runtime: Runtime,
    layout: RunLayout,
    views: list[Callable],
    view_names: list[str],
    model: torch.nn.Module | None = None,
) -> dict:
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
    valid_loader = make_loader(
        ImageDataset(data.store, shard(valid_idx, context), eval_tf, data.y), batch_size, runtime
    )
    test_loader = make_loader(ImageDataset(data.test_store, shard(test_rows, context), eval_tf), batch_size, runtime)

    # every view is kept (each on its own: make export BUDGET= weighs what dropping one costs), and exchanged by ranks
    valid_views = gather_rows(
        predict_views(model, valid_loader, views, runtime, data.head.activate, inputs), context, len(valid_idx), axis=1
    )
    test_views = gather_rows(
        predict_views(model, test_loader, views, runtime, data.head.activate, inputs), context, len(test_rows), axis=1
    )
    valid_plain, valid_tta = valid_views[0], valid_views.mean(axis=0)
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
        write_fold_predictions(layout, fold, valid_idx, valid_tta, valid_plain, test_views.mean(axis=0))
        if len(view_names) > 1:
            write_view_predictions(layout, fold, view_names, valid_idx, valid_views, test_views)
    return result


def write_fold_predictions(
    layout: RunLayout,
    fold: int,
    valid_idx: np.ndarray,
    valid_tta: np.ndarray,
    valid_plain: np.ndarray,
    test_tta: np.ndarray,
) -> None:
    """A fold's validation (with and without TTA) and test predictions, keyed by row index.

    The run-level files, keyed by id, are assembled from these once every fold is done.
    """
    columns = [str(k) for k in range(valid_tta.shape[1])]
    for name, rows, probs in (
        ("valid", valid_idx, valid_tta),
        ("valid_plain", valid_idx, valid_plain),
        ("test", np.arange(len(test_tta)), test_tta),
    ):
        frame = pd.DataFrame(probs, columns=columns)
        frame.insert(0, "row", rows)
        io.write_parquet(layout.fold_predictions(fold, name), frame)


def write_view_predictions(layout: RunLayout, fold: int, view_names: list[str], valid_idx: np.ndarray,
                           valid_views: np.ndarray, test_views: np.ndarray) -> None:
    """Each TTA view's validation and test predictions on its own (``valid_views``, ``test_views``), keyed by
    (view, row): what dropping a view would score, read by :mod:`pipeline.store.views`."""
    for name, rows, probs in (("valid_views", valid_idx, valid_views), ("test_views", np.arange(test_views.shape[1]),
                                                                        test_views)):
        io.write_parquet(layout.fold_predictions(fold, name), view_frame(view_names, rows, probs))
