"""The exported predictor (``pipeline/export/predict.py``) on export folders written by hand, in seconds.

No training and no ``make export``: each test writes fold checkpoints of timm's tiny models with known random
weights, an ``export.json`` as :func:`pipeline.export.build.model_entry` writes it, test images and a sample
submission, then checks the submission ``predict.py`` writes against one computed here from first principles:
each fold model's softmax on the normalised images and their mirror images, averaged over views, then over fold
models, then blended with the stored weights. The end-to-end tests (``tests/test_export.py``) train a demo first;
this file is the one the mutation run (``make mutate``) uses for the predictor.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from pipeline.blend import make_blend
from pipeline.config import TrainConfig
from pipeline.core.durations import format_duration
from pipeline.core.io import file_sha256
from pipeline.export import predict as export_predict
from pipeline.export.inputs import ExportPredictError
from pipeline.export.spec import ExportSpec

CLASSES = ["cat", "dog", "owl"]
SIZE = 32
# not ImageNet's: an export that read the wrong mean or std gives other numbers
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
# two runs of two architectures, two fold models each: (run, timm name, TTA views, seeds of the fold models)
RUNS = [
    ("r_res", "test_resnet", ["identity", "hflip"], (11, 12)),
    ("r_eff", "test_efficientnet", ["identity"], (21, 22)),
]
WEIGHTS = [0.7, 0.3]
# an export whose submission holds each class's probability (a log-loss competition)
PROBABILITIES = {"submission_columns": ["id", *CLASSES], "metric": ("log_loss", "proba")}
# each task shape as make export stores it: classes, targets, the head's loss and outputs, and the head's activation
# written out by hand (logits in, the stored prediction out)
TASKS = {
    "multiclass": dict(
        classes=CLASSES,
        loss="ce",
        n_outputs=3,
        activate=lambda logits: logits.softmax(dim=1),
        targets={"columns": CLASSES, "labels": CLASSES, "value_range": None, "value_mean": 0.0, "value_std": 1.0},
    ),
    # a softmax head of two logits stores the positive class's probability
    "binary": dict(
        classes=["no", "yes"],
        loss="ce",
        n_outputs=2,
        activate=lambda logits: logits.softmax(dim=1)[:, 1:2],
        targets={"columns": ["yes"], "labels": ["no", "yes"], "value_range": None, "value_mean": 0.0, "value_std": 1.0},
    ),
    # values are learnt standardised: the head scales them back with the stored mean and std
    "regression": dict(
        classes=[],
        loss="mse",
        n_outputs=1,
        activate=lambda logits: logits * 0.75 + 2.5,
        targets={
            "columns": ["label"],
            "labels": ["label"],
            "value_range": [1.0, 5.0],
            "value_mean": 2.5,
            "value_std": 0.75,
        },
    ),
}


def _write_images(folder: Path, ids: list[str], side: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in ids:
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def _fold_net(timm_name: str, seed: int, n_outputs: int = len(CLASSES)) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(timm_name, num_classes=n_outputs).eval()


def _save_net(net: torch.nn.Module, path: Path) -> None:
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


def _blend_state(method_name: str, n_models: int, weights: list[float] | None, extra: int | None = None) -> dict:
    """A fitted blend's stored state: fitted on random OOF rows, then given ``weights`` when it has weights."""
    rng = np.random.default_rng(3)
    preds = rng.dirichlet(np.ones(len(CLASSES)), size=(n_models, 60))
    y = rng.integers(0, len(CLASSES), 60)
    features = None if extra is None else rng.normal(size=(60, extra))
    method = make_blend(method_name).fit(preds, y, "accuracy", extra=features)
    state = method.state()
    if weights is not None:
        state["weights"] = list(weights)
    return state


def write_export(
    folder: Path,
    runs=RUNS,
    blend: dict | None = None,
    apply: str = "per_fold",
    submission_columns: list[str] | None = None,
    metric: tuple[str, str] = ("accuracy", "label"),
    extra_features: list[str] | None = None,
    task: str = "multiclass",
    decision: dict | None = None,
    test_csv: str | None = None,
    resize_modes: dict[str, str] | None = None,
) -> ExportSpec:
    """An export folder as ``make export`` writes it: ``export.json`` and ``models/<run>/fold<k>.safetensors``."""
    shape = TASKS[task]
    models, record_runs = [], []
    for run, timm_name, tta, seeds in runs:
        folds, checkpoints = [], {}
        for fold, seed in enumerate(seeds):
            path = folder / "models" / run / f"fold{fold}.safetensors"
            path.parent.mkdir(parents=True, exist_ok=True)
            net = _fold_net(timm_name, seed, shape["n_outputs"])
            _save_net(net, path)
            digest = file_sha256(path)
            folds.append({"fold": fold, "file": f"models/{run}/fold{fold}.safetensors", "tta": tta, "sha256": digest})
            checkpoints[str(fold)] = digest
        train = TrainConfig(model=timm_name, image_size=SIZE, pretrained=False, tta=tta).model_dump()
        models.append(
            {
                "run": run,
                "config_hash": f"hash_{run}",
                "timm_name": timm_name,
                "loss": shape["loss"],
                "n_outputs": shape["n_outputs"],
                "train": train,
                "data": {"image_size": SIZE, "mean": list(MEAN), "std": list(STD), "interpolation": "bilinear"},
                "resize": {"mode": (resize_modes or {}).get(run, "direct"), "target": SIZE, "margin": 1.0},
                "batch_size": 4,
                "folds": folds,
            }
        )
        record_runs.append({"name": run, "config_hash": f"hash_{run}", "checkpoints": checkpoints})
    single = blend is None and len(runs) == 1
    spec = {
        "version": 1,
        "competition": "pets",
        "task": task,
        "classes": shape["classes"],
        "id_column": "id",
        "target_column": "label",
        "metric": metric[0],
        "metric_needs": metric[1],
        "submission_columns": submission_columns or ["id", "label"],
        "image_pattern": "{id}.png",
        "targets": shape["targets"],
        "ensemble": {
            "version": 1,
            "name": "single-" + runs[0][0] if single else blend["method"],
            "kind": "single" if single else "blend",
            "runs": record_runs,
            "blend": None if single else blend,
            "apply": apply,
            "decision": decision,
            "submission_file": "sub.csv",
            "cv": 0.5,
            "nested_cv": 0.5,
            "folds_fingerprint": "f" * 16,
            "extra_features": extra_features,
        },
        "models": models,
        "test_csv": test_csv or ("test.csv" if extra_features else None),
    }
    (folder / "export.json").write_text(json.dumps(spec))
    return ExportSpec.model_validate(spec)


