"""`make export`: the chosen ensemble as an offline folder whose predict.py recomputes the submission elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import build_small_competition, shrunk_demo_config

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.ensemble.fitted import file_sha256, fitted_dir
from pipeline.export import compare_submissions, image_pattern


@pytest.fixture(scope="module")
def demo(digits_dir, tmp_path_factory):
    """A tiny demo run end to end once (2 tiny models x 2 folds, 1 epoch): it ends by exporting."""
    base = tmp_path_factory.mktemp("export_demo")
    data = build_small_competition(digits_dir, base / "data", n_train=60, n_test=20)
    config = shrunk_demo_config(
        data,
        base / "out",
        {
            "folds": {"n_splits": 2},
            "ensemble": {
                "methods": ["mean", "caruana", "logreg_stacker"],
                "method_params": {"logreg_stacker": {"C": 0.1}},
            },
        },
    )
    path = base / "comp.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["demo", "--config", str(path)]) == 0
    return path


def _predict_elsewhere(folder: Path, config, where: Path, *extra: str) -> pd.DataFrame:
    """predict.py in a fresh process: another working directory, no PYTHONPATH, the export folder alone."""
    where.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    test_dir = config.data_dir / "test"
    done = subprocess.run(
        [
            sys.executable,
            str(folder / "predict.py"),
            "--images",
            str(test_dir),
            "--sample-submission",
            str(config.data_dir / "sample_submission.csv"),
            "--out",
            "submission.csv",
            "--device",
            "cpu",
            "--no-progress",
            *extra,
        ],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "estimated time for the whole test set" in done.stderr
    # a time limit it cannot keep: warned once, as soon as it is projected, and the submission still written
    assert done.stderr.count("warning: at this pace the whole test set takes") == (1 if "--time-limit" in extra else 0)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path.insert(0, {str(next(folder.glob('*.whl')))!r}); "
            "import pipeline.export.predict as m; print(m.__file__)",
        ],
        cwd=where,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ".whl" in probe.stdout  # the exported code ran, not the checkout's
    return pd.read_csv(where / "submission.csv", dtype={"id": str})


@pytest.mark.parametrize("method", ["submission", "logreg_stacker"])
def test_exported_predictor_reproduces_the_submission_offline(demo, tmp_path, method):
    config = load_config(demo)
    if method == "submission":
        folder = config.out / "export" / config.competition.name  # written by the demo itself
    else:
        folder = tmp_path / "stacker_export"
        assert main(["export", "--config", str(demo), "--method", method, "--out", str(folder)]) == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    expected_file = "submission.csv" if method == "submission" else manifest["submission_file"]
    limit = ("--time-limit", "0.001s") if method == "submission" else ()
    got = _predict_elsewhere(folder, config, tmp_path / "elsewhere", *limit)
    expected = pd.read_csv(config.submissions_dir / expected_file, dtype={"id": str})
    # labels identical, probabilities within 1e-6
    assert compare_submissions(got, expected, "id") is None
    # the manifest: every file with its checksum, the code, the runs, the blend, the expected CV
    for name, digest in manifest["files"].items():
        assert file_sha256(folder / name) == digest
    assert {"predict.py", "export.json"} <= set(manifest["files"]) and manifest["wheel"].endswith(".whl")
    assert manifest["runs"] and "pipeline" in manifest["code_version"] and "nested_cv" in manifest["expected_cv"]
    spec = json.loads((folder / "export.json").read_text())
    for model in spec["models"]:
        assert model["train"]["pretrained"] is False and model["data"]["image_size"] == 32 and model["folds"][0]["tta"]


def test_export_check_compares_with_our_own_test_images(demo, tmp_path, capsys):
    assert main(["export", "--config", str(demo), "--method", "caruana", "--out", str(tmp_path / "x"), "--check"]) == 0
    assert "check: the exported predictor reproduces caruana_cv" in capsys.readouterr().out


def _spoil_checkpoint(config):
    path = config.runs_dir / "digits_effnet" / "fold1" / "best.safetensors"
    original = path.read_bytes()
    path.write_bytes(original + b" ")
    return lambda: path.write_bytes(original)


def _hide_run(config):
    run = config.runs_dir / "digits_resnet"
    run.rename(run.with_name("_hidden"))
    return lambda: run.with_name("_hidden").rename(run)


def _user_folder(config, out: Path):
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    return lambda: None


@pytest.mark.parametrize(
    "spoil, args, message",
    [
        (lambda config, out: lambda: None, ["--method", "slsqp"], "stored no state for it"),
        (lambda config, out: _spoil_checkpoint(config), [], "does not match its run"),
        (lambda config, out: _hide_run(config), [], "is missing or unfinished"),
        (lambda config, out: _user_folder(config, out), [], "is not an export made by the pipeline"),
    ],
)
def test_export_refuses_and_writes_nothing(demo, tmp_path, capsys, spoil, args, message):
    config = load_config(demo)
    out = tmp_path / "refused"
    undo = spoil(config, out)
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        assert main(["export", "--config", str(demo), "--out", str(out), *args]) == 2
    finally:
        undo()
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no folder, no temporary folder left
    assert not out.exists() or [p.name for p in out.iterdir()] == ["notes.txt"]


def _not_plain(constant: str):
    raise ValueError(f"{constant} is not plain JSON")


def test_stored_ensemble_is_plain_json(demo):
    """Every leaderboard row is kept as strict JSON (no NaN, no pickle) holding the figures the board shows."""
    config = load_config(demo)
    folder = fitted_dir(config)
    board = pd.read_csv(config.submissions_dir / "leaderboard.csv")
    rows = {s.rstrip(" *"): r for s, r in zip(board["submission"], board.to_dict("records"))}
    index = json.loads((folder / "index.json").read_text(), parse_constant=_not_plain)
    assert set(index["candidates"]) == set(rows) and len(rows) >= 5   # 2 singles, mean, caruana, logreg_stacker
    assert sorted(p.name for p in folder.glob("*.json")) == sorted(["index.json", *index["candidates"].values()])
    assert index["submission"] == board["submission"].iat[0].rstrip(" *")   # the chosen row is listed first
    for name, file in index["candidates"].items():
        record = json.loads((folder / file).read_text(), parse_constant=_not_plain)
        row = rows[name]
        assert record["name"] == name and record["kind"] == row["kind"]
        assert record["cv"] == row["CV"]
        if row["kind"] != "single":
            assert record["nested_cv"] == row["nested CV"] and record["blend"]["method"] == name
            assert record["submission_file"] == f"{name}_cv{row['nested CV']:.4f}.csv"
            assert (config.submissions_dir / record["submission_file"]).is_file()
        else:
            assert record["blend"] is None and [r["name"] for r in record["runs"]] == [name.removeprefix("single-")]
        # each run's fold checkpoints by checksum, as they are on disk now
        for run in record["runs"]:
            assert sorted(run["checkpoints"]) == ["0", "1"]
            for fold, digest in run["checkpoints"].items():
                assert digest == file_sha256(config.runs_dir / run["name"] / f"fold{fold}" / "best.safetensors")


def test_exported_stacker_reproduces_a_probability_submission_to_1e_6(demo, tmp_path):
    """A sample with one probability column per class: predict.py's probabilities, not only its labels, are the
    ensemble's (a stacker applied to the fold means instead of each fold's models keeps most top labels)."""
    import shutil

    import numpy as np

    base = tmp_path / "copy"
    shutil.copytree(demo.parent / "data", base / "data")
    shutil.copytree(demo.parent / "out", base / "out")
    settings = yaml.safe_load(demo.read_text())
    settings["competition"]["data_dir"] = str(base / "data")
    settings["output_dir"] = str(base / "out")
    path = base / "comp.yaml"
    path.write_text(yaml.safe_dump(settings))
    classes = [str(c) for c in range(10)]
    sample = pd.read_csv(base / "data" / "sample_submission.csv", dtype=str)
    pd.DataFrame({"id": sample["id"], **{c: 0.1 for c in classes}}).to_csv(base / "data" / "sample_submission.csv",
                                                                            index=False)
    assert main(["ensemble", "--config", str(path), "--force"]) == 0
    config = load_config(path)
    folder = tmp_path / "stacker_export"
    assert main(["export", "--config", str(path), "--method", "logreg_stacker", "--out", str(folder)]) == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    got = _predict_elsewhere(folder, config, tmp_path / "elsewhere")
    expected = pd.read_csv(config.submissions_dir / manifest["submission_file"], dtype={"id": str})
    assert list(got.columns) == list(expected.columns) == ["id", *classes]
    assert list(got["id"]) == list(sample["id"])
    np.testing.assert_allclose(got[classes].to_numpy(), expected[classes].to_numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[classes].sum(axis=1), 1.0, atol=1e-6)
    assert compare_submissions(got, expected, "id") is None
    # the comparison can tell blends apart: the mean's probabilities are far from the stacker's
    board = pd.read_csv(config.submissions_dir / "leaderboard.csv")
    mean_cv = board.loc[board["submission"].str.rstrip(" *") == "mean", "nested CV"].iat[0]
    mean = pd.read_csv(config.submissions_dir / f"mean_cv{mean_cv:.4f}.csv", dtype={"id": str})
    assert np.abs(mean[classes].to_numpy() - got[classes].to_numpy()).max() > 1e-2
    assert "differs by up to" in compare_submissions(mean, got, "id")


@pytest.mark.parametrize(
    "pattern, expected",
    [
        ("test/{id}.png", "{id}.png"),
        ("images/test/{id}/0.jpg", "{id}/0.jpg"),
        ("{id}.png", "{id}.png"),
    ],
)
def test_image_pattern_under_the_test_folder(pattern, expected):
    assert image_pattern(pattern) == expected


def test_compare_submissions_names_what_differs():
    labels = pd.DataFrame({"id": ["1", "2"], "label": ["cat", "dog"]})
    probs = pd.DataFrame({"id": ["1"], "p": [0.5]})
    assert compare_submissions(labels, labels, "id") is None
    assert "differs at row 1" in compare_submissions(labels, labels.assign(label=["cat", "cow"]), "id")
    assert compare_submissions(probs, probs.assign(p=[0.5 + 5e-7]), "id") is None
    assert "differs by up to" in compare_submissions(probs, probs.assign(p=[0.5 + 5e-6]), "id")


def test_exported_models_predict_the_runs_stored_probabilities(demo):
    """Below the labels: each exported fold model's test probabilities equal what the run stored (within 1e-6)."""
    import numpy as np

    from pipeline.data import load_competition
    from pipeline.export.predict import Progress, TestImages, cache_side_for, image_paths, predict_model, read_spec
    from pipeline.folds import read_folds
    from pipeline.store import load_runs

    config = load_config(demo)
    folder = config.out / "export" / config.competition.name
    spec = read_spec(folder)
    competition = load_competition(config, check_image_files=False)
    _, fingerprint = read_folds(config, competition)
    runs = {
        r.name: r
        for r in load_runs(
            config.runs_dir, competition.train_ids, competition.test_ids, competition.classes, fingerprint
        )[0]
    }
    paths = image_paths(config.data_dir / "test", spec["image_pattern"], competition.test_ids)
    for model in spec["models"]:
        store = TestImages(paths, cache_side_for(paths, model["resize"]))
        got = predict_model(folder, model, spec, store, "cpu", None, Progress(100, len(paths), enabled=False))
        np.testing.assert_allclose(got, runs[model["run"]].fold_tests, rtol=0, atol=1e-6)


