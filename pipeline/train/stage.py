"""The train and predict stages: resolve a run, lock its folder, train or predict each fold, assemble its files.

Under ``torchrun`` (``make train GPUS=n``) every rank runs these functions: rank 0 alone
reads and writes the store and hands its results (or its error) to the other ranks.
"""


from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from pipeline.config import Config, TrainConfig, resolve_train_config
from pipeline.core import io
from pipeline.core.errors import PipelineError
from pipeline.core.hashing import json_hash
from pipeline.core.report import format_seconds, format_table, log_to_file
from pipeline.data import Competition
from pipeline.data.images import input_size, open_image_store
from pipeline.store import RunLayout, RunLock, RunMeta, StoreError, prediction_frame, read_meta, write_meta
from pipeline.train.batch_size import resolve_batch_size
from pipeline.train.dataset import FoldData
from pipeline.train.distributed import (SINGLE, DistContext, barrier, broadcast_object, init_distributed,
                                        launched_by_torchrun)
from pipeline.train.loop import train_fold
from pipeline.store.views import read_fold_predictions
from pipeline.train.predict import predict_fold
from pipeline.train.runtime import Runtime, select_runtime, use_cuda_for
from pipeline.train.spec import RunSpec, fold_list, new_meta, prepare_run, view_list
from pipeline.train.tracked import track_fold, track_run

log = logging.getLogger(__name__)


# -- several processes (torchrun) ------------------------------------------------------------


def start_distributed(config: Config, model: str, overrides: dict[str, Any] | None) -> DistContext:
    """Join torchrun's process group when launched by it (``make train GPUS=n``); a single process otherwise."""
    if not launched_by_torchrun():
        return SINGLE
    _, cfg = resolve_train_config(config, model, overrides)
    return init_distributed(cfg.ddp_backend, use_cuda_for(cfg))


def on_main(context: DistContext, work: Callable[[], object]):
    """Run ``work`` on rank 0 only and give its result, or its error, to every rank.

    Files are written by rank 0 alone; the other ranks must still take the same path
    (return, raise, or go on with the same metadata), or they would wait forever.
    """
    if not context.enabled:
        return work()
    outcome = None
    if context.is_main:
        try:
            outcome = ("ok", work())
        except (PipelineError, ValueError) as exc:
            broadcast_object(("error", exc), context)
            raise
    kind, value = broadcast_object(outcome, context)
    if kind == "error":
        raise value
    return value


@contextlib.contextmanager
def run_lock(run_dir: Path, context: DistContext):
    """The run folder's lock, held by rank 0 for all ranks; released once every rank is done."""
    if not context.enabled:
        with RunLock(run_dir):
            yield
        return
    lock = RunLock(run_dir)
    on_main(context, lock.__enter__)
    try:
        yield
        barrier(context)
    finally:
        if context.is_main:
            lock.__exit__(None, None, None)


def open_stores(config: Config, spec: RunSpec, context: DistContext) -> tuple[FoldData, int]:
    """The train and test images as ``train.cache`` says, and the input size they are cached for."""
    target = input_size(spec.cfg, len(spec.competition.classes))
    store = open_image_store(config, spec.cfg, spec.competition.train_paths, "train", target, progress=context.is_main)
    test_store = open_image_store(
        config, spec.cfg, spec.competition.test_paths, "test", target, progress=context.is_main
    )
    return FoldData(store, test_store, spec.competition.y, spec.folds, spec.head), target


def with_batch_size(spec: RunSpec, meta: RunMeta, runtime: Runtime, target: int) -> TrainConfig:
    """The run's settings with ``batch_size`` a number; ``auto`` is found once per run and kept in its metadata."""
    if spec.cfg.batch_size != "auto":
        return spec.cfg
    found = meta.batch_size_found
    if found is None:
        n_train = int(np.sum(spec.folds != spec.folds[0])) if len(spec.folds) else 1
        n_outputs = spec.head.n_outputs(len(spec.competition.classes))
        found = on_main(
            runtime.dist, lambda: resolve_batch_size(spec.cfg, runtime, target, n_outputs, n_train, head=spec.head)
        )
        if runtime.is_main:
            where = "the largest that fits the GPU" if runtime.is_cuda else "the CPU default"
            log.info("  batch_size auto: %d (%s)", found, where)
    meta.batch_size_found = int(found)
    return spec.cfg.model_copy(update={"batch_size": int(found)})