def fold_probabilities(images: Path, ids, runs=RUNS, task: str = "multiclass") -> np.ndarray:
    """``(n_models, n_folds, n_rows, n_columns)``: each fold model's activated output (the task head's, by hand),
    averaged over its views."""
    shape = TASKS[task]
    pixels = np.stack([np.asarray(Image.open(images / f"{i}.png").convert("RGB")) for i in ids])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    out = []
    for _run, timm_name, tta, seeds in runs:
        per_fold = []
        for seed in seeds:
            net = _fold_net(timm_name, seed, shape["n_outputs"])
            views = {"identity": x, "hflip": x.flip(-1)}
            with torch.no_grad():
                probs = [shape["activate"](net(views[v])).double().numpy() for v in tta]
            per_fold.append(np.mean(probs, axis=0))
        out.append(per_fold)
    return np.asarray(out)


@pytest.fixture()
def competition(tmp_path):
    """Seven test images (32 px) and a sample submission whose ids are in another order than the files were made."""
    ids = [f"img{i}" for i in range(7)]
    _write_images(tmp_path / "test", ids, SIZE)
    order = ["img4", "img0", "img6", "img2", "img5", "img1", "img3"]
    pd.DataFrame({"id": order, "label": "cat"}).to_csv(tmp_path / "sample_submission.csv", index=False)
    return tmp_path, order


def _sample(root: Path, order: list[str], columns: list[str], name: str = "sample_other.csv") -> Path:
    path = root / name
    pd.DataFrame({"id": order, **{c: 0.0 for c in columns}}).to_csv(path, index=False)
    return path


def _predict(folder: Path, images: Path, sample: Path, **kwargs) -> pd.DataFrame:
    return export_predict.predict_folder(folder, images, sample, device="cpu", progress=False, **kwargs)


def test_a_weighted_blend_of_two_runs_is_the_hand_computed_one(competition):
    root, order = competition
    spec = write_export(root / "export", blend=_blend_state("slsqp", 2, WEIGHTS))
    assert [m.run for m in spec.models] == ["r_res", "r_eff"]
    probs = fold_probabilities(root / "test", order)
    # different seeds and architectures: the check below sees which model and which fold went where
    assert not np.allclose(probs[0], probs[1], atol=1e-3) and not np.allclose(probs[0, 0], probs[0, 1], atol=1e-4)
    expected = np.tensordot(WEIGHTS, probs.mean(axis=1), axes=1)
    frame = _predict(root / "export", root / "test", root / "sample_submission.csv")
    assert list(frame.columns) == ["id", "label"]
    assert frame["id"].tolist() == order
    assert frame["label"].tolist() == [CLASSES[k] for k in expected.argmax(axis=1)]


def test_probabilities_of_a_blend_match_the_hand_computed_ones_to_1e_6(competition):
    root, order = competition
    sample = _sample(root, order, CLASSES)
    write_export(
        root / "export",
        blend=_blend_state("slsqp", 2, WEIGHTS),
        **PROBABILITIES,
    )
    expected = np.tensordot(WEIGHTS, fold_probabilities(root / "test", order).mean(axis=1), axes=1)
    frame = _predict(root / "export", root / "test", sample)
    assert frame["id"].tolist() == order
    np.testing.assert_allclose(frame[CLASSES].to_numpy(dtype=float), expected, atol=1e-6, rtol=0)
    # the batch size changes nothing but the batches
    again = _predict(root / "export", root / "test", sample, batch_size=3)
    np.testing.assert_allclose(again[CLASSES].to_numpy(dtype=float), expected, atol=1e-6, rtol=0)


