"""The out-of-fold store on its own (``pipeline/store``): runs written by hand into a temporary folder, then read,
checked, locked, described and removed as the ensemble and ``make clean-run`` do.  No training here: these are the
fast tests ``make mutate`` runs against the store's every line.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline.store import (RunLayout, RunLock, RunMeta, StoreError, check_prediction_values, code_version,
                            describe_run, frame_probs, import_run, library_versions, load_runs, numeric_columns,
                            prediction_frame, previous_version, read_fold_tests, read_meta, read_table, remove_run,
                            run_hash, validate_import, write_meta)
from pipeline.store.views import fold_views, read_fold_predictions, read_view_frame, view_frame
from pipeline.task.metrics import get_metric

CLASSES = ["cat", "dog", "eel"]
TRAIN_IDS = np.array([f"t{i}" for i in range(6)])
TEST_IDS = np.array([f"s{i}" for i in range(4)])
FOLDS = np.array([0, 1, 0, 1, 0, 1])
Y = np.array([0, 1, 2, 0, 1, 2])


def _probs(n: int, seed: int) -> np.ndarray:
    p = np.random.default_rng(seed).random((n, 3)) + 0.1
    return p / p.sum(axis=1, keepdims=True)


def write_run(runs_dir, name, *, status="finished", fingerprint="fp", task="multiclass", classes=CLASSES,
              oof=None, test=None, fold_tests=None, folds_done=(0, 1)):
    """A run folder as training leaves it: meta.json, oof/test keyed by id, and each fold's row-keyed test file."""
    layout = RunLayout(runs_dir / name)
    layout.run_dir.mkdir(parents=True)
    oof = _probs(6, 1) if oof is None else oof
    fold_tests = np.stack([_probs(4, 2), _probs(4, 3)]) if fold_tests is None else fold_tests
    test = fold_tests.mean(axis=0) if test is None else test
    prediction_frame(TRAIN_IDS, oof, classes, FOLDS).to_parquet(layout.oof)
    prediction_frame(TEST_IDS, test, classes).to_parquet(layout.test)
    for fold, values in enumerate(fold_tests):
        layout.fold_dir(fold).mkdir()
        frame = pd.DataFrame(values, columns=[str(k) for k in range(values.shape[1])])
        frame.insert(0, "row", np.arange(len(values)))
        frame.sample(frac=1.0, random_state=fold).to_parquet(layout.fold_predictions(fold, "test"))  # any row order
    write_meta(layout, RunMeta(name=name, status=status, classes=list(classes), folds_fingerprint=fingerprint,
                               task=task, folds_done=list(folds_done), cv=0.5))
    return layout, oof, test, fold_tests


# -- the layout ------------------------------------------------------------------------------


def test_the_layout_names_every_file_of_a_run(tmp_path):
    layout = RunLayout(tmp_path / "r1")
    assert layout.name == "r1"
    assert (layout.meta, layout.oof, layout.oof_plain, layout.test, layout.lock) == tuple(
        tmp_path / "r1" / f for f in ("meta.json", "oof.parquet", "oof_plain.parquet", "test.parquet", ".lock"))
    fold = tmp_path / "r1" / "fold2"
    assert layout.fold_dir(2) == fold
    assert (layout.best(2), layout.fold_lock(2), layout.fold_log(2), layout.state(2), layout.previous_state(2),
            layout.fold_info(2)) == (fold / "best.safetensors", fold / "fold.lock", fold / "train.log",
                                     fold / "last.pt", fold / "last.prev.pt", fold / "fold.json")
    for kind in ("valid", "valid_plain", "test", "valid_views", "test_views"):
        assert layout.fold_predictions(2, kind) == fold / f"{kind}.parquet"
    with pytest.raises(ValueError, match=r"^fold prediction kind 'oof': choose one of valid, valid_plain, test, "
                                         r"valid_views, test_views$"):
        layout.fold_predictions(2, "oof")
    assert previous_version(tmp_path / "a.b.pt") == tmp_path / "a.b.prev.pt"
    fold.mkdir(parents=True)
    layout.fold_info(2).write_text(json.dumps({"score": 0.5}))
    assert layout.read_fold_info(2) == {"score": 0.5}


# -- prediction tables -----------------------------------------------------------------------


