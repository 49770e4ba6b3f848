"""``make export``: the chosen ensemble as a folder that predicts offline (a Kaggle code competition).

The folder holds everything the notebook needs and nothing it must download::

    export/<competition>/
        predict.py              python predict.py --images <dir> --sample-submission <csv> --out submission.csv
        export.json             task, classes, submission format, the blend's state and decision, and per model:
                                architecture, input size, normalisation, interpolation, resize, TTA views, folds
        models/<run>/fold<k>.safetensors   the checkpoints the blend reads (weight > 0)
        kfold_ensembler-<version>-py3-none-any.whl   this package (predict.py puts it on sys.path)
        cost.csv                ms per image of each fold model and TTA view, measured here (the device named)
        manifest.json           every file's sha256, the code version, the run hashes, the blend, the expected CV

It is built in a temporary folder beside ``OUT`` and renamed into place at the end, so a
refusal (a missing run, a checkpoint whose checksum is not its run's, a method without
a stored state) or a crash leaves no export behind; the temporary folder a ``kill -9``
leaves (``.<name>.*.tmp``) is removed by the next export to the same place.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import Config
from pipeline.core import io
from pipeline.core.errors import PipelineError
from pipeline.core.io import file_sha256
from pipeline.core.report import format_table
from pipeline.ensemble.fitted import FittedError, load_fitted, reduce_record
from pipeline.ensemble.records import FittedRecord, RecordError, RunEntry
from pipeline.export.budget import BudgetError
from pipeline.export.budgeted import apply_budget, log_piece_values
from pipeline.export.inputs import image_folder, image_pattern, test_image_paths  # noqa: F401 - re-exported
from pipeline.export.cost import (COST_FILE, cost_summary, measure_costs, planning_costs, projected_seconds,
                                  startup_seconds)
from pipeline.export.spec import SPEC_FILE, parse_spec
from pipeline.export.wheel import PREDICT_PY, PREDICT_REQUIRES, build_wheel  # noqa: F401 - PREDICT_REQUIRES re-exported

log = logging.getLogger(__name__)

EXPORT_VERSION = 1

class ExportError(PipelineError, ValueError):
    """The export cannot be made; nothing was written. The message names the file or value and the fix."""


def _checked_runs(config: Config, record: FittedRecord) -> list:
    """Each run of the record with its metadata, after every refusal check.

    Raises
    ------
    ExportError
        A run is missing, imported (no checkpoints), retrained since the ensemble, or a
        checkpoint is missing or differs from the one the ensemble recorded.
    """
    from pipeline.store import RunLayout, StoreError, read_meta

    out = []
    for stored in record.runs:
        layout = RunLayout(config.runs_dir / stored.name)
        try:
            meta = read_meta(layout)
        except StoreError as exc:
            raise ExportError(f"run {stored.name}: {exc}") from None
        if meta is None or meta.status != "finished":
            raise ExportError(
                f"run {stored.name} of {record.name} is missing or unfinished ({layout.meta}); "
                "retrain it (make train MODEL=...) and rerun make ensemble"
            )
        if meta.config is None or not stored.checkpoints:
            raise ExportError(
                f"run {stored.name} has no checkpoints (imported predictions): an export recomputes "
                "every model; export a method that does not use it (METHOD=<method>)"
            )
        if meta.config_hash != stored.config_hash:
            raise ExportError(
                f"run {stored.name} was retrained since the last ensemble (settings hash "
                f"{meta.config_hash} != {stored.config_hash}); rerun make ensemble"
            )
        for fold in sorted(int(f) for f in meta.folds_done):
            path = layout.best(fold)
            expected = stored.checkpoints.get(str(fold))
            if not path.is_file():
                raise ExportError(
                    f"checkpoint {path} is missing; retrain the fold (make train MODEL={stored.name} "
                    f"FOLDS={fold} FORCE=1) and rerun make ensemble"
                )
            actual = file_sha256(path)
            if expected is None or actual != expected:
                raise ExportError(
                    f"checkpoint {path} does not match its run: its sha256 differs from the one the "
                    "ensemble recorded; rerun make predict / make ensemble for this run"
                )
            trained = (meta.folds or {}).get(str(fold), {}).get("checkpoint_sha256")
            if trained is not None and trained != actual:  # runs made before this was recorded have none
                raise ExportError(
                    f"checkpoint {path} does not match its run: the run's predictions were made with "
                    f"another file (sha256 {trained[:12]}... in meta.json); rerun make predict "
                    f"MODEL={stored.name} and make ensemble"
                )
        out.append((stored, layout, meta))
    return out


def remove_stale_builds(out: Path) -> list[Path]:
    """Remove the temporary build folders (``.<name>.*.tmp`` beside ``out``) an export killed mid-way left.

    A build removes its own folder when it fails; only a killed process (``kill -9``, a lost machine) leaves
    one. Two exports to the same folder at once are not supported (the second would replace the first), so
    any such folder is a leftover.

    Returns
    -------
    list of Path
        The folders removed.
    """
    removed = []
    if out.parent.is_dir():
        for stale in sorted(out.parent.glob(f".{out.name}.*.tmp")):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
                removed.append(stale)
                log.info(f"removed {stale}, left by an export that was killed")
    return removed


def replace_problem(out: Path) -> str | None:
    """Why ``out`` may not be replaced, or None: only an earlier export, unchanged since it was written, is replaced."""
    if not out.exists():
        return None
    manifest = out / "manifest.json"
    try:
        files = io.read_json(manifest)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{out} exists and is not an export made by the pipeline"
    present = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"manifest.json"}
    if present != set(files) or any(file_sha256(out / name) != digest for name, digest in files.items()):
        return f"{out} is an earlier export whose files changed since it was written"
    return None


def model_entry(config: Config, stored: RunEntry, layout, meta, competition) -> dict:
    """What the predictor needs to rebuild one run's fold models and their inputs (see :mod:`pipeline.export.predict`).
    """
    from pipeline.config import TrainConfig
    from pipeline.data.images import input_size
    from pipeline.train.heads import Head
    from pipeline.vision.models import create_model, data_config

    train = {**meta.config, "pretrained": False, "device": "auto"}  # weights come from the export: nothing downloaded
    cfg = TrainConfig.model_validate(train)
    head = Head(competition.task, meta.loss, competition.targets)
    n_outputs = head.n_outputs(len(competition.classes))
    model = create_model(cfg.model, n_outputs, False, cfg.drop_rate, **cfg.model_kwargs)
    dcfg = data_config(model, cfg.image_size, cfg.mean, cfg.std, cfg.interpolation)
    batch = meta.batch_size_found if cfg.batch_size == "auto" else cfg.batch_size
    folds = []
    for fold in sorted(int(f) for f in meta.folds_done):
        info = (meta.folds or {}).get(str(fold), {})
        folds.append(
            {
                "fold": fold,
                "file": f"models/{stored.name}/fold{fold}.safetensors",
                "tta": info.get("tta") or meta.tta,
                "sha256": stored.checkpoints[str(fold)],
            }
        )
    return {
        "run": stored.name,
        "config_hash": stored.config_hash,
        "timm_name": meta.timm_name,
        "loss": meta.loss,
        "n_outputs": n_outputs,
        "train": cfg.model_dump(),
        "data": {
            "image_size": dcfg.image_size,
            "mean": list(dcfg.mean),
            "std": list(dcfg.std),
            "interpolation": dcfg.interpolation,
        },
        # the run's test store: its decoded-image cache (train.cache disk, or auto where it had room) resized once
        # to the cache side before the input resize; read directly otherwise
        "resize": {
            "mode": "cache" if cfg.cache in ("disk", "auto") else "direct",
            "target": input_size(cfg, len(competition.classes)),
            "margin": cfg.cache_margin,
        },
        "batch_size": int(batch) * 2,  # the batch predict_fold used for the test set
        "folds": folds,
    }


def run_export(
    config: Config, method: str = "submission", out: Path | None = None, force: bool = False, check: bool = False,
    budget: str | float | None = None, test_images: int | None = None,
) -> dict:
    """Write the export folder of a stored candidate.

    Parameters
    ----------
    config : Config
    method : str
        ``submission`` (the chosen one) or a candidate of the last ensemble (``caruana``, ``single-<run>``).
    out : Path, optional
        Default ``export/<competition>`` under the output folder.
    force : bool
        Replace an existing export folder.
    check : bool
        Run the exported predictor on the competition's test images and compare with the submission file (with a
        budget that dropped pieces: time it and count the labels that agree).
    budget : str or float, optional
        The time prediction may take (``2h``, ``90m``, seconds, or ``50%`` of the whole ensemble's projected
        time); default ``export.budget``. What does not
        fit is dropped (:mod:`pipeline.export.budget`) and the blend refitted on what is kept.
    test_images : int, optional
        The number of test images the budget is for; default ``export.test_images``, else this test set's.

    Returns
    -------
    dict
        ``out``, ``bytes``, ``files``, and with ``check`` the comparison.

    Raises
    ------
    ExportError, FittedError
        Before anything is written.
    """
    from pipeline.data import load_competition
    from pipeline.store import code_version
    from pipeline.task.metrics import get_metric

    out = Path(out) if out else config.out / "export" / config.competition.name
    budget = config.export.budget if budget is None else budget
    test_images = config.export.test_images if test_images is None else test_images
    budget_seconds = budget_share = None
    if budget is not None:
        from pipeline.export.budget import parse_budget

        try:
            budget_seconds, budget_share = parse_budget(budget)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
    if test_images is not None and (isinstance(test_images, bool) or int(test_images) != test_images
                                    or test_images < 1):
        raise ExportError(f"TEST_IMAGES={test_images!r}: give the number of test images the notebook predicts (>= 1)")
    remove_stale_builds(out)
    problem = None if force else replace_problem(out)
    if problem:
        raise ExportError(f"{problem}; remove it, pass OUT=<another folder>, or FORCE=1 to replace it")
    try:
        record = load_fitted(config, method)
    except FittedError as exc:
        raise ExportError(str(exc)) from None
    full_runs = record.run_names()
    record = reduce_record(record)
    competition = load_competition(config, check_image_files=False)
    runs = _checked_runs(config, record)
    metric = get_metric(config.competition.metric)
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        models = []
        for stored, layout, meta in runs:
            entry = model_entry(config, stored, layout, meta, competition)
            for fold in entry["folds"]:
                target = tmp / fold["file"]
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(layout.best(fold["fold"]), target)
                if file_sha256(target) != fold["sha256"]:  # changed while copying
                    raise ExportError(f"{layout.best(fold['fold'])} changed while it was copied; export again")
            models.append(entry)
        targets = competition.targets
        spec = {
            "version": EXPORT_VERSION,
            "competition": config.competition.name,
            "task": competition.task,
            "classes": [str(c) for c in competition.classes],
            "id_column": competition.id_column,
            "target_column": competition.target_column,
            "metric": metric.name,
            "metric_needs": metric.needs,
            "submission_columns": list(competition.sample_submission.columns),
            "image_pattern": image_pattern(config.competition.test_images),
            "targets": {
                "columns": list(targets.columns),
                "labels": list(targets.labels),
                "value_range": list(targets.value_range) if targets.value_range else None,
                "value_mean": float(targets.value_mean),
                "value_std": float(targets.value_std),
            },
            "ensemble": record.model_dump(mode="json"),
            "models": models,
            # a stacker fitted with metadata columns reads them from the competition's test table (--test-csv)
            "test_csv": Path(config.competition.test_csv).name if record.extra_features else None,
        }
        # what predict.py will check on load is checked before it is written (and every path is inside tmp)
        try:
            parse_spec(spec, tmp / SPEC_FILE, check_files=True)
        except RecordError as exc:
            raise ExportError(str(exc)) from None
        io.write_json(tmp / SPEC_FILE, spec)
        io.write_text(tmp / "predict.py", PREDICT_PY)
        wheel = build_wheel(tmp)
        # what each (model, fold model, view) costs per image here: what a time limit can afford (cost.csv)
        costs = measure_costs(tmp, spec, images=test_image_paths(config, competition))
        startup = startup_seconds()  # a fresh interpreter importing torch and timm: what predict.py pays first
        budget_plan = None
        if budget is not None:
            try:
                budget_plan, record, costs = apply_budget(config, record, competition, costs, startup, spec, tmp,
                                                          budget_seconds, test_images or len(competition.test_ids),
                                                          budget_share)
            except (BudgetError, RecordError) as exc:
                raise ExportError(str(exc)) from None
            models = spec["models"]
        io.write_csv(tmp / COST_FILE, costs)
        files = {p.relative_to(tmp).as_posix(): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {
            "version": EXPORT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "code_version": code_version(),
            "method": method,
            "candidate": record.name,
            "chosen": record.chosen,
            "expected_cv": {"metric": metric.name, "nested_cv": record.nested_cv, "cv": record.cv},
            "runs": {m["run"]: m["config_hash"] for m in models},
            "runs_left_out": [r for r in full_runs if r not in {m["run"] for m in models}],
            "blend": None
            if record.blend is None
            else {
                "method": record.blend.method,
                "weights": record.blend.weights,
                "temperature": record.blend.temperature,
            },
            "apply": record.apply,
            "decision": record.decision,
            "submission_file": record.submission_file,
            "startup_seconds": startup,
            "budget": None if budget_plan is None else {
                "seconds": budget_plan.budget_seconds,
                "share": budget_share,
                "test_images": test_images or len(competition.test_ids),
                "projected_seconds": budget_plan.seconds,
                "full_seconds": budget_plan.seconds_full,
                "estimated_change": budget_plan.estimated_change,
                "dropped": budget_plan.table(),
            },
            "wheel": wheel.name,
            "files": files,
        }
        io.write_json(tmp / "manifest.json", manifest)
        tmp.chmod(0o755)  # mkdtemp's folder is the owner's only; the export is shared (uploaded as a dataset)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log.info(
        f"exported {record.name} ({len(models)} model(s), "
        f"{sum(len(m['folds']) for m in models)} checkpoints, {size / 2**20:.1f} MiB) to {out} "
        f"in {time.perf_counter() - started:.1f}s"
    )
    n_test = len(competition.test_ids)
    planned = planning_costs(costs)  # each run's fold models at the median of their timings
    log.info(format_table(cost_summary(planned).to_dict("records"),
                          f"prediction cost on {costs['device'].iloc[0]} ({COST_FILE}: each fold model and view)")
             + f"\nthe {n_test} test images: about {projected_seconds(planned, n_test, startup):.1f}s "
             f"({projected_seconds(planned, 1000, startup):.2f}s for 1,000 images: the forward passes, each fold "
             f"model's loading and decoding, {startup:.1f}s to start)")
    if budget_plan is None:
        log_piece_values(config, record, competition, costs, n_test, startup)
    result = {"out": str(out), "bytes": size, "files": sorted(files) + ["manifest.json"], "candidate": record.name,
              "costs": costs, "budget": budget_plan, "record": record}
    if check:
        budgeted = budget_plan is not None and bool(budget_plan.dropped)
        result["check"] = check_export(config, out, method, record, budgeted=budgeted)
    return result


def compare_submissions(got, expected, id_column: str, atol: float = 1e-6) -> str | None:
    """Why two submissions differ, or None when they agree.

    Parameters
    ----------
    got, expected : DataFrame
        Submissions read back from CSV.
    id_column : str
    atol : float
        Largest difference allowed in a numeric column (probabilities, values); ids and
        label columns must be identical.

    Returns
    -------
    str or None
    """
    if list(got.columns) != list(expected.columns) or len(got) != len(expected):
        return f"columns or rows differ: {list(got.columns)} x {len(got)} vs {list(expected.columns)} x {len(expected)}"
    for column in got.columns:
        a, b = got[column].astype(str).to_numpy(), expected[column].astype(str).to_numpy()
        numeric = (
            column != id_column
            and pd.api.types.is_numeric_dtype(got[column])
            and pd.api.types.is_numeric_dtype(expected[column])
        )
        if not numeric:
            if not (a == b).all():
                row = int(np.flatnonzero(a != b)[0])
                return f"column {column!r} differs at row {row}: {a[row]!r} vs {b[row]!r}"
            continue
        worst = float(np.max(np.abs(got[column].to_numpy(float) - expected[column].to_numpy(float)))) if len(a) else 0.0
        if worst > atol:
            return f"column {column!r} differs by up to {worst:.3g} (tolerance {atol:g})"
    return None


def check_export(config: Config, out: Path, method: str, record: FittedRecord, budgeted: bool = False) -> dict:
    """Run the exported predictor on the competition's own test images; compare with the stored submission file.

    A budgeted export that dropped pieces predicts otherwise by design: it is timed, and the share of rows whose
    labels agree with the full ensemble's is reported instead.

    Raises
    ------
    ExportError
        If the predictions differ (the export folder is kept for inspection).
    """
    from io import StringIO

    from pipeline.export.predict import predict_folder

    test_dir = (config.data_dir / config.competition.test_images).parent
    while "{" in str(test_dir):
        test_dir = test_dir.parent
    started = time.perf_counter()
    got = predict_folder(
        out,
        test_dir,
        config.data_dir / config.competition.sample_submission,
        device="auto",
        pattern=image_pattern(config.competition.test_images),
        progress=False,
        test_csv=config.data_dir / config.competition.test_csv if config.competition.test_csv else None,
    )
    seconds = time.perf_counter() - started
    name = "submission.csv" if method == "submission" else record.submission_file
    expected = pd.read_csv(config.submissions_dir / name, dtype={config.competition.id_column: str})
    got = pd.read_csv(StringIO(got.to_csv(index=False)), dtype={config.competition.id_column: str})
    if budgeted:
        from pipeline.export.budgeted import row_labels

        agree = float(np.mean(row_labels(got, config.competition.id_column)
                              == row_labels(expected, config.competition.id_column)))
        log.info(f"check: the budgeted export predicted {len(got)} rows in {seconds:.1f}s; {agree:.1%} of their "
                 f"labels agree with the full ensemble's {name}")
        return {"file": name, "rows": len(got), "seconds": seconds, "agreement": agree}
    problem = compare_submissions(got, expected, config.competition.id_column)
    if problem:
        raise ExportError(
            f"check: the exported predictor's submission differs from {config.submissions_dir / name}: {problem}"
        )
    log.info(f"check: the exported predictor reproduces {name} ({len(got)} rows, {seconds:.1f}s)")
    return {"file": name, "rows": len(got), "seconds": seconds}