def test_predict_model_returns_each_fold_models_mean_over_views(competition):
    root, order = competition
    spec = write_export(root / "export", blend=_blend_state("slsqp", 2, WEIGHTS))
    paths = export_predict.image_paths(root / "test", "{id}.png", np.array(order))
    store = export_predict.TestImages(paths, None)
    bar = export_predict.Progress(8, len(paths), enabled=False)
    expected = fold_probabilities(root / "test", order)
    for m, model in enumerate(spec.models):
        # plain data, as read_spec gives it, is accepted as well as the typed entries
        given = (model.model_dump(), spec.model_dump()) if m else (model, spec)
        got = export_predict.predict_model(root / "export", *given, store, "cpu", 3, bar)
        assert got.shape == (2, len(order), len(CLASSES)) and got.dtype == np.float64
        # stored as the run stores them: float32 means, read as float64
        np.testing.assert_array_equal(got, got.astype(np.float32).astype(np.float64))
        np.testing.assert_allclose(got, expected[m], atol=1e-6, rtol=0)
    # 2 runs x 2 fold models x 3 batches of 3 (7 images)
    assert bar.done == 12


def test_a_single_run_export_submits_its_fold_models_mean(competition):
    root, order = competition
    runs = RUNS[:1]
    write_export(root / "export", runs=runs, **PROBABILITIES)
    sample = _sample(root, order, CLASSES)
    expected = fold_probabilities(root / "test", order, runs)[0].mean(axis=0)
    frame = _predict(root / "export", root / "test", sample)
    np.testing.assert_allclose(frame[CLASSES].to_numpy(dtype=float), expected, atol=1e-6, rtol=0)


def test_runs_with_different_fold_models_meet_the_blend_as_fold_means(competition):
    """A budgeted export may keep one fold model of a run and two of another: the blend then reads fold means."""
    root, order = competition
    runs = [RUNS[0], (RUNS[1][0], RUNS[1][1], RUNS[1][2], (21,))]
    write_export(
        root / "export",
        runs=runs,
        blend=_blend_state("slsqp", 2, WEIGHTS),
        apply="fold_mean",
        **PROBABILITIES,
    )
    sample = _sample(root, order, CLASSES)
    first, second = (
        fold_probabilities(root / "test", order, runs[:1])[0],
        fold_probabilities(root / "test", order, runs[1:])[0],
    )
    expected = WEIGHTS[0] * first.mean(axis=0) + WEIGHTS[1] * second.mean(axis=0)
    frame = _predict(root / "export", root / "test", sample)
    np.testing.assert_allclose(frame[CLASSES].to_numpy(dtype=float), expected, atol=1e-6, rtol=0)


def test_a_stacker_reads_the_metadata_columns_in_the_sample_order(competition):
    from pipeline.blend import BlendMethod, predict_test

    root, order = competition
    state = _blend_state("logreg_stacker", 2, None, extra=2)
    write_export(
        root / "export",
        blend=state,
        **PROBABILITIES,
        extra_features=["age", "weight"],
    )
    sample = _sample(root, order, CLASSES)
    # the test table in file order, with a column the stacker does not read
    files = [f"img{i}" for i in range(7)]
    table = pd.DataFrame({"id": files, "age": np.arange(7) * 3.0, "weight": np.arange(7) ** 2 - 10.0, "note": "x"})
    table.to_csv(root / "test.csv", index=False)
    with pytest.raises(ExportPredictError, match=r"metadata column\(s\) \['age', 'weight'\].*--test-csv"):
        _predict(root / "export", root / "test", sample)
    features = table.set_index("id").loc[order, ["age", "weight"]].to_numpy()
    expected = predict_test(
        BlendMethod.from_state(state), None, fold_probabilities(root / "test", order), "per_fold", extra=features
    )
    frame = _predict(root / "export", root / "test", sample, test_csv=root / "test.csv")
    np.testing.assert_allclose(frame[CLASSES].to_numpy(dtype=float), expected, atol=1e-6, rtol=0)


def test_metadata_features_follow_the_ids_and_refuse_what_is_missing(tmp_path):
    csv = tmp_path / "test.csv"
    pd.DataFrame(
        {"id": ["a", "b", "c"], "x": ["1.5", "2", "-3"], "y": ["4", "5", "6"], "bad": ["1", "two", "3"]}
    ).to_csv(csv, index=False)
    got = export_predict.metadata_features(csv, "id", ["y", "x"], ["c", "a"])
    np.testing.assert_array_equal(got, [[6.0, -3.0], [4.0, 1.5]])
    assert got.dtype == np.float64
    cases = [
        (["x", "z"], ["a"], r"has no column\(s\) \['z'\]"),
        (["x"], ["a", "q", "r"], r"has no row for id\(s\) \['q', 'r'\]"),
        (["x", "bad"], ["a", "b"], r"column\(s\) \['bad'\] of .*test.csv are not all numbers"),
    ]
    for columns, ids, message in cases:
        with pytest.raises(ExportPredictError, match=message):
            export_predict.metadata_features(csv, "id", columns, ids)


def test_image_paths_name_the_missing_files_and_the_pattern(tmp_path):
    _write_images(tmp_path, ["a", "b"], 8)
    assert export_predict.image_paths(tmp_path, "{id}.png", ["b", "a"]) == [tmp_path / "b.png", tmp_path / "a.png"]
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(
        ExportPredictError,
        match=r"2 of 3 test images are missing, e\.g\. \[.*c\.jpg.*d\.jpg'\]; "
        r"check --images \(a folder\) and --pattern \(now '\{id\}\.jpg'\)",
    ):
        export_predict.image_paths(tmp_path, "{id}.jpg", ["c", "a", "d"])