def test_a_prediction_frame_round_trips_in_any_row_order():
    probs = _probs(6, 4)
    frame = prediction_frame(TRAIN_IDS, probs, CLASSES, FOLDS)
    assert list(frame.columns) == ["id", "fold", *CLASSES]
    assert frame["fold"].dtype == np.int64 and frame["id"].tolist() == TRAIN_IDS.tolist()
    assert list(prediction_frame(TEST_IDS, probs[:4], CLASSES).columns) == ["id", *CLASSES]
    # numeric ids are stored as text, fold ids as integers, predictions as float64 whatever they came as
    typed = prediction_frame(np.arange(6), probs.astype(np.float32), CLASSES, FOLDS.astype(float))
    assert typed["id"].tolist() == ["0", "1", "2", "3", "4", "5"] and typed["fold"].dtype == np.int64
    assert (typed[CLASSES].dtypes == np.float64).all()
    np.testing.assert_array_equal(frame_probs(typed, np.arange(6), CLASSES, "oof"), probs.astype(np.float32))
    shuffled = frame.iloc[::-1]
    np.testing.assert_array_equal(frame_probs(shuffled, TRAIN_IDS, CLASSES, "oof"), probs)


@pytest.mark.parametrize("spoil, message", [
    (lambda f: f.drop(columns="dog"), r"^oof: no column for class\(es\) \['dog'\]$"),
    (lambda f: f[["id", "fold"]], r"^oof: no column for class\(es\) \['cat', 'dog', 'eel', 'fox', 'gnu'\]$"),
    (lambda f: pd.concat([f, f.iloc[:1]]), r"^oof: duplicate ids$"),
    (lambda f: f.iloc[:5], r"^oof: ids differ from the competition's \(5 rows vs 6\)$"),
    (lambda f: f.assign(id=[f"x{i}" for i in range(6)]), r"^oof: ids differ from the competition's \(6 rows vs 6\)$"),
    (lambda f: f.assign(dog="high"), r"^oof: a prediction column is not numeric \("),
    (lambda f: f.assign(dog=np.nan), r"^oof: NaN or inf predictions$"),
    (lambda f: f.assign(dog=np.inf), r"^oof: NaN or inf predictions$"),
])
def test_frame_probs_names_what_is_wrong(spoil, message):
    frame = prediction_frame(TRAIN_IDS, _probs(6, 5), CLASSES, FOLDS)
    six = CLASSES + ["fox", "gnu", "hen"]  # only the first five missing are named
    with pytest.raises(StoreError, match=message):
        frame_probs(spoil(frame), TRAIN_IDS, six if "fox" in message else CLASSES, "oof")


def test_tables_are_read_from_csv_or_parquet_and_refused_with_the_fix(tmp_path):
    frame = prediction_frame(np.array(["007", "8"]), _probs(2, 6), CLASSES)
    frame.to_csv(tmp_path / "p.csv", index=False)
    frame.to_parquet(tmp_path / "p.parquet")
    assert read_table(tmp_path / "p.csv")["id"].tolist() == ["007", "8"]  # ids stay strings: leading zeros kept
    pd.testing.assert_frame_equal(read_table(tmp_path / "p.parquet"), frame)
    (tmp_path / "bad.parquet").write_text("not parquet")
    (tmp_path / "bad.csv").write_bytes(b"\xff\xfe\x00a,b\n\x00\xff")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "p.json").write_text("{}")
    with pytest.raises(StoreError, match=rf"^{tmp_path / 'missing.csv'} does not exist$"):
        read_table(tmp_path / "missing.csv")
    reason = r"\((?!None\)).+\)"  # the reader's own first line
    with pytest.raises(StoreError, match=rf"bad.parquet is not a parquet file pandas can read {reason}; write it "
                                         r"with DataFrame.to_parquet, or pass a .csv$"):
        read_table(tmp_path / "bad.parquet")
    for name in ("bad.csv", "empty.csv"):
        with pytest.raises(StoreError, match=rf"{name} is not a CSV file pandas can read {reason}; write it with "
                                             r"DataFrame.to_csv\(index=False\)$"):
            read_table(tmp_path / name)
    with pytest.raises(StoreError, match=r"p.json: expected a .csv or .parquet file$"):
        read_table(tmp_path / "p.json")


def test_numeric_columns_name_the_first_bad_value_and_its_id():
    frame = pd.DataFrame({"id": ["a", "b", "c"], "x": [1, 2, 3], "y": ["0.5", None, "n/a"]})
    numeric_columns(frame, ["x"], "f.csv")
    numeric_columns(frame.iloc[:2], ["y"], "f.csv")  # strings of numbers and missing values pass
    with pytest.raises(StoreError, match=r"^f.csv: column 'y' holds 'n/a' \(id c\), not a number; every prediction "
                                         r"column must be numeric$"):
        numeric_columns(frame, ["x", "y"], "f.csv")