# -- the stages --------------------------------------------------------------------------------


def run_train(
    config: Config,
    model: str,
    folds_subset: list[int] | None = None,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
    competition: Competition | None = None,
    name: str | None = None,
    student=None,
) -> RunMeta:
    """Train (or resume) one run on the chosen folds; assemble its OOF files when every fold is done.

    Parameters
    ----------
    config : Config
    model : str
        A recipe name, a model alias or a timm name; it names the run.
    folds_subset : list of int, optional
        Train only these folds (the run stays ``partial`` until every fold is done).
    force : bool
        Retrain from scratch a run that exists with other settings or is finished.
    overrides : dict, optional
        Parsed ``key=value`` overrides (:func:`pipeline.config.parse_overrides`); ``train`` keys apply.
    competition : Competition, optional
        The loaded competition, when the caller has it already.
    name : str, optional
        The run's name (``NAME=``): the same recipe trained twice under two names makes two runs
        (a repeat, an ablation). Default: the recipe's name.
    student : pipeline.students.teacher.StudentPlan, optional
        ``make pseudo`` / ``make distill``: the teacher's targets for each fold (hashed into the run's
        settings, so a changed teacher retrains; recorded as ``meta.teacher``).

    Returns
    -------
    RunMeta
        The run's metadata (also in ``runs/<competition>/<run>/meta.json``).

    Raises
    ------
    StoreError
        If the run exists with other settings and ``force`` is not set, or another process holds it.
    """
    context = start_distributed(config, model, overrides)
    spec = on_main(context, lambda: prepare_run(config, model, overrides, competition, name))  # rank 0 makes the folds
    if student is not None:
        student.check(spec.cfg)
        spec.settings_hash = json_hash([spec.settings_hash, student.key()])
    fold_ids = fold_list(spec, folds_subset)
    layout = spec.layout
    with run_lock(layout.run_dir, context):
        meta, finished = on_main(context, lambda: open_run(spec, config, fold_ids, force))
        if finished:
            return meta
        if student is not None:
            meta.teacher = student.record()
        data, target = open_stores(config, spec, context)
        runtime = select_runtime(spec.cfg, data.store.in_memory, context)
        cfg = with_batch_size(spec, meta, runtime, target)
        views, view_names = view_list(spec.cfg)
        if context.is_main:
            amp = f" ({str(runtime.amp_dtype).replace('torch.', '')} autocast)" if runtime.amp_dtype else ""
            processes = f" x {context.world_size} processes" if context.enabled else ""
            log.info(
                "%s: %s on %s%s%s, folds %s, %d epochs, TTA views %s",
                spec.name,
                meta.timm_name,
                runtime.device,
                amp,
                processes,
                fold_ids,
                spec.cfg.epochs,
                view_names,
            )
        for fold in fold_ids:
            if fold in meta.folds_done:
                if context.is_main:
                    log.info("  fold %d: done before, skipped", fold)
                continue
            with log_to_file(layout.fold_log(fold), enabled=context.is_main):
                soft = None if student is None else student.fold_rows(fold, layout, spec.head, runtime, cfg)
                result = train_fold(
                    spec.name,
                    cfg,
                    fold,
                    data,
                    spec.competition.classes,
                    spec.metric,
                    runtime,
                    layout,
                    views,
                    view_names,
                    soft=soft,
                )
            mark_fold_done(layout, meta, fold, write=context.is_main)
            if not context.is_main:
                continue
            track_fold(config, spec, meta, fold, result)
            log.info(
                "  fold %d: %s %.4f (no TTA %.4f), best epoch %d/%d, %s, %.0f images/s, %.0f%% waiting for data",
                fold,
                spec.metric.name,
                result["score"],
                result["score_plain"],
                result["best_epoch"],
                result["epochs_run"],
                format_seconds(result["train_seconds"]),
                result["train_images_per_s"] or 0.0,
                100 * (result["data_wait_share"] or 0.0),
            )
        meta = on_main(context, lambda: assemble_run(spec, meta))
        if context.is_main:
            track_run(config, spec, meta, train_leaderboard(meta))
    return meta