def test_test_images_are_resized_to_the_cache_side_only_when_the_run_used_its_cache(tmp_path):
    from pipeline.data.cache import resize_for_cache

    _write_images(tmp_path, ["a", "b"], 40)
    _write_images(tmp_path, ["c"], 24, seed=1)
    paths = [tmp_path / f"{i}.png" for i in "abc"]
    assert export_predict.cache_side_for(paths, {"mode": "direct", "target": 32, "margin": 1.0}) is None
    # the cache keeps target x margin, never above the largest image
    assert export_predict.cache_side_for(paths, {"mode": "cache", "target": 32, "margin": 1.0}) == 32
    assert export_predict.cache_side_for(paths, {"mode": "cache", "target": 32, "margin": 1.2}) == 39
    assert export_predict.cache_side_for(paths, {"mode": "cache", "target": 32, "margin": 2.0}) == 40
    direct, cached = export_predict.TestImages(paths, None), export_predict.TestImages(paths, 32)
    assert len(direct) == 3 and direct.in_memory is False
    assert direct[0].shape == (40, 40, 3) and direct[2].shape == (24, 24, 3)
    np.testing.assert_array_equal(direct[0], np.asarray(Image.open(paths[0]).convert("RGB")))
    np.testing.assert_array_equal(cached[0], resize_for_cache(direct[0], 32))
    assert cached[0].shape[:2] == (32, 32)


def test_a_cached_runs_export_resizes_as_the_cache_did(competition):
    """Images larger than the input: a run that read the cache saw them resized twice, and its export does too."""
    root, order = competition
    _write_images(root / "big", [f"img{i}" for i in range(7)], 45)
    runs = RUNS[:1]
    sample = _sample(root, order, CLASSES)
    write_export(root / "direct", runs=runs, **PROBABILITIES)
    write_export(
        root / "cached",
        runs=runs,
        **PROBABILITIES,
        resize_modes={"r_res": "cache"},
    )
    direct = _predict(root / "direct", root / "big", sample)[CLASSES].to_numpy(dtype=float)
    cached = _predict(root / "cached", root / "big", sample)[CLASSES].to_numpy(dtype=float)
    # cache mode at margin 1.0 resizes to 32 once on the host before the (then no-op) input resize
    from pipeline.data.cache import resize_for_cache

    small = root / "small"
    small.mkdir()
    for i in order:
        Image.fromarray(resize_for_cache(np.asarray(Image.open(root / "big" / f"{i}.png").convert("RGB")), SIZE)).save(
            small / f"{i}.png"
        )
    expected = fold_probabilities(small, order, runs)[0].mean(axis=0)
    np.testing.assert_allclose(cached, expected, atol=1e-6, rtol=0)
    assert not np.allclose(direct, cached, atol=1e-4)


def test_spec_targets_are_the_stored_names_labels_and_scale(tmp_path):
    spec = write_export(tmp_path, runs=RUNS[:1], task="regression", metric=("rmse", "value"))
    targets = export_predict.spec_targets(spec)
    assert targets.columns == ["label"] and targets.labels == ["label"]
    assert targets.value_range == (1.0, 5.0) and isinstance(targets.value_range, tuple)
    assert (targets.value_mean, targets.value_std) == (2.5, 0.75)
    assert len(targets.y) == 0
    spec.targets["value_range"] = None
    assert export_predict.spec_targets(spec).value_range is None


def test_the_runtime_is_the_runs_memory_format_and_the_cpus_workers():
    cfg = TrainConfig(model="test_resnet", channels_last=False)
    runtime = export_predict.prediction_runtime("cpu", cfg, None)
    assert runtime.device.type == "cpu" and runtime.is_cuda is False
    assert runtime.channels_last is False and runtime.num_workers == 0 and runtime.prefetch_factor is None
    assert runtime.amp_dtype is None and runtime.persistent_workers is False
    runtime = export_predict.prediction_runtime("cpu", TrainConfig(model="test_resnet"), 2)
    assert runtime.channels_last is True and runtime.num_workers == 2 and runtime.prefetch_factor == 2


def _ticking_clock(monkeypatch, start: float, tick: float) -> None:
    """``time.perf_counter`` as the predictor reads it: ``start``, then ``tick`` seconds later at every call."""
    clock = iter(start + tick * k for k in range(1000))
    monkeypatch.setattr(export_predict.time, "perf_counter", lambda: next(clock))


def test_progress_prints_its_estimate_after_the_first_batches_and_at_a_quarter_and_half(capsys, monkeypatch):
    _ticking_clock(monkeypatch, 100.0, 1.0)
    bar = export_predict.Progress(40, 2000, enabled=False, estimate_after=3, time_limit=None)
    assert list(bar.wrap(iter(range(40)))) == list(range(40))
    assert bar.done == 40
    lines = capsys.readouterr().err.strip().splitlines()
    # one tick per call: start 100, first batch done at 101, then a batch a second -> 1 + 39 = 40 s in all
    assert len(lines) == 3
    assert lines[0].startswith("estimated time for the whole test set (2000 images, 40 batches over every model")
    assert "after the first batches): 40s (20.0s per 1,000 images)" in lines[0]
    assert "at 10/40 batches): 40s" in lines[1] and "at 20/40 batches): 40s" in lines[2]
    assert bar.estimate == 40.0