def test_a_checkpoint_replaced_before_the_ensemble_is_refused(demo, tmp_path, capsys):
    """The run records which file its predictions came from; the ensemble's record alone would not catch this."""
    config = load_config(demo)
    meta = json.loads((config.runs_dir / "digits_effnet" / "meta.json").read_text())
    assert len(meta["folds"]["0"]["checkpoint_sha256"]) == 64
    undo = _spoil_checkpoint(config)
    try:
        assert main(["ensemble", "--config", str(demo)]) == 0  # records the replaced file's checksum
        assert main(["export", "--config", str(demo), "--out", str(tmp_path / "x")]) == 2
        assert "predictions were made with another file" in capsys.readouterr().err
        assert not (tmp_path / "x").exists()
    finally:
        undo()
        assert main(["ensemble", "--config", str(demo)]) == 0


def test_a_stacker_with_metadata_columns_reads_them_from_the_test_table(demo, tmp_path, capsys):
    import shutil

    base = tmp_path / "copy"
    shutil.copytree(demo.parent / "data", base / "data")
    shutil.copytree(demo.parent / "out", base / "out")
    settings = yaml.safe_load(demo.read_text())
    settings["competition"].update(data_dir=str(base / "data"), test_csv="test.csv")
    settings["output_dir"] = str(base / "out")
    settings["ensemble"].update(stacker_features=["meta"], methods=["mean", "logreg_stacker"])
    path = base / "comp.yaml"
    path.write_text(yaml.safe_dump(settings))
    data = base / "data"
    train = pd.read_csv(data / "train.csv", dtype=str)
    train.assign(meta=train["label"].astype(int) % 3).to_csv(data / "train.csv", index=False)
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    solution = pd.read_csv(data / "solution.csv", dtype=str).set_index("id")
    pd.DataFrame({"id": sample["id"], "meta": solution.loc[sample["id"], "label"].astype(int).to_numpy() % 3}).to_csv(
        data / "test.csv", index=False
    )
    assert main(["ensemble", "--config", str(path), "--force"]) == 0
    out = tmp_path / "meta_export"
    assert main(["export", "--config", str(path), "--method", "logreg_stacker", "--out", str(out), "--check"]) == 0
    assert "check: the exported predictor reproduces logreg_stacker_cv" in capsys.readouterr().out
    spec = json.loads((out / "export.json").read_text())
    assert spec["ensemble"]["extra_features"] == ["meta"] and spec["test_csv"] == "test.csv"
    from pipeline.export.predict import main as predict_main

    assert (
        predict_main(
            [
                "--images",
                str(data / "test"),
                "--sample-submission",
                str(data / "sample_submission.csv"),
                "--out",
                str(tmp_path / "s.csv"),
                "--export",
                str(out),
                "--no-progress",
            ]
        )
        == 2
    )
    assert "--test-csv" in capsys.readouterr().err