@pytest.mark.parametrize("task, values, message", [
    ("multiclass", [[0.2, 0.8, 0.0]], None),
    ("multiclass", [[0.0, 1.0, 0.0]], None),  # certain: 0 and 1 are probabilities
    ("multiclass", [[0.2, 0.7, 0.0]], r"^f: rows do not sum to 1 \(e.g. 0.9000\); apply a softmax first$"),
    ("multiclass", [[0.2, 0.7998, 0.0]], None),  # within 1e-3 of 1
    ("multiclass", [[-0.5, 1.5, 0.0]], r"^f: values outside \[0, 1\] \(min -0.5, max 1.5\); store probabilities, "
                                       r"not logits$"),
    ("multiclass", [[0.0, 1.2, -0.2]], r"values outside \[0, 1\] \(min -0.2, max 1.2\)"),
    ("multilabel", [[0.9, 0.9, 0.9]], None),  # labels do not sum to 1
    ("multilabel", [[0.9, 1.01, 0.9]], r"values outside \[0, 1\]"),
    ("regression", [[-3.0, 7.5, 0.0]], None),  # values: any finite number
])
def test_prediction_values_are_checked_per_task(task, values, message):
    probs = np.array(values)
    if message is None:
        check_prediction_values(probs, task, "f", CLASSES)
    else:
        with pytest.raises(StoreError, match=message):
            check_prediction_values(probs, task, "f", CLASSES)
    check_prediction_values(np.empty((0, 3)), "multiclass", "f", CLASSES)  # nothing to check


def test_rows_sum_to_one_from_two_classes_on():
    with pytest.raises(StoreError, match="rows do not sum to 1"):
        check_prediction_values(np.array([[0.3, 0.3]]), "multiclass", "f", ["a", "b"])
    check_prediction_values(np.array([[0.3]]), "multiclass", "f", ["a"])  # one column: a probability, not a split


# -- meta.json -------------------------------------------------------------------------------


def test_meta_round_trips_and_refuses_what_it_cannot_read(tmp_path):
    layout = RunLayout(tmp_path / "r")
    assert read_meta(layout) is None  # no meta.json yet: not a run
    layout.run_dir.mkdir()
    meta = RunMeta(name="r", status="partial", classes=CLASSES, folds_fingerprint="fp", cv=None, folds_done=[1])
    write_meta(layout, meta)
    stored = json.loads(layout.meta.read_text())
    assert "cv" not in stored and stored["schema_version"] == 3 and stored["folds_done"] == [1]  # None not written
    assert read_meta(layout) == meta
    base = {"name": "r", "status": "finished", "classes": CLASSES, "folds_fingerprint": "fp"}
    for data, message in [
        ([1], r"^m.json: expected a JSON object, got list$"),
        ({**base, "schema_version": "3"}, r"^m.json: schema_version '3' is newer than this pipeline's \(3\); upgrade"),
        ({**base, "colour": 1}, r"^m.json: unknown key\(s\) \['colour'\]; this pipeline reads \['batch_size_found'"),
        ({"name": "r", "status": "finished"}, r"^m.json: missing key\(s\) \['classes', 'folds_fingerprint'\]$"),
    ]:
        with pytest.raises(StoreError, match=message):
            RunMeta.from_json(data, "m.json")
    layout.meta.write_text(json.dumps({**base, "colour": 1}))
    with pytest.raises(StoreError, match=rf"^{layout.meta}: unknown key\(s\) \['colour'\]"):
        read_meta(layout)
    with pytest.raises(StoreError, match=r"^meta.json: expected a JSON object"):  # the default name
        RunMeta.from_json(None)
    layout.meta.write_text("{not json")
    with pytest.raises(StoreError, match=r"meta.json is damaged \(.*\); retrain the run from scratch with FORCE=1 "
                                         r"\(make train MODEL=r FORCE=1\)$"):
        read_meta(layout)


# -- reading runs for the ensemble -----------------------------------------------------------