def mark_fold_done(layout: RunLayout, meta: RunMeta, fold: int, write: bool = True) -> None:
    """Add ``fold`` to the run's finished folds; the one writer (rank 0, or the grid's driver) also saves
    ``meta.json`` and drops the fold's resume states, which a finished fold no longer needs."""
    meta.folds_done = sorted(set(meta.folds_done) | {fold})
    if not write:
        return
    write_meta(layout, meta)
    for state_file in (layout.state(fold), layout.previous_state(fold)):
        state_file.unlink(missing_ok=True)


def open_run(spec: RunSpec, config: Config, fold_ids: list[int], force: bool) -> tuple[RunMeta, bool]:
    """Read or start the run's metadata under its lock: (meta, True) if there is nothing left to train.

    Raises
    ------
    StoreError
        If the run exists with other settings and ``force`` is not set.
    """
    layout = spec.layout
    # FORCE=1 retrains from scratch without reading what is there, so it also repairs a damaged meta.json
    meta = None if force else read_meta(layout)
    if force and layout.run_dir.is_dir():
        for child in layout.run_dir.iterdir():
            if child != layout.lock:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    if meta is not None and meta.config_hash != spec.settings_hash:
        raise StoreError(
            f"run {layout.run_dir} exists with other settings (hash {meta.config_hash} != {spec.settings_hash}); "
            "pass FORCE=1 to retrain it from scratch, or change the recipe name"
        )
    if meta is not None and meta.status == "finished" and all(f in meta.folds_done for f in fold_ids):
        check_run_files(layout, spec.name)
        log.info("%s: already finished (CV %.4f); pass FORCE=1 to retrain", spec.name, meta.cv)
        return meta, True
    # temporary files a killed writer left behind: never read, only taking space; we hold the lock
    for stale in layout.run_dir.rglob(".*.tmp"):
        stale.unlink()
    meta = meta or new_meta(config, spec)
    meta.status = "running"
    write_meta(layout, meta)
    return meta, False


def run_predict(
    config: Config,
    model: str,
    overrides: dict[str, Any] | None = None,
    competition: Competition | None = None,
    name: str | None = None,
) -> RunMeta:
    """Re-predict a run's validation folds and the test set from its saved checkpoints (no training).

    This is how a Kaggle inference notebook works: checkpoints in, predictions out,
    with the TTA views of the current config. ``name`` is the run's name when it was
    trained under ``NAME=`` (default: the recipe's name).
    """
    context = start_distributed(config, model, overrides)
    spec = on_main(context, lambda: prepare_run(config, model, overrides, competition, name))
    layout = spec.layout
    with run_lock(layout.run_dir, context):
        meta = on_main(context, lambda: trained_meta(spec, model))
        data, target = open_stores(config, spec, context)
        runtime = select_runtime(spec.cfg, data.store.in_memory, context)
        cfg = with_batch_size(spec, meta, runtime, target)
        views, view_names = view_list(spec.cfg)
        for fold in meta.folds_done:
            result = predict_fold(
                cfg, fold, data, spec.competition.classes, spec.metric, runtime, layout, views, view_names
            )
            if not context.is_main:
                continue
            fold_info = layout.read_fold_info(fold)
            fold_info.update(result)
            io.write_json(layout.fold_info(fold), fold_info)
            log.info(
                "  fold %d: %s %.4f (no TTA %.4f), TTA %s",
                fold,
                spec.metric.name,
                result["score"],
                result["score_plain"],
                view_names,
            )
        meta = on_main(context, lambda: assemble_run(spec, meta))
        if context.is_main:
            track_run(config, spec, meta, train_leaderboard(meta))
    return meta


def check_run_files(layout: RunLayout, model: str) -> None:
    """A finished run's OOF and test files must read; a damaged one is named with the way to rewrite it.

    Raises
    ------
    StoreError
        Naming the file, why it does not read, and the commands that rewrite it.
    """
    for path in (layout.oof, layout.test):
        try:
            pd.read_parquet(path)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise StoreError(
                f"{path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); rewrite "
                f"it from the checkpoints with 'make predict MODEL={model}', or retrain with "
                f"'make train MODEL={model} FORCE=1'"
            ) from None