@pytest.mark.parametrize("limit, warned", [(30.0, True), (39.9, True), (40.0, False), (41.0, False), (None, False)])
def test_progress_warns_once_when_the_projection_is_past_the_time_limit(capsys, monkeypatch, limit, warned):
    # 2 s a tick: 2 s to the first batch, then 2 s a batch: 2 + 19 x 2 = 40 s, said at batches 4, 5 and 10
    _ticking_clock(monkeypatch, 0.0, 2.0)
    bar = export_predict.Progress(20, 100, enabled=False, time_limit=limit)
    for _ in range(20):
        bar.step()
    err = capsys.readouterr().err
    assert bar.estimate == 40.0 and err.count("estimated time") == 3
    assert bar.warned is warned and err.count("warning:") == int(warned)
    if warned:
        assert f"about 40s, past --time-limit {format_duration(limit)}: the notebook would be stopped" in err
        assert "make export METHOD=" in err and "--device cuda" in err


@pytest.mark.parametrize(
    "text, expected",
    [
        ("one line", "one line"),
        ("two\nlines\n\n", "two lines"),
        (
            "Traceback (most recent call last):\n  File x\nDataError: cannot decode image a.png",
            "cannot decode image a.png",
        ),
        # a message with a colon of its own keeps it when it is not a worker's traceback
        ("error: a: b", "error: a: b"),
    ],
)
def test_one_line_keeps_a_workers_own_message(text, expected):
    assert export_predict.one_line(ValueError(text)) == expected


def test_main_writes_the_submission_and_says_so(competition, capsys):
    root, order = competition
    write_export(root / "export", blend=_blend_state("slsqp", 2, WEIGHTS))
    out = root / "submission.csv"
    assert export_predict.main(_argv(root, "--batch-size", "5", "--time-limit", "9h"), folder=root / "export") == 0
    expected = np.tensordot(WEIGHTS, fold_probabilities(root / "test", order).mean(axis=1), axes=1)
    written = pd.read_csv(out, dtype=str)
    assert written["id"].tolist() == order
    assert written["label"].tolist() == [CLASSES[k] for k in expected.argmax(axis=1)]
    captured = capsys.readouterr()
    assert captured.out.startswith(f"wrote {out}: 7 rows in ")
    # 2 runs x 2 fold models x 2 batches (7 images, 5 a batch): estimates at a quarter (batch 2) and after the first
    # batches (batch 4, which is also half)
    estimates = [line for line in captured.err.splitlines() if line.startswith("estimated time")]
    assert len(estimates) == 2 and all("(7 images, 8 batches over every model" in line for line in estimates)
    assert "; at 2/8 batches)" in estimates[0] and "; after the first batches)" in estimates[1]
    assert "warning" not in captured.err