def test_load_runs_reads_finished_runs_and_says_why_others_are_left_out(tmp_path):
    runs_dir = tmp_path / "runs"
    assert load_runs(runs_dir, TRAIN_IDS, TEST_IDS, CLASSES, "fp") == ([], [])  # no folder yet
    _, oof, test, fold_tests = write_run(runs_dir, "a_good")
    write_run(runs_dir, "b_partial", status="partial", folds_done=[1])
    write_run(runs_dir, "c_none_done", status="running", folds_done=[])
    write_run(runs_dir, "d_other_folds", fingerprint="other")
    write_run(runs_dir, "e_regression", task="regression")
    write_run(runs_dir, "f_classes", classes=["cat", "eel", "dog"])
    write_run(runs_dir, "g_logits", oof=_probs(6, 7) * 3)
    write_run(runs_dir, "h_logits_test", test=_probs(4, 8) - 0.5, fold_tests=np.stack([_probs(4, 8) - 0.5] * 2))
    (runs_dir / "i_damaged").mkdir()
    (runs_dir / "i_damaged" / "meta.json").write_text("[")
    (runs_dir / "j_no_meta").mkdir()  # a folder being made: not listed at all
    (runs_dir / "0_no_meta").mkdir()  # ... and neither stops the runs after them from being read
    (runs_dir / "00_damaged").mkdir()
    (runs_dir / "00_damaged" / "meta.json").write_text("{")
    layout, *_ = write_run(runs_dir, "l_no_dog")
    pd.read_parquet(layout.oof).drop(columns="dog").to_parquet(layout.oof)
    write_run(runs_dir, "z_good_too")
    write_run(runs_dir, "_hidden")
    write_run(runs_dir, ".hidden")
    (runs_dir / "k_file").write_text("not a run")

    runs, excluded = load_runs(runs_dir, TRAIN_IDS, TEST_IDS, CLASSES, "fp")
    assert [r.name for r in runs] == ["a_good", "z_good_too"]
    good = runs[0]
    np.testing.assert_allclose(good.oof, oof)
    np.testing.assert_allclose(good.test, test)
    np.testing.assert_allclose(good.fold_tests, fold_tests)  # each fold model's, rows in order
    assert good.meta.name == "a_good"
    reasons = dict(excluded)
    assert list(reasons) == ["00_damaged", "b_partial", "c_none_done", "d_other_folds", "e_regression", "f_classes",
                             "g_logits", "h_logits_test", "i_damaged", "l_no_dog"]
    assert reasons["l_no_dog"] == f"unreadable: {layout.oof}: no column for class(es) ['dog']"
    assert reasons["b_partial"] == ("unfinished (folds done: [1]); finish it with make train, or delete it with "
                                    "make clean-run NAME=b_partial")
    assert reasons["c_none_done"].startswith("unfinished (folds done: none);")
    assert reasons["d_other_folds"] == "made on other folds (fingerprint other != fp); mixing splits leaks"
    assert reasons["e_regression"] == "made for task 'regression', not 'multiclass'"
    assert reasons["f_classes"] == "its class list differs from train.csv's"
    assert reasons["g_logits"].startswith(f"unreadable: {runs_dir / 'g_logits' / 'oof.parquet'}: values outside")
    assert reasons["h_logits_test"].startswith(f"unreadable: {runs_dir / 'h_logits_test' / 'test.parquet'}: values")
    assert reasons["i_damaged"].startswith(f"unreadable: {runs_dir / 'i_damaged' / 'meta.json'} is damaged")
    # the same runs read for a regression task: only the regression run (values need no [0, 1])
    runs, _ = load_runs(runs_dir, TRAIN_IDS, TEST_IDS, CLASSES, "fp", task="regression")
    assert [r.name for r in runs] == ["e_regression"]
    # a test id missing from a run's test file: unreadable, named
    _, excluded = load_runs(runs_dir, TRAIN_IDS, np.append(TEST_IDS, "s9"), CLASSES, "fp")
    assert dict(excluded)["a_good"] == (f"unreadable: {runs_dir / 'a_good' / 'test.parquet'}: ids differ from the "
                                        "competition's (4 rows vs 5)")


def test_fold_tests_are_used_only_when_every_fold_agrees_with_the_test_file(tmp_path):
    layout, _, test, fold_tests = write_run(tmp_path, "r")
    meta = read_meta(layout)
    np.testing.assert_allclose(read_fold_tests(layout, meta, test), fold_tests)
    assert read_fold_tests(layout, meta, test + 0.01) is None  # their mean is not the run's test file
    assert read_fold_tests(layout, meta, test + 5e-7) is not None  # float32 rounding of a stored file is the same
    assert read_fold_tests(layout, meta, test[:3]) is None  # another number of rows
    assert read_fold_tests(layout, meta, np.hstack([test, test])) is None  # another number of columns
    meta.folds_done = []
    assert read_fold_tests(layout, meta, test) is None
    meta.folds_done = [0, 1, 2]  # fold 2 has no file
    assert read_fold_tests(layout, meta, test) is None
    meta.folds_done = [1, 0]
    path = layout.fold_predictions(1, "test")
    pd.read_parquet(path).drop(columns="row").to_parquet(path)  # no row column
    assert read_fold_tests(layout, meta, test) is None
    path.write_text("damaged")
    assert read_fold_tests(layout, meta, test) is None
    frame = pd.DataFrame(fold_tests[1], columns=["0", "1", "2"]).assign(row=np.arange(4))
    frame.loc[0, "1"] = np.nan
    frame.to_parquet(path)
    assert read_fold_tests(layout, meta, test) is None  # NaN


# -- views -----------------------------------------------------------------------------------