def test_the_wheel_is_deterministic_and_installs_offline(tmp_path):
    from pipeline.export import PREDICT_REQUIRES, build_wheel

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = build_wheel(tmp_path / "a"), build_wheel(tmp_path / "b")
    assert first.read_bytes() == second.read_bytes()
    # pip resolves it with no index: every declared requirement is one prediction imports, and is installed here
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-index", "--dry-run", "--quiet", str(first)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-1500:]
    assert "torch" in PREDICT_REQUIRES and "optuna" not in PREDICT_REQUIRES


def test_the_wheel_holds_the_package_and_no_benchmark(tmp_path):
    import zipfile

    from pipeline.export import build_wheel

    names = zipfile.ZipFile(build_wheel(tmp_path)).namelist()
    modules = [n for n in names if n.endswith(".py")]
    assert "pipeline/blend/__init__.py" in modules and "pipeline/export/predict.py" in modules
    assert [n for n in modules if not n.startswith("pipeline/")] == []
    assert [n for n in names if "bench" in n.rsplit("/", 1)[-1] or n.startswith("benchmarks/")] == []


@pytest.mark.parametrize(
    "text, seconds", [("9h", 32400.0), ("90m", 5400.0), ("45s", 45.0), ("3600", 3600.0), ("1.5H", 5400.0)]
)
def test_time_limits_are_read_with_their_unit(text, seconds):
    from pipeline.export.predict import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-2h", "nine hours", "9d", "", "infh"])