def trained_meta(spec: RunSpec, model: str) -> RunMeta:
    """The metadata of a run trained with these settings whose checkpoints are all there, or an error saying
    what to run first."""
    meta = read_meta(spec.layout)
    if meta is None:
        named = f" NAME={spec.name}" if spec.name != model else ""
        raise StoreError(f"no run {spec.layout.run_dir}; train it first with 'make train MODEL={model}{named}'")
    if meta.config_hash != spec.settings_hash:
        raise StoreError(
            f"run {spec.layout.run_dir} was trained with other settings; predict with the same recipe and ARGS"
        )
    for fold in meta.folds_done:
        if not spec.layout.best(fold).is_file():
            raise StoreError(
                f"run {spec.name}: fold {fold} has no checkpoint ({spec.layout.best(fold)} is missing); "
                f"retrain that fold with 'make train MODEL={model} FOLDS={fold} FORCE=1'"
            )
    return meta


def assemble_run(spec: RunSpec, meta: RunMeta) -> RunMeta:
    """Join the fold files into the run's id-keyed OOF and test files once every fold is done."""
    layout = spec.layout
    all_folds = sorted(int(f) for f in np.unique(spec.folds))
    fold_infos = {f: layout.read_fold_info(f) for f in meta.folds_done}
    meta.folds = {str(f): {k: v for k, v in info.items() if k != "history"} for f, info in fold_infos.items()}
    if sorted(meta.folds_done) != all_folds:
        meta.status = "partial"
        write_meta(layout, meta)
        return meta
    classes = spec.competition.classes
    n_train = len(spec.folds)
    oof, oof_plain = np.zeros((n_train, len(classes))), np.zeros((n_train, len(classes)))
    test = np.zeros((len(spec.competition.test_ids), len(classes)))
    for fold in all_folds:
        rows, probs = read_fold_predictions(layout, fold, "valid")
        oof[rows] = probs
        rows, probs = read_fold_predictions(layout, fold, "valid_plain")
        oof_plain[rows] = probs
        test += read_fold_predictions(layout, fold, "test")[1] / len(all_folds)
    ids = spec.competition.train_ids
    io.write_parquet(layout.oof, prediction_frame(ids, oof, classes, spec.folds))
    io.write_parquet(layout.oof_plain, prediction_frame(ids, oof_plain, classes, spec.folds))
    io.write_parquet(layout.test, prediction_frame(spec.competition.test_ids, test, classes))
    y = spec.competition.y
    first = next(iter(fold_infos.values()))
    meta.status = "finished"
    meta.cv = spec.metric(y, oof)
    meta.cv_plain = spec.metric(y, oof_plain)
    meta.train_seconds = sum(info["train_seconds"] for info in fold_infos.values())
    meta.predict_seconds = sum(info["predict_seconds"] for info in fold_infos.values())
    meta.params, meta.image_size, meta.tta = first["params"], first["image_size"], first["tta"]
    meta.finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    meta.tta_gain = meta.cv - meta.cv_plain
    private = spec.competition.solution_labels()
    if private is not None:
        meta.private_lb = spec.metric(private, test)
    write_meta(layout, meta)
    return meta


def train_leaderboard(meta: RunMeta) -> str:
    """The per-fold table printed after a run."""
    rows = []
    for fold, info in sorted((meta.folds or {}).items(), key=lambda kv: int(kv[0])):
        rows.append(
            {
                "fold": int(fold),
                "best epoch": f"{info.get('best_epoch', '-')}/{info.get('epochs_run', '-')}",
                "score": info["score"],
                "no TTA": info["score_plain"],
                "train": format_seconds(info.get("train_seconds", 0.0)),
                "predict": format_seconds(info["predict_seconds"]),
                "images/s": None if info.get("train_images_per_s") is None else round(info["train_images_per_s"]),
                "data wait": None if info.get("data_wait_share") is None else f"{100 * info['data_wait_share']:.0f}%",
            }
        )
    if meta.status == "finished":
        rows.append(
            {
                "fold": "CV",
                "best epoch": "",
                "score": meta.cv,
                "no TTA": meta.cv_plain,
                "train": format_seconds(meta.train_seconds),
                "predict": format_seconds(meta.predict_seconds),
                "images/s": None,
                "data wait": None,
            }
        )
    title = f"{meta.name} ({meta.timm_name}, {meta.metric}) - {meta.status}"
    if meta.private_lb is not None:
        title += f", private LB {meta.private_lb:.4f}"
    return format_table(rows, title)