def test_each_views_predictions_round_trip_and_refuse_a_mismatch():
    rows = np.array([4, 1, 7])
    probs = np.stack([_probs(3, 9), _probs(3, 10)])
    frame = view_frame(["identity", "hflip"], rows, probs)
    assert list(frame.columns) == ["view", "row", "0", "1", "2"]
    assert frame["view"].tolist() == ["identity"] * 3 + ["hflip"] * 3 and frame["row"].tolist() == [4, 1, 7] * 2
    got_rows, got = read_view_frame(frame, ["hflip", "identity"])  # in the order asked for
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_array_equal(got, probs[::-1])
    with pytest.raises(ValueError, match=r"^probs of shape \(2, 3, 3\) do not match 3 views x 3 rows$"):
        view_frame(["a", "b", "c"], rows, probs)
    with pytest.raises(ValueError, match=r"do not match 2 views x 2 rows$"):
        view_frame(["a", "b"], rows[:2], probs)
    with pytest.raises(ValueError, match=r"^probs of shape \(2, 3, 2\) do not match 2 views x 2 rows$"):
        view_frame(["a", "b"], rows[:2], probs[..., :2])  # two outputs, two rows: still three rows predicted
    with pytest.raises(ValueError, match=r"^probs of shape \(6, 3\)"):
        view_frame(["a", "b"], rows, probs.reshape(6, 3))
    with pytest.raises(StoreError, match=r"^view 'vflip' has no predictions \(stored: \['hflip', 'identity'\]\)$"):
        read_view_frame(frame, ["identity", "vflip"])
    moved = frame.copy()
    moved.loc[moved["view"] == "hflip", "row"] = [4, 7, 1]
    with pytest.raises(StoreError, match=r"^view 'hflip' covers other rows than view 'identity'$"):
        read_view_frame(moved, ["identity", "hflip"])


def _write_fold(layout, fold, kind, rows, values):
    frame = pd.DataFrame(values, columns=[str(k) for k in range(values.shape[1])])
    frame.insert(0, "row", rows)
    layout.fold_dir(fold).mkdir(parents=True, exist_ok=True)
    frame.to_parquet(layout.fold_predictions(fold, kind))


def test_fold_views_from_their_file_one_view_or_two_derived(tmp_path):
    layout = RunLayout(tmp_path / "r")
    rows, first, second = np.array([3, 0, 5]), _probs(3, 11), _probs(3, 12)
    _write_fold(layout, 0, "valid", rows, (first + second) / 2)
    _write_fold(layout, 0, "valid_plain", rows, first.astype(np.float32))  # read back as float64
    _write_fold(layout, 0, "test", rows, first)
    got_rows, got = fold_views(layout, 0, "valid", ["identity", "hflip"])  # derived: 2 * mean - first
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_allclose(got, np.stack([first, second]), atol=1e-6)
    assert fold_views(layout, 0, "test", ["identity", "hflip"]) is None  # the test's first view was not kept
    assert fold_views(layout, 0, "valid", ["identity", "hflip", "vflip"]) is None  # three views: not derivable
    one_rows, one = fold_views(layout, 0, "test", ["identity"])  # one view: the fold's own file
    np.testing.assert_array_equal(one_rows, rows)
    np.testing.assert_allclose(one, first[None])
    view_frame(["identity", "hflip"], rows, np.stack([second, first])).to_parquet(
        layout.fold_predictions(0, "valid_views"))
    np.testing.assert_allclose(fold_views(layout, 0, "valid", ["identity", "hflip"])[1], np.stack([second, first]))
    read_rows, read = read_fold_predictions(layout, 0, "valid_plain")
    np.testing.assert_array_equal(read_rows, rows)
    np.testing.assert_allclose(read, first, atol=1e-7)
    assert read.dtype == np.float64
    stored = view_frame(["identity", "hflip"], rows, np.stack([second, first]).astype(np.float32))
    assert read_view_frame(stored, ["identity"])[1].dtype == np.float64
    with pytest.raises(ValueError, match=r"^split 'train': choose valid or test$"):
        fold_views(layout, 0, "train", ["identity"])
    layout.fold_predictions(0, "valid_views").unlink()
    _write_fold(layout, 0, "valid_plain", rows[::-1], first)
    with pytest.raises(StoreError, match=rf"^{layout.fold_predictions(0, 'valid_plain')} covers other rows than the "
                                         r"fold's valid$"):
        fold_views(layout, 0, "valid", ["identity", "hflip"])


# -- imports ---------------------------------------------------------------------------------


def _import_frames(oof=None, test=None):
    oof = prediction_frame(TRAIN_IDS, _probs(6, 13) if oof is None else oof, CLASSES, FOLDS)
    test = prediction_frame(TEST_IDS, _probs(4, 14) if test is None else test, CLASSES)
    return oof, test


