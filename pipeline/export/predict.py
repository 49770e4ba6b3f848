"""The exported ensemble's predictor: test images in, ``submission.csv`` out, offline (a Kaggle code competition).

It reads an export folder (``make export``: ``export.json``, the fold checkpoints) and
recomputes the chosen submission with the training code itself: each fold model is
built by :func:`pipeline.train.model.prepare_model` (``pretrained=False``; weights from
the export), images go through the same host resize (and the decoded-image cache's
resize when the run read its images from the cache), the same device transform and the
same TTA views in :func:`pipeline.train.predict.predict_views`; fold predictions are
kept as the run stores them (float32 means over views, averaged over folds in float64),
then the stored blend is applied per fold model as ``make ensemble`` applied it
(:func:`pipeline.ensemble.fitted.blend_test`), the stored decision, and the sample submission's
format (:func:`pipeline.task.tasks.submission_frame`).

The export's ``predict.py`` calls :func:`main`. Everything is checked before the first model is built
(hours of a Kaggle notebook's time): the arguments (:func:`check_arguments`), ``export.json`` against its schema
(:mod:`pipeline.export.spec`), every checkpoint's sha256, the sample submission's ids and every test image's
header. Every refusal is one line, ``error: ...``, exit code 2, naming the file; the submission is written
atomically, so a failure never leaves half a file at ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.durations import format_duration
from pipeline.core.errors import PipelineError
from pipeline.core.io import write_csv
from pipeline.ensemble.records import RecordError
from pipeline.export.inputs import ExportPredictError, check_arguments, check_images_open, load_spec, read_sample
from pipeline.export.inputs import read_spec  # noqa: F401 - re-exported: export.json as plain data, checked
from pipeline.export.spec import ExportSpec, FoldEntry, ModelEntry, verify_checkpoints

def spec_targets(spec: ExportSpec):
    """The competition's targets as the export stored them (names, labels, value scale; no rows).

    Returns
    -------
    pipeline.task.tasks.Targets
        What the task head's activation and the submission format read.
    """
    from pipeline.task.tasks import Targets

    t = spec.targets
    return Targets(np.zeros(0), t["columns"], t["labels"], tuple(t["value_range"]) if t["value_range"] else None,
                   t["value_mean"], t["value_std"])


def metadata_features(test_csv: Path, id_column: str, columns: list[str], ids) -> np.ndarray:
    """The stacker's metadata columns of the test table, in the sample submission's row order.

    The same rule as the ensemble's :func:`pipeline.ensemble.stacker_features`: every id
    has a row, every value is a number.

    Raises
    ------
    ExportPredictError
        Naming the missing column, the ids without a row, or the columns that are not numbers.
    """
    table = pd.read_csv(test_csv, dtype=str, keep_default_na=True)
    missing = [c for c in [id_column, *columns] if c not in table.columns]
    if missing:
        raise ExportPredictError(f"{test_csv} has no column(s) {missing}")
    values = table.set_index(table[id_column].astype(str))
    ids = pd.Index(np.asarray(ids, dtype=str))
    absent = ids[~ids.isin(values.index)].tolist()
    if absent:
        raise ExportPredictError(f"{test_csv} has no row for id(s) {absent[:5]}")
    numeric = values.loc[ids, columns].apply(pd.to_numeric, errors="coerce")
    if numeric.isna().any().any():
        raise ExportPredictError(
            f"column(s) {numeric.columns[numeric.isna().any()].tolist()} of {test_csv} are not all numbers"
        )
    return numeric.to_numpy(dtype=np.float64)


def image_paths(images: Path, pattern: str, ids: np.ndarray) -> list[Path]:
    """Each test id's image file under ``images`` (``pattern`` as ``{id}.png``).

    Raises
    ------
    ExportPredictError
        Naming the first missing files, and the ``--pattern`` option.
    """
    root = Path(images)
    paths = [root / pattern.format(id=i) for i in ids]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ExportPredictError(
            f"{len(missing)} of {len(paths)} test images are missing, e.g. {missing[:3]}; "
            f"check --images (a folder) and --pattern (now {pattern!r})"
        )
    return paths


class TestImages:
    """The test images as the run's test store gave them: decoded, and resized as its cache did when it used one.

    The same interface as :class:`pipeline.data.ImageStore` for
    :class:`pipeline.train.dataset.ImageDataset` (length, indexing, ``in_memory``).
    """

    def __init__(self, paths: list[Path], cache_side: int | None):
        self.paths = list(paths)
        self.side = cache_side
        self.in_memory = False

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        from pipeline.data import decode_image
        from pipeline.data.cache import resize_for_cache

        image = decode_image(self.paths[index])
        return image if self.side is None else resize_for_cache(image, self.side)


def cache_side_for(paths: list[Path], resize: dict) -> int | None:
    """The side the run's image cache would have had for these images, or None when it read files directly."""
    if resize.get("mode") != "cache":
        return None
    from pipeline.data.cache import cache_side, largest_side

    return cache_side(resize["target"], resize["margin"], largest_side([str(p) for p in paths]))