def test_a_time_limit_that_is_no_duration_is_refused(text):
    from pipeline.export.predict import ExportPredictError, parse_duration

    with pytest.raises(ExportPredictError, match=r"--time-limit .*: give a duration above zero, e.g. 9h, 90m or 3600s"):
        parse_duration(text)


def test_the_projection_warns_once_when_it_is_past_the_limit(capsys):
    from pipeline.export.predict import Progress

    for limit, warnings in ((1e-9, 1), (1e6, 0)):
        bar = Progress(40, 1000, enabled=False, time_limit=limit)
        for _ in range(39):
            bar.step()
        bar.close()
        err = capsys.readouterr().err
        assert err.count("estimated time for the whole test set") == 3  # after the first batches, 1/4, 1/2
        assert err.count("warning: at this pace the whole test set takes about 0.0s, past --time-limit") == warnings


def test_the_export_measures_what_each_fold_model_and_view_costs(demo, capsys):
    from pipeline.export.cost import COLUMNS, cost_summary, measure_costs, projected_seconds

    config = load_config(demo)
    folder = config.out / "export" / config.competition.name
    spec = json.loads((folder / "export.json").read_text())
    costs = pd.read_csv(folder / "cost.csv")
    assert list(costs.columns) == COLUMNS
    expected = {(m["run"], f["fold"], view) for m in spec["models"] for f in m["folds"] for view in f["tta"]}
    assert set(zip(costs["model"], costs["fold"], costs["view"])) == expected and len(costs) == len(expected)
    assert (costs["ms_per_image"] > 0).all() and costs["device"].str.startswith("CPU").all()
    assert "cost.csv" in json.loads((folder / "manifest.json").read_text())["files"]  # checked like every file
    # the projection: the sum over the pieces per image, and per fold model its loading (once) and decoding (per
    # image: each fold model's pass reads every image), plus the start
    total = costs["ms_per_image"].sum()
    per_fold = costs.drop_duplicates(["model", "fold"])
    assert (per_fold["load_seconds"] > 0).all() and (per_fold["decode_ms_per_image"] > 0).all()
    assert len(per_fold) == sum(len(m["folds"]) for m in spec["models"])
    expected = total * 2 + per_fold["load_seconds"].sum() + per_fold["decode_ms_per_image"].sum() * 2 + 3.0
    assert projected_seconds(costs, 2000, startup=3.0) == pytest.approx(expected)
    assert json.loads((folder / "manifest.json").read_text())["startup_seconds"] > 0
    summary = cost_summary(costs)
    assert summary["ms per image"].sum() == pytest.approx(total)
    assert set(summary["model"]) == {m["run"] for m in spec["models"]}
    # the plan and the projection take each run's fold models at the median of their timings, view by view
    from pipeline.export.cost import planning_costs

    planned = planning_costs(costs)
    for (model, view), group in costs.groupby(["model", "view"]):
        rows = (planned["model"] == model) & (planned["view"] == view)
        assert (planned.loc[rows, "ms_per_image"] == group["ms_per_image"].median()).all()
    assert planned[["model", "fold", "view"]].equals(costs[["model", "fold", "view"]])
    with pytest.raises(ValueError, match="timed >= 1"):
        measure_costs(folder, spec, timed=0)
    with pytest.raises(ValueError, match="test images must be >= 0"):
        projected_seconds(costs, -1)