@pytest.mark.parametrize("spoil, message", [
    (lambda o, t: (o.drop(columns="id"), t), r"^x.csv: the OOF file needs an 'id' column \(columns: \['fold', 'cat'"),
    (lambda o, t: (o, t.drop(columns="id")), r"^x.csv: the test file needs an 'id' column \(columns: \['cat', 'dog'"),
    (lambda o, t: (o.drop(columns="fold"), t), r"^x.csv: the OOF file needs a 'fold' column with each row's "
                                               r"validation fold \(ours: folds/<competition>.csv\)$"),
    (lambda o, t: (o.assign(fold=["0", "1", "a", "1", "0", "1"]), t), r"^x.csv \(OOF\): column 'fold' holds 'a'"),
    (lambda o, t: (o.assign(dog="x"), t), r"^x.csv \(OOF\): column 'dog' holds 'x' \(id t0\)"),
    (lambda o, t: (o, t.assign(eel="x")), r"^x.csv \(test\): column 'eel' holds 'x' \(id s0\)"),
    (lambda o, t: (o.drop(columns="eel"), t), r"^x.csv \(OOF\): no column for class\(es\) \['eel'\]$"),
    (lambda o, t: (o, t.iloc[:3]), r"^x.csv \(test\): ids differ from the competition's \(3 rows vs 4\)$"),
    (lambda o, t: (o.assign(fold=[0, 1, 0, 1, 0, 1.5]), t), r"^x.csv: the 'fold' column must hold whole fold numbers$"),
    (lambda o, t: (o.assign(fold=[0, 1, 0, 1, 1, 0]), t), r"^x.csv: fold assignment differs from ours on 2 rows "
                                                          r"\(e.g. id t4: fold 1 vs 0\); retrain that model on "
                                                          r"folds/<competition>.csv - mixing splits leaks$"),
    (lambda o, t: (o.assign(cat=o["cat"] + 1), t), r"^x.csv \(OOF\): values outside \[0, 1\]"),
    (lambda o, t: (o, t.assign(cat=t["cat"] - 1)), r"^x.csv \(test\): values outside \[0, 1\]"),
])
def test_imports_are_refused_naming_the_first_problem(spoil, message):
    oof, test = spoil(*_import_frames())
    with pytest.raises(StoreError, match=message):
        validate_import(oof, test, TRAIN_IDS, TEST_IDS, FOLDS, CLASSES, "x.csv")


def test_an_import_matches_ids_as_text_and_reads_fold_numbers_written_as_text():
    oof, test = _import_frames()
    ids = np.arange(6)
    oof = oof.assign(id=[str(i) for i in ids], fold=[str(f) for f in FOLDS])  # as a CSV read as text gives them
    got, _ = validate_import(oof, test, ids, TEST_IDS, FOLDS, CLASSES, "x.csv")
    np.testing.assert_allclose(got, oof[CLASSES].to_numpy())


def test_an_import_is_stored_as_a_finished_run_and_never_overwritten(tmp_path):
    oof_probs, test_probs = _probs(6, 15), _probs(4, 16)
    oof, test = _import_frames(oof_probs, test_probs)
    oof.iloc[::-1].assign(fold=lambda f: f["fold"].astype(float)).to_csv(tmp_path / "oof.csv", index=False)
    test.to_parquet(tmp_path / "test.parquet")
    run_dir = tmp_path / "runs" / "theirs"
    run_dir.mkdir(parents=True)
    metric = get_metric("log_loss")
    meta = import_run(run_dir, tmp_path / "oof.csv", tmp_path / "test.parquet", TRAIN_IDS, TEST_IDS, FOLDS, "fp",
                      CLASSES, metric, Y)
    assert (meta.name, meta.status, meta.model, meta.family, meta.task) == ("theirs", "finished", "imported",
                                                                             "imported", "multiclass")
    assert meta.source == {"oof": str(tmp_path / "oof.csv"), "test": str(tmp_path / "test.parquet")}
    assert meta.cv == pytest.approx(metric(Y, oof_probs)) and meta.metric == "log_loss"
    assert meta.folds_done == [0, 1] and meta.folds_fingerprint == "fp" and meta.classes == CLASSES
    assert meta.created is not None and read_meta(RunLayout(run_dir)) == meta
    runs, excluded = load_runs(tmp_path / "runs", TRAIN_IDS, TEST_IDS, CLASSES, "fp")
    assert excluded == [] and runs[0].fold_tests is None  # an imported run has no fold models
    np.testing.assert_allclose(runs[0].oof, oof_probs)
    np.testing.assert_allclose(runs[0].test, test_probs)
    stored = pd.read_parquet(RunLayout(run_dir).oof)
    assert stored["id"].tolist() == TRAIN_IDS.tolist() and stored["fold"].tolist() == FOLDS.tolist()
    with pytest.raises(StoreError, match=rf"^run {run_dir} exists; choose another NAME or pass FORCE=1$"):
        import_run(run_dir, tmp_path / "oof.csv", tmp_path / "test.parquet", TRAIN_IDS, TEST_IDS, FOLDS, "fp",
                   CLASSES, metric, Y)
    again = import_run(run_dir, tmp_path / "oof.csv", tmp_path / "test.parquet", TRAIN_IDS, TEST_IDS, FOLDS, "fp2",
                       CLASSES, metric, Y, force=True)
    assert again.folds_fingerprint == "fp2"
    # errors name the file given; a regression import takes any finite values and says so in its meta
    prediction_frame(TRAIN_IDS, _probs(6, 17)[:, :2], CLASSES[:2], FOLDS).to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(StoreError, match=rf"^{tmp_path / 'two.csv'} \(OOF\): no column for class\(es\) \['eel'\]$"):
        import_run(tmp_path / "runs" / "two", tmp_path / "two.csv", tmp_path / "test.parquet", TRAIN_IDS, TEST_IDS,
                   FOLDS, "fp", CLASSES, metric, Y)
    values = np.linspace(-5, 5, 6)[:, None]
    prediction_frame(TRAIN_IDS, values, ["target"], FOLDS).to_csv(tmp_path / "reg_oof.csv", index=False)
    prediction_frame(TEST_IDS, values[:4] * 2, ["target"]).to_csv(tmp_path / "reg_test.csv", index=False)
    rmse = get_metric("rmse")
    meta = import_run(tmp_path / "runs" / "reg", tmp_path / "reg_oof.csv", tmp_path / "reg_test.csv", TRAIN_IDS,
                      TEST_IDS, FOLDS, "fp", ["target"], rmse, np.zeros(6), task="regression")
    assert meta.task == "regression" and meta.cv == pytest.approx(rmse(np.zeros(6), values))