class Progress:
    """A bar over every (model, fold, batch), and an estimate of the whole job after the first batches.

    Kaggle stops a notebook at its time limit; the estimate is printed early (after
    ``estimate_after`` batches past the first, which pays for start-up) so that a
    user learns in minutes whether the run will fit.
    """

    def __init__(self, total_batches: int, n_images: int, enabled: bool = True, estimate_after: int = 3,
                 time_limit: float | None = None):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total_batches, desc="predict", unit="batch", disable=not enabled, mininterval=2.0, file=sys.stderr
        )
        self.total, self.n_images, self.estimate_after = total_batches, n_images, estimate_after
        self.done, self.started, self.first_done = 0, time.perf_counter(), None
        self.estimate: float | None = None
        self.time_limit, self.warned = time_limit, False

    def wrap(self, loader):
        for batch in loader:
            yield batch
            self.step()

    def step(self) -> None:
        self.done += 1
        self.bar.update(1)
        now = time.perf_counter()
        if self.done == 1:
            self.first_done = now
            return
        # models differ in cost: the first estimate comes from the first model's batches, so it is said again,
        # from every batch so far, at a quarter and at half of the work
        checkpoints = {1 + self.estimate_after, self.total // 4, self.total // 2}
        if self.done in checkpoints and self.done < self.total:
            per_batch = (now - self.first_done) / (self.done - 1)
            self.estimate = (self.first_done - self.started) + per_batch * (self.total - 1)
            when = (
                "after the first batches"
                if self.done == 1 + self.estimate_after
                else f"at {self.done}/{self.total} batches"
            )
            print(
                f"estimated time for the whole test set ({self.n_images} images, {self.total} batches over every "
                f"model, fold and TTA; {when}): {self.estimate:.0f}s "
                f"({self.estimate / max(self.n_images, 1) * 1000:.1f}s per 1,000 images)",
                file=sys.stderr,
                flush=True,
            )
            if self.time_limit is not None and self.estimate > self.time_limit and not self.warned:
                self.warned = True  # once: the later estimates only refine it
                print(
                    f"warning: at this pace the whole test set takes about {format_duration(self.estimate)}, past "
                    f"--time-limit {format_duration(self.time_limit)}: the notebook would be stopped before it "
                    "writes the submission. Export a smaller ensemble (make export METHOD=<a single run or a "
                    "lighter blend>) or predict on a GPU (--device cuda)",
                    file=sys.stderr,
                    flush=True,
                )

    def close(self) -> None:
        self.bar.close()


def parse_duration(text: str, what: str = "--time-limit") -> float:
    """Seconds in ``text`` (:func:`pipeline.core.durations.parse_duration`).

    Raises
    ------
    ExportPredictError
        For anything but a duration above zero (``9h``, ``90m``, ``3600s``).
    """
    from pipeline.core.durations import parse_duration as parse

    try:
        return parse(text, what)
    except ValueError as exc:
        raise ExportPredictError(str(exc)) from None


def prediction_runtime(device: str, cfg, workers: int | None):
    """The device, the run's autocast there, and loader workers (decoding overlaps the GPU; the CPU keeps its cores)."""
    import torch

    from pipeline.train.runtime import Runtime, amp_dtype_for

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ExportPredictError(
            "--device cuda: no CUDA device is visible; turn the notebook's GPU on or pass --device cpu"
        )
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if workers is None:
        workers = 4 if cuda else 0
    # as the run's own test predictions were made: its memory format, and its autocast on a GPU (float32 on the CPU)
    return Runtime(
        dev,
        amp_dtype_for(cfg, cuda),
        bool(cfg.channels_last),
        workers,
        cuda,
        persistent_workers=False,
        prefetch_factor=2 if workers else None,
    )


def model_inputs(model: ModelEntry, cfg, runtime):
    """The run's device transform (its input size, normalisation and interpolation), as its training built it."""
    from pipeline.train.runtime import device_transform
    from pipeline.vision.models import DataConfig

    data = model.data
    dcfg = DataConfig(data["image_size"], tuple(data["mean"]), tuple(data["std"]), data["interpolation"])
    return device_transform(cfg, dcfg, runtime)


def load_fold_model(folder: Path, model: ModelEntry, fold: FoldEntry, cfg, runtime):
    """One exported fold model: built with ``pretrained=False`` and loaded from its checkpoint on the device.

    The file's sha256 is checked against ``export.json`` before any model is built (:func:`verify_checkpoints`).
    """
    from safetensors.torch import load_file as load_safetensors

    from pipeline.train.model import prepare_model

    net = prepare_model(cfg, model.n_outputs, runtime, False)
    net.load_state_dict(load_safetensors(str(Path(folder) / fold.file), device=str(runtime.device)))
    return net


def predict_model(
    folder: Path,
    model: ModelEntry | dict,
    spec: ExportSpec | dict,
    store: TestImages,
    device: str,
    batch_size: int | None,
    progress: Progress,
    workers: int | None = None,
) -> np.ndarray:
    """One exported run's test predictions per fold model: ``(n_folds, n_rows, n_cols)``, float64.

    As ``make train`` stores them: each fold's mean over TTA views (float32), read as float64.
    """
    from pipeline.config import TrainConfig
    from pipeline.train.dataset import ImageDataset
    from pipeline.train.heads import Head
    from pipeline.train.predict import predict_views
    from pipeline.train.runtime import make_loader
    from pipeline.vision.host import HostTransform
    from pipeline.vision.views import parse_view

    # export.json's entries as plain data (read_spec) or typed (load_spec): one checked form below
    spec = spec if isinstance(spec, ExportSpec) else ExportSpec.model_validate(spec)
    model = model if isinstance(model, ModelEntry) else ModelEntry.model_validate(model)
    cfg = TrainConfig.model_validate(model.train)
    runtime = prediction_runtime(device, cfg, workers)
    head = Head(spec.task, model.loss, spec_targets(spec))
    host = HostTransform(model.data["image_size"], model.data["interpolation"])
    inputs = model_inputs(model, cfg, runtime)
    size = batch_size or model.batch_size
    out = []
    for fold in model.folds:
        net = load_fold_model(folder, model, fold, cfg, runtime)
        views = [parse_view(v) for v in fold.tta]
        loader = make_loader(ImageDataset(store, np.arange(len(store)), host), size, runtime)
        probs = predict_views(net, progress.wrap(loader), views, runtime, head.activate, inputs)
        out.append(probs.mean(axis=0).astype(np.float32).astype(np.float64))
        del net
    return np.stack(out)


def predict_folder(
    folder: Path,
    images: Path,
    sample_submission: Path,
    device: str = "auto",
    batch_size: int | None = None,
    pattern: str | None = None,
    progress: bool = True,
    workers: int | None = None,
    test_csv: Path | None = None,
    time_limit: float | None = None,
) -> pd.DataFrame:
    """The exported ensemble's submission for a test set.

    Parameters
    ----------
    folder : Path
        The export folder.
    images : Path
        The folder of test images.
    sample_submission : Path
        The competition's sample submission: its ids (in its order) and columns.
    device : {"auto", "cpu", "cuda"}
    batch_size : int, optional
        Default: the batch the run predicted its own test set with.
    pattern : str, optional
        An image's path under ``images`` (default: the export's, e.g. ``{id}.png``).
    progress : bool
        Show the bar (the time estimate is printed either way).
    workers : int, optional
        Loader processes decoding images (default 4 on a GPU, 0 on the CPU).
    test_csv : Path, optional
        The competition's test table, for a stacker fitted with metadata columns
        (``ensemble.stacker_features``); required then.
    time_limit : float, optional
        Seconds the whole prediction may take (a Kaggle notebook's limit): a warning as soon as the
        projected time is past it.

    Returns
    -------
    DataFrame
        In the sample submission's format, checked against it.
    """
    from pipeline.ensemble.fitted import blend_test
    from pipeline.task.tasks import submission_frame

    folder = Path(folder)
    spec = load_spec(folder)
    sample = read_sample(Path(sample_submission), spec)
    id_column = spec.id_column
    extra_features = spec.ensemble.extra_features
    if extra_features and test_csv is None:
        raise ExportPredictError(
            f"this ensemble's stacker reads the metadata column(s) {extra_features} "
            f"of the test table: pass --test-csv <the competition's {spec.test_csv or 'test.csv'}>"
        )
    paths = image_paths(images, pattern or spec.image_pattern, sample[id_column].to_numpy())
    check_images_open(paths)
    extra_test = None
    if extra_features:
        extra_test = metadata_features(test_csv, id_column, extra_features, sample[id_column])
    try:
        verify_checkpoints(folder, spec)
    except RecordError as exc:
        raise ExportPredictError(str(exc)) from None
    rows_per_batch = [batch_size or m.batch_size for m in spec.models]
    total = sum(len(m.folds) * -(-len(paths) // b) for m, b in zip(spec.models, rows_per_batch))
    bar = Progress(total, len(paths), enabled=progress, time_limit=time_limit)
    stores: dict = {}
    fold_tests = []
    try:
        for model in spec.models:
            side = cache_side_for(paths, model.resize)
            store = stores.setdefault(side, TestImages(paths, side))
            fold_tests.append(predict_model(folder, model, spec, store, device, batch_size, bar, workers))
    finally:
        bar.close()
    # each run's test predictions as the run stores them: the fold models' mean, summed fold by fold
    tests = np.zeros((len(fold_tests),) + fold_tests[0].shape[1:])
    for m, per_fold in enumerate(fold_tests):
        for k in range(per_fold.shape[0]):
            tests[m] += per_fold[k] / per_fold.shape[0]
    # a budgeted export may keep other fold models per run: its blend then meets the fold means (fold_mean)
    fold_tests = np.stack(fold_tests) if len({f.shape[0] for f in fold_tests}) == 1 else None
    pred, decided = blend_test(spec.ensemble, tests, fold_tests, extra_test)
    return submission_frame(
        sample, id_column, spec.target_column, spec.task, spec_targets(spec), pred, decided, spec.metric_needs
    )


def one_line(exc: BaseException) -> str:
    """An error's message on one line; an error re-raised from a loader worker keeps only its own last line."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if len(lines) > 1 and any("Traceback" in line for line in lines):
        # torch re-raises a worker's error with the worker's traceback in the message: "DataError: <message>"
        return lines[-1].split(": ", 1)[-1]
    return " ".join(lines)


def main(argv: list[str] | None = None, folder: Path | None = None) -> int:
    """``predict.py``'s command line; ``folder`` is the export folder (predict.py's own)."""
    parser = argparse.ArgumentParser(
        description="Predict the test set with an exported kfold-ensembler ensemble, offline."
    )
    parser.add_argument("--images", required=True, help="folder of the test images")
    parser.add_argument("--sample-submission", required=True, help="the competition's sample_submission.csv")
    parser.add_argument(
        "--out", default="submission.csv", help="where to write the submission (default submission.csv)"
    )
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu or cuda")
    parser.add_argument("--batch-size", type=int, help="images per batch (default: the run's)")
    parser.add_argument(
        "--test-csv", help="the competition's test table, when the blend reads metadata columns from it"
    )
    parser.add_argument(
        "--workers", type=int, help="loader processes decoding images (default 4 on a GPU, 0 on the CPU)"
    )
    parser.add_argument("--pattern", help="an image's file name under --images, with {id} (default: the export's)")
    parser.add_argument(
        "--export", default=str(folder) if folder else None, help="the export folder (default: predict.py's)"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (the time estimate is still printed)"
    )
    parser.add_argument(
        "--time-limit",
        help="the notebook's time limit (9h, 90m, 3600s): a warning as soon as the projected time is past it",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out)
    try:
        if args.export is None:
            raise ExportPredictError("--export: pass the folder make export wrote")
        check_arguments(out, Path(args.images), Path(args.sample_submission), args.batch_size, args.workers,
                        Path(args.test_csv) if args.test_csv else None)
        time_limit = parse_duration(args.time_limit) if args.time_limit is not None else None
        frame = predict_folder(
            Path(args.export),
            Path(args.images),
            Path(args.sample_submission),
            args.device,
            args.batch_size,
            args.pattern,
            progress=not args.no_progress,
            workers=args.workers,
            test_csv=Path(args.test_csv) if args.test_csv else None,
            time_limit=time_limit,
        )
        # atomically: a failure (a full disk, a kill) leaves the earlier file or none, never half a submission
        write_csv(out, frame)
    except PipelineError as exc:  # ours: the export, the inputs, an image that does not decode (DataError)
        message = one_line(exc)
        if "cannot decode image" in message:
            message += "; replace that file with a readable copy: every id of the sample submission needs its image"
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {len(frame)} rows in {time.perf_counter() - started:.1f}s")
    return 0