def _argv(root: Path, *extra: str) -> list[str]:
    return [
        "--images",
        str(root / "test"),
        "--sample-submission",
        str(root / "sample_submission.csv"),
        "--out",
        str(root / "submission.csv"),
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


@pytest.mark.parametrize(
    "export_folder, args, message",
    [
        (False, [], "^error: --export: pass the folder make export wrote$"),
        (True, ["--time-limit", "soon"], "^error: --time-limit"),
        (True, ["--time-limit", "0s"], "^error: --time-limit"),
        (True, ["--sample-submission", "absent.csv"], "^error: --sample-submission absent.csv is not a readable file$"),
        (True, ["--test-csv", "absent.csv"], "^error: --test-csv absent.csv is not a readable file$"),
        (True, ["--workers", "-1"], r"^error: --workers -1: pass 0"),
        (True, ["--pattern", "{id}.jpg"], r"7 of 7 test images are missing"),
        (True, ["--batch-size", "0"], "--batch-size"),
    ],
)
def test_main_refuses_in_one_line_with_exit_code_2(competition, capsys, export_folder, args, message):
    root, _ = competition
    write_export(root / "export", blend=_blend_state("slsqp", 2, WEIGHTS))
    assert export_predict.main(_argv(root, *args), folder=root / "export" if export_folder else None) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert not (root / "submission.csv").exists()


def test_an_undecodable_image_says_to_replace_it(competition, capsys):
    root, _ = competition
    write_export(root / "export", blend=_blend_state("slsqp", 2, WEIGHTS))
    # the header reads (the check before predicting passes), the pixels do not: the loader's error reaches main
    whole = (root / "test" / "img3.png").read_bytes()
    (root / "test" / "img3.png").write_bytes(whole[: len(whole) // 2])
    assert export_predict.main(_argv(root), folder=root / "export") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "img3.png" in err
    assert err.endswith("; replace that file with a readable copy: every id of the sample submission needs its image")


# -- other task shapes, mixed runs, and what reaches each step ------------------------------


def test_a_binary_export_labels_by_the_stored_threshold(competition):
    root, order = competition
    runs = RUNS[:1]
    p = fold_probabilities(root / "test", order, runs, task="binary")[0].mean(axis=0).reshape(-1)
    # the middle of the fold models' positive probabilities: rows fall on both sides, unlike at 0.5
    threshold = float(np.median(p))
    assert (p >= threshold).tolist() != (p >= 0.5).tolist()
    write_export(root / "export", runs=runs, task="binary", decision={"thresholds": [threshold]})
    frame = _predict(root / "export", root / "test", root / "sample_submission.csv")
    assert frame["id"].tolist() == order
    assert frame["label"].tolist() == ["yes" if v >= threshold else "no" for v in p]


def test_a_regression_export_submits_the_values_on_the_targets_scale(competition):
    root, order = competition
    runs = RUNS[:1]
    expected = fold_probabilities(root / "test", order, runs, task="regression")[0].mean(axis=0).reshape(-1)
    write_export(root / "export", runs=runs, task="regression", metric=("rmse", "value"))
    frame = _predict(root / "export", root / "test", _sample(root, order, ["label"]))
    np.testing.assert_allclose(frame["label"].to_numpy(dtype=float), expected, atol=1e-6, rtol=0)
    # scaled back: the raw outputs of a fresh network sit near 0, the values near the stored mean 2.5
    assert np.all(np.abs(expected - 2.5) < 1.0) and np.ptp(expected) > 1e-4


def test_a_stacker_without_metadata_reads_no_test_table(competition):
    from pipeline.blend import BlendMethod, predict_test

    root, order = competition
    state = _blend_state("logreg_stacker", 2, None)
    write_export(root / "export", blend=state, **PROBABILITIES)
    expected = predict_test(BlendMethod.from_state(state), None, fold_probabilities(root / "test", order), "per_fold")
    frame = _predict(root / "export", root / "test", _sample(root, order, CLASSES))
    np.testing.assert_allclose(frame[CLASSES].to_numpy(dtype=float), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("test_csv, named", [("meta.csv", "meta.csv"), (None, "test.csv")])
def test_a_stacker_with_metadata_names_the_test_table_it_needs(competition, test_csv, named):
    root, order = competition
    write_export(
        root / "export",
        blend=_blend_state("logreg_stacker", 2, None, extra=1),
        **PROBABILITIES,
        extra_features=["age"],
    )
    spec = json.loads((root / "export" / "export.json").read_text())
    spec["test_csv"] = test_csv
    (root / "export" / "export.json").write_text(json.dumps(spec))
    message = (
        f"this ensemble's stacker reads the metadata column(s) ['age'] of the test table: pass --test-csv "
        f"<the competition's {named}>"
    )
    with pytest.raises(ExportPredictError, match=f"^{re.escape(message)}$"):
        _predict(root / "export", root / "test", _sample(root, order, CLASSES))


def test_runs_that_read_their_images_differently_each_get_their_own(competition):
    """One run read the decoded-image cache, the other the files: in one export each sees its own images."""
    root, order = competition
    _write_images(root / "big", [f"img{i}" for i in range(7)], 45)
    sample = _sample(root, order, CLASSES)
    modes = {"r_res": "direct", "r_eff": "cache"}
    write_export(root / "both", blend=_blend_state("slsqp", 2, WEIGHTS), resize_modes=modes, **PROBABILITIES)
    alone = []
    for run in RUNS:
        write_export(root / run[0], runs=[run], resize_modes=modes, **PROBABILITIES)
        alone.append(_predict(root / run[0], root / "big", sample)[CLASSES].to_numpy(dtype=float))
    both = _predict(root / "both", root / "big", sample)[CLASSES].to_numpy(dtype=float)
    np.testing.assert_allclose(both, WEIGHTS[0] * alone[0] + WEIGHTS[1] * alone[1], atol=1e-6, rtol=0)


def test_a_replaced_checkpoint_is_refused_before_any_model_is_built(competition):
    root, order = competition
    write_export(root / "export", blend=_blend_state("slsqp", 2, WEIGHTS))
    _save_net(_fold_net("test_efficientnet", 99), root / "export" / "models" / "r_eff" / "fold1.safetensors")
    with pytest.raises(ExportPredictError, match=r"models/r_eff/fold1\.safetensors is not the checkpoint exported"):
        _predict(root / "export", root / "test", root / "sample_submission.csv")


def test_predict_folder_defaults_show_the_bar_and_pass_the_batch_and_workers_on(competition, capsys, monkeypatch):
    root, order = competition
    write_export(root / "export", blend=_blend_state("slsqp", 2, WEIGHTS))
    passed = []
    real_predict_model = export_predict.predict_model

    def recording(folder, model, spec, store, device, batch_size, progress, workers=None):
        passed.append((device, batch_size, workers))
        return real_predict_model(folder, model, spec, store, device, batch_size, progress, workers)

    monkeypatch.setattr(export_predict, "predict_model", recording)
    # no device and no progress given: auto (the CPU here) and the bar; a limit no run can meet
    frame = export_predict.predict_folder(
        root / "export", root / "test", root / "sample_submission.csv", batch_size=3, workers=0, time_limit=1e-6
    )
    assert frame["id"].tolist() == order
    assert passed == [("auto", 3, 0), ("auto", 3, 0)]
    err = capsys.readouterr().err
    # 2 runs x 2 fold models x 3 batches of at most 3 images
    assert "predict: 100%" in err and re.search(r"12/12 \[[^\]]*(batch/s|s/batch)\]", err)
    assert err.count("warning: at this pace the whole test set takes about") == 1


def test_a_progress_bar_counts_batches_on_stderr(capsys):
    bar = export_predict.Progress(5, 10)
    assert bar.estimate is None
    assert list(bar.wrap(iter("abcde"))) == list("abcde")
    bar.close()
    err = capsys.readouterr().err
    assert "predict: 100%" in err and re.search(r"5/5 \[[^\]]*(batch/s|s/batch)\]", err)
    quiet = export_predict.Progress(5, 10, enabled=False)
    list(quiet.wrap(iter("abcde")))
    quiet.close()
    assert "predict" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "total, said_at",
    [
        (4, ["at 2/4 batches"]),  # not at the last batch: the job is done then
        # odd: a quarter and a half are whole batches by floor division only (10 and 21 of 43)
        (43, ["after the first batches", "at 10/43 batches", "at 21/43 batches"]),
    ],
)
def test_progress_says_its_estimate_at_the_checkpoints(capsys, monkeypatch, total, said_at):
    _ticking_clock(monkeypatch, 0.0, 1.0)
    bar = export_predict.Progress(total, 1, enabled=False)
    for _ in range(total):
        bar.step()
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split("; ")[-1].split(")")[0] for line in lines] == said_at
    # 1 s to the first batch, then 1 s a batch: the total, for 1 image
    assert all(line.endswith(f": {total}s ({total * 1000:.1f}s per 1,000 images)") for line in lines)


def test_the_warning_says_what_to_do(capsys, monkeypatch):
    _ticking_clock(monkeypatch, 0.0, 2.0)
    bar = export_predict.Progress(20, 100, enabled=False, time_limit=30.0)
    for _ in range(20):
        bar.step()
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning")]
    assert warnings == [
        "warning: at this pace the whole test set takes about 40s, past --time-limit 30s: the notebook would be "
        "stopped before it writes the submission. Export a smaller ensemble (make export METHOD=<a single run or a "
        "lighter blend>) or predict on a GPU (--device cuda)"
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Traceback: a: b", "Traceback: a: b"),  # one line: kept whole, even with the word in it
        ("Traceback (most recent call last):\nboom", "boom"),
        ("Traceback (most recent call last):\n  File x\nRuntimeError in worker: boom: now", "boom: now"),
    ],
)
def test_one_line_takes_what_follows_the_last_lines_first_colon(text, expected):
    assert export_predict.one_line(RuntimeError(text)) == expected


def test_a_gpu_runtime_pins_memory_and_decodes_in_four_workers(monkeypatch):
    import pipeline.train.runtime as runtime_module

    asked = []

    def amp_dtype_for(cfg, use_cuda):
        asked.append((cfg, use_cuda))
        return torch.float16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime_module, "amp_dtype_for", amp_dtype_for)
    cfg = TrainConfig(model="test_resnet")
    runtime = export_predict.prediction_runtime("auto", cfg, None)
    assert runtime.device.type == "cuda" and runtime.is_cuda and runtime.pin_memory is True
    assert runtime.num_workers == 4 and runtime.prefetch_factor == 2 and runtime.persistent_workers is False
    assert runtime.amp_dtype == torch.float16 and asked == [(cfg, True)]
    cpu = export_predict.prediction_runtime("cpu", cfg, None)
    assert cpu.pin_memory is False and cpu.num_workers == 0 and asked[-1] == (cfg, False)