# -- describing, locking and removing a run --------------------------------------------------


def test_describe_run_in_a_few_words(tmp_path):
    layout, *_ = write_run(tmp_path, "done")
    assert describe_run(layout.run_dir) == "finished, folds done [0, 1], CV 0.5000"
    write_run(tmp_path, "fresh", status="running", folds_done=[])
    meta = read_meta(RunLayout(tmp_path / "fresh"))
    meta.cv = None
    write_meta(RunLayout(tmp_path / "fresh"), meta)
    assert describe_run(tmp_path / "fresh") == "running, folds done none"
    (tmp_path / "empty").mkdir()
    assert describe_run(tmp_path / "empty") == "no meta.json"
    (tmp_path / "empty" / "meta.json").write_text("{}")
    assert describe_run(tmp_path / "empty").startswith("unreadable: ")


def _dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()


def test_the_run_lock_is_exclusive_and_takes_over_only_a_dead_local_owner(tmp_path):
    host = platform.node() or "localhost"
    run_dir = tmp_path / "r"
    with RunLock(run_dir) as lock:  # makes the folder
        assert lock.path == run_dir / ".lock" and lock.path.read_text() == f"{host}:{os.getpid()}"
        with pytest.raises(StoreError, match=rf"^{run_dir} is being trained by process {os.getpid()}; wait for it "
                                             r"or stop it$"):
            RunLock(run_dir).__enter__()
    assert not (run_dir / ".lock").exists()
    fold_lock = RunLayout(run_dir).fold_lock(3)
    with RunLock(run_dir, fold_lock):  # a finer lock: one fold's
        assert fold_lock.is_file() and not (run_dir / ".lock").exists()
    (run_dir / ".lock").write_text("garbage")  # unreadable owner: taken over
    with RunLock(run_dir):
        pass
    (run_dir / ".lock").write_text(_dead_pid())
    with RunLock(run_dir):
        assert (run_dir / ".lock").read_text() == f"{host}:{os.getpid()}"
        (run_dir / ".lock").unlink()  # deleted by hand meanwhile (as the message for another machine's lock says)
    # a fold's lock in a run folder not made yet
    nested = RunLayout(tmp_path / "new" / "run").fold_lock(0)
    with RunLock(nested.parent.parent, nested):
        assert nested.is_file()
    # another machine's lock, its name holding colons of its own, is never taken over
    (run_dir / ".lock").write_text("gpu:box:7:4242")
    with pytest.raises(StoreError, match=rf"^{run_dir} is being trained by process 4242 on machine gpu:box:7; wait "
                                         rf"for it, or delete {run_dir / '.lock'} if that job is gone$"):
        RunLock(run_dir).__enter__()


def test_remove_run_deletes_one_run_under_its_lock(tmp_path):
    runs_dir = tmp_path / "runs"
    layout, *_ = write_run(runs_dir, "old")
    write_run(runs_dir, "kept")
    write_run(runs_dir, "_cache")
    write_run(runs_dir, ".hidden")
    write_run(runs_dir, "also")
    with pytest.raises(StoreError, match=rf"^no run {runs_dir / 'olf'}; runs: also, kept, old$"):  # hidden ones not
        remove_run(runs_dir, "olf")
    assert remove_run(runs_dir, "also") == runs_dir / "also"
    assert remove_run(runs_dir, "old") == layout.run_dir
    assert not layout.run_dir.exists() and (runs_dir / "kept" / "meta.json").is_file()
    with pytest.raises(StoreError, match=rf"^no run {runs_dir / 'old'}; runs: kept$"):
        remove_run(runs_dir, "old")
    with pytest.raises(ValueError, match=r"^NAME='_cache' must be one name of letters"):  # not a run's name
        remove_run(runs_dir, "_cache")
    with pytest.raises(StoreError, match=rf"^no run {tmp_path / 'none' / 'x'}; runs: none$"):
        remove_run(tmp_path / "none", "x")
    with pytest.raises(ValueError, match="NAME"):
        remove_run(runs_dir, "../kept")
    (runs_dir / "kept" / ".lock").write_text(f"{platform.node() or 'localhost'}:{os.getpid()}")
    with pytest.raises(StoreError, match="being trained by process"):
        remove_run(runs_dir, "kept")
    assert (runs_dir / "kept" / "meta.json").is_file()


# -- run hashes and provenance ---------------------------------------------------------------


def test_the_run_hash_follows_the_settings_the_folds_and_the_competition():
    from pipeline.config import load_config, resolve_train_config

    config = load_config("configs/digits.yaml")
    cfg = resolve_train_config(config, "digits_resnet")[1]
    base = run_hash(cfg, config, "f")
    assert len(base) >= 12 and run_hash(cfg, config, "f") == base  # the same settings: the same run
    assert run_hash(cfg, config, "g") != base  # other folds
    assert run_hash(cfg.model_copy(update={"lr": cfg.lr * 2}), config, "f") != base  # another recipe
    other = config.model_copy(update={"competition": config.competition.model_copy(update={"metric": "log_loss"})})
    assert run_hash(cfg, other, "f") != base  # another competition setting


def test_the_run_hash_is_the_hash_of_these_three_keys(monkeypatch):
    # the keys are part of every stored run's identity: renaming one would retrain every run made before
    import pipeline.store.meta as meta
    from pipeline.core.hashing import json_hash

    monkeypatch.setattr(meta, "settings_dump", lambda cfg: {"lr": cfg})
    monkeypatch.setattr(meta, "competition_settings", lambda config: {"metric": config})
    assert meta.run_hash(0.1, "accuracy", "fp") == json_hash(
        {"train": {"lr": 0.1}, "competition": {"metric": "accuracy"}, "folds_fingerprint": "fp"})


def test_a_run_records_the_versions_it_was_made_with():
    import pipeline

    versions = library_versions()
    assert set(versions) == {"python", "torch", "timm", "albumentations", "numpy", "pandas", "scikit-learn",
                             "pipeline"}
    assert versions["python"] == platform.python_version() and versions["numpy"] == np.__version__
    assert versions["pipeline"] == pipeline.__version__ and versions["pandas"] == pd.__version__
    code = code_version()
    assert code["pipeline"] == pipeline.__version__
    source = os.path.dirname(os.path.realpath(pipeline.__file__))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (CI's clone, a worktree): the commit and whether it has changes
        status = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=source, capture_output=True, text=True)
        assert code == {"pipeline": pipeline.__version__, "git_commit": head.stdout.strip(),
                        "git_dirty": bool(status.stdout.strip())}
    else:
        assert set(code) == {"pipeline"}


def test_the_code_version_says_when_the_package_has_local_changes(tmp_path, monkeypatch):
    import pipeline

    package = tmp_path / "repo" / "pipeline"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")

    def git(*args):
        done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=package,
                              capture_output=True, text=True, check=True)
        return done.stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    monkeypatch.setattr(pipeline, "__file__", str(package / "__init__.py"))
    assert code_version() == {"pipeline": pipeline.__version__, "git_commit": git("rev-parse", "HEAD"),
                              "git_dirty": False}
    (package.parent / "notes.txt").write_text("")  # beside the package: not the package's change
    assert code_version()["git_dirty"] is False
    (package / "new.py").write_text("")
    assert code_version()["git_dirty"] is True


def test_the_code_version_is_the_packages_wherever_it_is_called_from(tmp_path, monkeypatch):
    here = code_version()
    monkeypatch.chdir(tmp_path)  # not a git checkout: the commit still comes from the package's own folder
    assert code_version() == here


def test_a_missing_library_is_recorded_as_not_installed(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.version

    def version(package):
        if package == "timm":
            raise importlib.metadata.PackageNotFoundError(package)
        return real(package)

    monkeypatch.setattr(importlib.metadata, "version", version)
    versions = library_versions()
    assert versions["timm"] == "not installed" and versions["torch"] == real("torch")