def test_without_a_gpu_auto_is_the_cpu_and_device_cuda_is_refused_whole(monkeypatch):
    # no GPU, also on a machine that has one: the rule, not the machine, is under test
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = TrainConfig(model="test_resnet")
    assert export_predict.prediction_runtime("auto", cfg, None).device.type == "cpu"
    message = "--device cuda: no CUDA device is visible; turn the notebook's GPU on or pass --device cpu"
    with pytest.raises(ExportPredictError, match=f"^{re.escape(message)}$"):
        export_predict.prediction_runtime("cuda", cfg, None)


def test_predict_model_passes_its_workers_to_the_runtime(competition, monkeypatch):
    root, order = competition
    spec = write_export(root / "export", runs=RUNS[:1])
    asked = []
    real = export_predict.prediction_runtime
    monkeypatch.setattr(
        export_predict,
        "prediction_runtime",
        lambda device, cfg, workers: asked.append((device, workers)) or real(device, cfg, workers),
    )
    paths = export_predict.image_paths(root / "test", "{id}.png", np.array(order))
    bar = export_predict.Progress(4, 7, enabled=False)
    export_predict.predict_model(
        root / "export", spec.models[0], spec, export_predict.TestImages(paths, None), "cpu", None, bar, workers=0
    )
    assert asked == [("cpu", 0)]
    # the run's own batch (4 here) when none is given: 2 fold models x 2 batches
    assert bar.done == 4


def test_metadata_ids_are_compared_as_text(tmp_path):
    csv = tmp_path / "test.csv"
    pd.DataFrame({"id": ["007", "7", "12"], "age": ["1", "2", "3"]}).to_csv(csv, index=False)
    # ids kept as written ("007" is not "7"), numbers of whole values read as float64
    got = export_predict.metadata_features(csv, "id", ["age"], ["7", "007"])
    assert got.dtype == np.float64 and got.tolist() == [[2.0], [1.0]]
    assert export_predict.metadata_features(csv, "id", ["age"], np.array([12, 7])).tolist() == [[3.0], [2.0]]
    with pytest.raises(ExportPredictError, match=r"has no row for id\(s\) \['a', 'b', 'c', 'd', 'e'\]$"):
        export_predict.metadata_features(csv, "id", ["age"], ["a", "b", "c", "d", "e", "f", "7"])


def test_missing_images_are_named_three_at_most(tmp_path):
    with pytest.raises(ExportPredictError, match=r"4 of 4 test images are missing") as caught:
        export_predict.image_paths(tmp_path, "{id}.png", ["a", "b", "c", "d"])
    named = str(caught.value).split("e.g. ")[1].split("]")[0]
    assert "c.png" in named and "d.png" not in named


# -- predict.py's command line --------------------------------------------------------------


HELP = {
    "--images IMAGES": "folder of the test images",
    "--sample-submission SAMPLE_SUBMISSION": "the competition's sample_submission.csv",
    "--out OUT": "where to write the submission (default submission.csv)",
    "--device DEVICE": "auto (a GPU when there is one), cpu or cuda",
    "--batch-size BATCH_SIZE": "images per batch (default: the run's)",
    "--test-csv TEST_CSV": "the competition's test table, when the blend reads metadata columns from it",
    "--workers WORKERS": "loader processes decoding images (default 4 on a GPU, 0 on the CPU)",
    "--pattern PATTERN": "an image's file name under --images, with {id} (default: the export's)",
    "--export EXPORT": "the export folder (default: predict.py's)",
    "--no-progress": "no progress bar (the time estimate is still printed)",
    "--time-limit TIME_LIMIT": "the notebook's time limit (9h, 90m, 3600s): a warning as soon as the projected time "
    "is past it",
}


def test_the_help_says_what_each_option_is(capsys):
    with pytest.raises(SystemExit) as caught:
        export_predict.main(["--help"])
    assert caught.value.code == 0
    usage, *sections = capsys.readouterr().out.split("\n\n")
    # argparse wraps to the terminal: compared with the white space collapsed
    text = " ".join(" ".join(sections).split())
    assert text.startswith("Predict the test set with an exported kfold-ensembler ensemble, offline. options:")
    for option, help_text in HELP.items():
        assert f" {option} {help_text} " in f"{text} ", option
    # the two the predictor cannot do without are required, the rest optional
    usage = " ".join(usage.split())
    assert "--images IMAGES --sample-submission SAMPLE_SUBMISSION" in usage and "[--images" not in usage


def test_the_required_arguments_are_named(capsys):
    with pytest.raises(SystemExit) as caught:
        export_predict.main([])
    assert caught.value.code == 2
    assert "the following arguments are required: --images, --sample-submission" in capsys.readouterr().err


def test_main_passes_every_option_to_the_predictor(tmp_path, capsys, monkeypatch):
    calls = []

    # each call as predict_folder's parameters by name, however main passes them
    signature = inspect.signature(export_predict.predict_folder)

    def recording(*args, **kwargs):
        calls.append(dict(signature.bind(*args, **kwargs).arguments))
        return pd.DataFrame({"id": ["a", "b"], "label": ["cat", "owl"]})

    (tmp_path / "images").mkdir()
    for name in ["sample.csv", "test.csv"]:
        (tmp_path / name).write_text("id,label\na,cat\n")
    monkeypatch.setattr(export_predict, "predict_folder", recording)
    monkeypatch.chdir(tmp_path)
    _ticking_clock(monkeypatch, 100.0, 1.5)
    base = ["--images", "images", "--sample-submission", "sample.csv"]
    full = [
        "--batch-size",
        "5",
        "--workers",
        "3",
        "--test-csv",
        "test.csv",
        "--time-limit",
        "90m",
        "--pattern",
        "{id}.jpg",
        "--device",
        "cpu",
    ]
    assert export_predict.main(base + full, folder=Path("export")) == 0
    assert export_predict.main(base + ["--no-progress", "--export", "other"], folder=Path("export")) == 0
    assert calls == [
        dict(
            folder=Path("export"),
            images=Path("images"),
            sample_submission=Path("sample.csv"),
            device="cpu",
            batch_size=5,
            pattern="{id}.jpg",
            progress=True,
            workers=3,
            test_csv=Path("test.csv"),
            time_limit=5400.0,
        ),
        dict(
            folder=Path("other"),
            images=Path("images"),
            sample_submission=Path("sample.csv"),
            device="auto",
            batch_size=None,
            pattern=None,
            progress=False,
            workers=None,
            test_csv=None,
            time_limit=None,
        ),
    ]
    # --out's default, in the working folder; the seconds from the start of main to the file written
    assert pd.read_csv(tmp_path / "submission.csv")["label"].tolist() == ["cat", "owl"]
    assert capsys.readouterr().out.splitlines() == ["wrote submission.csv: 2 rows in 1.5s"] * 2
