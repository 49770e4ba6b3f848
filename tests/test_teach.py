"""``TEACHER=`` resolved against the store (``pipeline.students.teach``): runs written by hand with each fold model's
test predictions, a real ``make ensemble`` over them, then every teacher a user can name and every refusal, quoted
whole.  No training: the fast tests ``make mutate`` runs against the teacher's resolution.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.data import load_competition
from pipeline.ensemble.fitted import INDEX, fitted_dir
from pipeline.folds import read_folds
from pipeline.store import RunLayout, RunMeta, prediction_frame, read_meta, write_meta
from pipeline.students.teach import (FALLBACK_METHOD, Teacher, TeacherError, competition_folds, fallback_reason,
                                     resolve_teacher, stored_candidates)


def write_trained_run(config, competition, folds, fingerprint, name, strength, seed):
    """A finished run as training leaves it: OOF keyed by id, each fold model's test predictions keyed by row,
    their mean as test.parquet."""
    rng = np.random.default_rng(seed)
    classes = [str(c) for c in competition.classes]

    def probs(labels):
        logits = rng.normal(size=(len(labels), len(classes))) + strength * np.eye(len(classes))[labels]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    layout = RunLayout(config.runs_dir / name)
    layout.run_dir.mkdir(parents=True)
    truth = competition.solution_labels()
    fold_ids = sorted(set(folds.tolist()))
    fold_tests = np.stack([probs(truth) for _ in fold_ids])
    prediction_frame(competition.train_ids, probs(competition.y), classes, folds).to_parquet(layout.oof)
    prediction_frame(competition.test_ids, fold_tests.mean(axis=0), classes).to_parquet(layout.test)
    for fold, values in zip(fold_ids, fold_tests):
        layout.fold_dir(fold).mkdir()
        frame = pd.DataFrame(values, columns=[str(k) for k in range(len(classes))])
        frame.insert(0, "row", np.arange(len(values)))
        frame.to_parquet(layout.fold_predictions(fold, "test"))
    write_meta(layout, RunMeta(name=name, status="finished", classes=classes, folds_fingerprint=fingerprint,
                               model="digits_resnet", config_hash=f"hash-{name}", folds_done=fold_ids, cv=0.5))
    return layout


@pytest.fixture()
def store(small_config):
    """Folds, two runs and a third weaker one written by hand, no ensemble yet."""
    assert main(["folds", "--config", str(small_config)]) == 0
    config = load_config(small_config)
    competition = load_competition(config, check_image_files=False)
    folds, fingerprint = read_folds(config, competition)
    for name, strength, seed in (("a", 2.0, 1), ("b", 2.0, 2), ("c", 0.5, 3)):
        write_trained_run(config, competition, folds, fingerprint, name, strength, seed)
    return small_config, config, competition, fingerprint


def as_imported(config, name):
    """Make a hand-written run look imported: no fold test files, its test predictions a mean over every fold's
    models."""
    layout = RunLayout(config.runs_dir / name)
    meta = read_meta(layout)
    meta.model = "imported"
    write_meta(layout, meta)
    for fold in meta.folds_done:
        layout.fold_predictions(fold, "test").unlink()


def _ensemble(path, *args):
    assert main(["ensemble", "--config", str(path), *args]) == 0


def test_a_run_name_teaches_alone_and_a_stored_blend_teaches_its_runs(store):
    path, config, competition, fingerprint = store
    np.testing.assert_array_equal(competition_folds(config, competition), read_folds(config, competition)[0])
    # a run alone, before any ensemble
    alone = resolve_teacher(config, "a", competition, fingerprint)
    assert (alone.name, alone.method, alone.params, [r.name for r in alone.runs]) == ("a", None, {}, ["a"])
    assert alone.fallback is None and alone.left_out == []
    with pytest.raises(TeacherError, match=r"^TEACHER=submission needs the ensemble's chosen blend: "):
        resolve_teacher(config, "submission", competition, fingerprint)
    with pytest.raises(TeacherError, match=rf"^TEACHER=zz is neither a run in {config.runs_dir} \(train it first: make "
                                           r"train MODEL=zz\) nor a stored blend \("):
        resolve_teacher(config, "zz", competition, fingerprint)
    assert stored_candidates(config) == []

    _ensemble(path, "ensemble.runs=[a,b]")
    candidates = stored_candidates(config)
    assert "mean" in candidates and "caruana" in candidates and "single-a" in candidates
    mean = resolve_teacher(config, "mean", competition, fingerprint)
    assert (mean.name, mean.method, [r.name for r in mean.runs]) == ("mean", "mean", ["a", "b"])
    caruana = resolve_teacher(config, "caruana", competition, fingerprint)
    assert caruana.method == "caruana" and caruana.params["calibrate"] is not None
    chosen = json.loads((fitted_dir(config) / INDEX).read_text())
    submission = resolve_teacher(config, "submission", competition, fingerprint)
    assert submission.name == chosen["submission"] == "mean"
    single = resolve_teacher(config, "single-b", competition, fingerprint)
    assert (single.method, [r.name for r in single.runs]) == (None, ["b"])
    # what the student's settings hash and meta.json keep of a teacher
    assert mean.identity() == {"name": "mean", "method": "mean", "params": mean.params, "fallback": None,
                               "runs": [["a", "hash-a"], ["b", "hash-b"]]}
    assert mean.record() == {**mean.identity(), "left_out": []}
    assert mean.key() != caruana.key() and mean.key() == resolve_teacher(config, "mean", competition,
                                                                         fingerprint).key()
    assert mean.fold_position(2) == 2 and mean.fold_test(1).shape == (2, len(competition.test_ids), 10)
    np.testing.assert_allclose(mean.oof(), np.stack([r.oof for r in mean.runs]))
    # the student cannot be its own teacher
    with pytest.raises(TeacherError, match=r"^the teacher \(mean\) blends b, the run this command writes; delete it "
                                           r"first \(make clean-run NAME=b\) and rerun make ensemble, or name the new "
                                           r"run otherwise \(NAME=\)$"):
        resolve_teacher(config, "mean", competition, fingerprint, student="b")
    assert resolve_teacher(config, "mean", competition, fingerprint, student="c").runs  # not blended: allowed


@pytest.mark.parametrize("spoil, message", [
    # retrained since the ensemble was fitted
    (lambda layout, meta: setattr(meta, "config_hash", "new"),
     r"^teacher run\(s\) \['b'\] were retrained since the ensemble was fitted: run 'make ensemble' first$"),
    # made on other folds since
    (lambda layout, meta: setattr(meta, "folds_fingerprint", "other"),
     r"^teacher run b was made on other folds \(fingerprint other != .*\); mixing splits leaks: retrain it on the "
     r"current folds \(make train MODEL=b FORCE=1\), then make ensemble$"),
    # unfinished
    (lambda layout, meta: (setattr(meta, "status", "partial"), setattr(meta, "folds_done", [0])),
     r"^teacher run b is unfinished \(folds done: \[0\]\); finish it with make train"),
])
def test_a_teacher_run_that_changed_is_refused(store, spoil, message):
    path, config, competition, fingerprint = store
    _ensemble(path, "ensemble.runs=[a,b]")
    layout = RunLayout(config.runs_dir / "b")
    meta = read_meta(layout)
    spoil(layout, meta)
    write_meta(layout, meta)
    with pytest.raises(TeacherError, match=message):
        resolve_teacher(config, "mean", competition, fingerprint)


def test_a_teacher_run_without_its_fold_predictions_says_what_to_run(store):
    path, config, competition, fingerprint = store
    _ensemble(path, "ensemble.runs=[a,b]")
    layout = RunLayout(config.runs_dir / "b")
    missing = layout.fold_predictions(1, "test")
    kept = pd.read_parquet(missing)
    missing.unlink()
    with pytest.raises(TeacherError, match=rf"^teacher run b has no test predictions of fold 1 \({missing} is "
                                           r"missing\): run 'make train MODEL=b FOLDS=1 FORCE=1' first$"):
        resolve_teacher(config, "mean", competition, fingerprint)
    layout.best(1).write_bytes(b"a checkpoint")  # the checkpoint is there: predicting again is enough
    with pytest.raises(TeacherError, match=r"run 'make predict MODEL=b' first$"):
        resolve_teacher(config, "mean", competition, fingerprint)
    kept.assign(**{"0": kept["0"] + 0.1}).to_parquet(missing)  # there, but not what test.parquet averages
    with pytest.raises(TeacherError, match=r"^teacher run b: its per-fold test predictions do not match its "
                                           r"test.parquet; rewrite them with 'make predict MODEL=b'$"):
        resolve_teacher(config, "mean", competition, fingerprint)
    # the run is gone altogether
    import shutil

    shutil.rmtree(layout.run_dir)
    with pytest.raises(TeacherError, match=rf"^teacher run b is missing from {config.runs_dir}: train it first \(make "
                                           r"train MODEL=b\), then make ensemble$"):
        resolve_teacher(config, "mean", competition, fingerprint)


def test_imported_runs_are_left_out_of_a_teacher_with_why(store):
    path, config, competition, fingerprint = store
    for name in ("a", "c"):
        as_imported(config, name)
    _ensemble(path, "ensemble.runs=[a,b]")
    teacher = resolve_teacher(config, "mean", competition, fingerprint)
    why = "imported: no per-fold test predictions, and its fold-mean ones saw every fold's labels"
    assert [r.name for r in teacher.runs] == ["b"] and teacher.left_out == [("a", why)]
    assert teacher.method is None and teacher.params == {}  # a blend of one run is that run
    assert teacher.record()["left_out"] == [["a", why]]
    _ensemble(path, "ensemble.runs=[a,c]")
    with pytest.raises(TeacherError, match=rf"^the teacher \(mean\) has no run with per-fold test predictions \(a: "
                                           rf"{why}; c: {why}\); train one \(make train MODEL=\.\.\.\) and rerun make "
                                           r"ensemble$"):
        resolve_teacher(config, "mean", competition, fingerprint)


def test_a_blend_stored_on_other_folds_or_unreadable_is_refused(store):
    path, config, competition, fingerprint = store
    _ensemble(path, "ensemble.runs=[a,b]")
    with pytest.raises(TeacherError, match=r"^the stored ensemble \(mean\) was made on other folds \(fingerprint "
                                           rf"{fingerprint} != other\): run 'make ensemble' first$"):
        resolve_teacher(config, "mean", competition, "other")
    (fitted_dir(config) / INDEX).write_text("[not an index")
    assert stored_candidates(config) == []


def test_a_blend_that_cannot_be_refit_per_fold_falls_back_to_the_mean(store, monkeypatch):
    from types import SimpleNamespace

    import pipeline.students.teach as teach

    assert fallback_reason("no_such_method", SimpleNamespace(extra_features=[])) == (
        "blend method 'no_such_method' is not registered here")
    assert fallback_reason("logreg_stacker", SimpleNamespace(extra_features=["age"])) == (
        "logreg_stacker read metadata columns ['age'], which the per-fold refit does not read")
    assert fallback_reason("caruana", SimpleNamespace(extra_features=[])) is None
    path, config, competition, fingerprint = store
    _ensemble(path, "ensemble.runs=[a,b]")
    asked = []
    reason = "blend method 'caruana' is not registered here"
    monkeypatch.setattr(teach, "fallback_reason", lambda method, record: asked.append(method) or reason)
    teacher = resolve_teacher(config, "caruana", competition, fingerprint)
    assert asked == ["caruana"]
    assert (teacher.method, teacher.params, teacher.fallback) == (FALLBACK_METHOD, {}, reason)
    assert isinstance(teacher, Teacher) and [r.name for r in teacher.runs] == ["a", "b"]


# -- the student's name, plan and table (pipeline.students.teacher), before any training ------------


def test_a_students_name():
    from pipeline.students.teacher import student_name

    assert student_name("resnet", "pseudo") == "resnet-pl"
    assert student_name("resnet", "distill") == "resnet-distill"
    assert student_name("resnet", "pseudo", round_=2) == "resnet-pl2"
    assert student_name("resnet", "distill", name="mine", round_=3) == "mine3"
    assert student_name("resnet", "pseudo", name="mine") == "mine"
    with pytest.raises(ValueError, match=r"^NAME='\.\./x' must be one name"):
        student_name("resnet", "pseudo", name="../x")


def test_a_student_plan_is_keyed_by_its_teacher_and_settings_and_recorded(store):
    from pipeline.config import DistillConfig, PseudoConfig, TrainConfig
    from pipeline.core.hashing import json_hash
    from pipeline.students.teacher import StudentPlan

    path, config, competition, fingerprint = store
    teacher = resolve_teacher(config, "a", competition, fingerprint)
    folds = competition_folds(config, competition)
    pseudo = StudentPlan("pseudo", teacher, competition, folds, config, PseudoConfig(max_share=0.5))
    assert pseudo.key() == json_hash(["pseudo", teacher.key(), PseudoConfig(max_share=0.5).model_dump(), None])
    distill = StudentPlan("distill", teacher, competition, folds, config, None, DistillConfig(alpha=0.3))
    assert distill.key() == json_hash(["distill", teacher.key(), None, DistillConfig(alpha=0.3).model_dump()])
    rule = ("fold k's targets come from the blend refit on the OOF rows outside fold k, applied to the fold-k models "
            "of its runs")
    assert pseudo.record() == {"kind": "pseudo", **teacher.record(), "rule": rule,
                               "pseudo": PseudoConfig(max_share=0.5).model_dump()}
    assert distill.record() == {"kind": "distill", **teacher.record(), "rule": rule,
                                "distill": DistillConfig(alpha=0.3).model_dump()}
    pseudo.check(TrainConfig())
    for mixing in ({"mixup_alpha": 0.2}, {"cutmix_alpha": 1.0}):
        with pytest.raises(Exception, match=r"^make pseudo trains on packed soft targets; mixup/cutmix "
                                            r"\(train.mixup_alpha, train.cutmix_alpha\) do not combine with it yet: "
                                            r"set them to 0 for the student$"):
            pseudo.check(TrainConfig(**mixing))


def test_run_student_refuses_before_training(store, caplog):
    from pipeline.students.teacher import run_student

    path, config, competition, fingerprint = store
    with pytest.raises(ValueError, match=r"^student kind 'teach': choose one of \['distill', 'pseudo'\]$"):
        run_student(config, "digits_resnet", "teach", competition=competition)
    _ensemble(path, "ensemble.runs=[a,b]")
    with pytest.raises(TeacherError, match=r"^the teacher \(mean\) blends a, the run this command writes"):
        run_student(config, "digits_resnet", "pseudo", teacher="mean", name="a", competition=competition)
    # a finished student of the same kind is kept, whatever the ensemble says now
    layout = RunLayout(config.runs_dir / "digits_resnet-pl")
    layout.run_dir.mkdir()
    finished = RunMeta(name="digits_resnet-pl", status="finished", classes=[str(c) for c in competition.classes],
                       folds_fingerprint=fingerprint, cv=0.75, teacher={"kind": "pseudo"})
    write_meta(layout, finished)
    with caplog.at_level("INFO", logger="pipeline.students.teacher"):
        assert run_student(config, "digits_resnet", "pseudo", competition=competition) == finished
    assert "digits_resnet-pl: already finished (CV 0.7500); pass FORCE=1 to retrain" in caplog.text


def test_a_students_table_per_fold():
    from pipeline.students.teacher import student_leaderboard

    meta = RunMeta(name="r-pl", status="finished", classes=["a", "b"], folds_fingerprint="f", timm_name="resnet18",
                   metric="accuracy", cv=0.9, cv_plain=0.85, private_lb=0.875,
                   teacher={"kind": "pseudo", "name": "mean", "method": "mean", "fallback": "no refit"},
                   folds={"2": {"score": 0.8, "score_plain": 0.7, "pseudo": {"count": 5, "balance": {"a": 0.25,
                                                                                                    "b": 0.75}}},
                          "0": {"score": 0.9, "pseudo": {"count": 3, "mean": 1.5, "std": 0.25}},
                          "10": {"score": 0.95}})
    lines = student_leaderboard(meta).splitlines()
    assert lines[0] == ("r-pl (resnet18, accuracy) - finished; pseudo of mean (mean, fallback: no refit), "
                        "private LB 0.8750")
    header = lines[1].split()
    assert header == ["fold", "score", "no", "TTA", "pseudo", "rows", "pseudo", "balance"]
    body = [line.split() for line in lines[3:]]
    assert body[0][:4] == ["0", "0.9000", "-", "3"] and body[0][4:] == ["mean", "1.5", "std", "0.25"]
    assert body[1] == ["2", "0.8000", "0.7000", "5", "0.25", "0.75"]
    assert body[2] == ["10", "0.9500", "-", "0"]  # fold 10 after fold 2: folds sorted as numbers; no pseudo: blank
    assert body[3] == ["CV", "0.9000", "0.8500"]
    running = RunMeta(name="r-d", status="running", classes=["a"], folds_fingerprint="f", timm_name="t",
                      metric="rmse", teacher={"name": "a"})
    assert student_leaderboard(running).splitlines()[0] == "r-d (t, rmse) - running; student of a (single model)"


# -- the pseudo table and the naive teacher, by hand ----------------------------------------------------


def test_hard_labels_and_the_pseudo_tables_defaults():
    from pipeline.students.teach import hard_labels, pseudo_table

    np.testing.assert_array_equal(hard_labels(np.array([[0.2, 0.45, 0.35], [0.4, 0.3, 0.3]]), "simplex"),
                                  [[0, 1, 0], [1, 0, 0]])  # the top class, even below 0.5
    labels = hard_labels(np.array([[0.5, 0.49, 0.9]], dtype=np.float32), "probability")
    np.testing.assert_array_equal(labels, [[1.0, 0.0, 1.0]])  # 0.5 counts as positive
    assert labels.dtype == np.float64
    soft = np.full((4, 2), 0.5)
    assert len(pseudo_table(soft, "multiclass", n_train=3).rows) == 3  # by default at most as many as the train rows
    values = np.arange(40.0)[:, None]
    drawn = pseudo_table(values, "regression", n_train=10, max_share=0.5)
    np.testing.assert_array_equal(drawn.rows, pseudo_table(values, "regression", 10, max_share=0.5, seed=0).rows)
    assert not np.array_equal(drawn.rows, pseudo_table(values, "regression", 10, max_share=0.5, seed=1).rows)
    # equally confident rows: the earlier ones are kept (here, the first ten of the twenty rows at 0.7)
    tied = np.tile([[0.7, 0.3], [0.6, 0.4]], (20, 1))
    np.testing.assert_array_equal(pseudo_table(tied, "multiclass", n_train=10, max_share=1.0).rows, np.arange(0, 20, 2))
    # hard targets: the top class one-hot even below 0.5, float64, and the table says it is hard
    hard = pseudo_table(np.array([[0.45, 0.35, 0.2], [0.3, 0.3, 0.4]], dtype=np.float32), "multiclass", n_train=10,
                        hard_threshold=0.4)
    np.testing.assert_array_equal(hard.targets, [[1, 0, 0], [0, 0, 1]])
    assert hard.hard is True and hard.targets.dtype == np.float64
    soft_table = pseudo_table(np.array([[0.45, 0.55]], dtype=np.float32), "multiclass", n_train=10)
    assert soft_table.hard is False and soft_table.targets.dtype == np.float64
    with pytest.raises(TeacherError, match=r"^pseudo.hard_threshold=0.9: a ordinal teacher gives values, which have "
                                           r"no confidence to threshold; use soft targets "
                                           r"\(pseudo.hard_threshold=null\)$"):
        pseudo_table(values, "ordinal", n_train=10, hard_threshold=0.9)


def test_the_pseudo_tables_count_and_balance():
    from pipeline.students.teach import PseudoTable

    table = PseudoTable(np.array([2, 5]), np.array([[0.2, 0.8], [0.6, 0.4]]), hard=False)
    assert table.stats(["cat", "dog"], "simplex") == {"count": 2, "hard": False,
                                                      "balance": {"cat": pytest.approx(0.4), "dog": pytest.approx(0.6)}}
    values = PseudoTable(np.array([0, 1, 2]), np.array([[1.0], [2.0], [4.0]]), hard=False)
    assert values.stats(["target"], "value") == {"count": 3, "hard": False, "mean": pytest.approx(7 / 3),
                                                 "std": pytest.approx(np.std([1.0, 2.0, 4.0]))}
    assert PseudoTable(np.array([], int), np.empty((0, 2)), True).stats(["a", "b"], "simplex") == {"count": 0,
                                                                                                   "hard": True}


def test_the_naive_teacher_is_the_all_rows_blend_on_the_fold_means():
    from pipeline import blend
    from pipeline.students.teach import naive_teacher_test
    from pipeline.task.metrics import get_metric

    rng = np.random.default_rng(4)
    oof = rng.random((2, 30, 3))
    y = (rng.random((30, 3)) > 0.5).astype(float)  # multilabel: columns do not sum to 1
    fold_tests = rng.random((2, 3, 8, 3)).astype(np.float32)
    metric = get_metric("log_loss")
    means = fold_tests.astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(naive_teacher_test(None, {}, oof, y, fold_tests, metric, "multilabel"), means[0])
    got = naive_teacher_test("mean", {}, oof, y, fold_tests, metric, "multilabel")
    np.testing.assert_allclose(got, means.mean(axis=0), rtol=1e-6)  # per label, not renormalised as one split
    stacker = naive_teacher_test("logreg_stacker", {"C": 0.1}, oof, y, fold_tests, metric, "multilabel")
    by_hand = blend.make_blend("logreg_stacker", C=0.1).fit(oof, y, metric, task="multilabel").predict(means)
    np.testing.assert_allclose(stacker, by_hand)
    assert not np.allclose(stacker, blend.make_blend("logreg_stacker").fit(oof, y, metric,
                                                                           task="multilabel").predict(means))


def test_cached_rows_are_computed_once_per_row_set(tmp_path):
    from pipeline.students.teacher import _cached_rows

    path = tmp_path / "fold0" / "teacher" / "m0.parquet"
    calls = []

    def compute():
        calls.append(1)
        return np.array([[1, 2], [3, 4]], dtype=np.float32)

    first = _cached_rows(path, np.array([7, 3]), compute)
    assert first.dtype == np.float64 and calls == [1]
    stored = pd.read_parquet(path)
    assert list(stored.columns) == ["row", "0", "1"] and stored["row"].tolist() == [7, 3]
    again = _cached_rows(path, np.array([7, 3]), compute)
    assert calls == [1] and again.dtype == np.float64  # read back, not computed
    np.testing.assert_array_equal(again, [[1, 2], [3, 4]])
    _cached_rows(path, np.array([3, 7]), compute)  # other rows (or another order): computed again
    assert calls == [1, 1]


def test_a_folds_training_rows_carry_the_true_target_the_teachers_and_the_pseudo_rows(store, tmp_path):
    from pipeline.config import DistillConfig, PseudoConfig, TrainConfig
    from pipeline.students.targets import soften
    from pipeline.students.teacher import StudentPlan
    from pipeline.train.heads import make_head
    from pipeline.train.runtime import select_runtime

    path, config, competition, fingerprint = store
    teacher = resolve_teacher(config, "a", competition, fingerprint)  # run a alone: its predictions are the targets
    folds = competition_folds(config, competition)
    cfg = TrainConfig()
    head = make_head(competition.task, "ce", competition.targets)
    runtime = select_runtime(cfg, True)
    plan = StudentPlan("distill", teacher, competition, folds, config, PseudoConfig(weight=0.5, max_share=0.2),
                       DistillConfig(alpha=0.3, temperature=2.0, targets="oof"))
    rows = plan.fold_rows(1, RunLayout(tmp_path / "student"), head, runtime, cfg)
    train_idx, n = np.flatnonzero(folds != 1), len(competition.train_ids)
    packed = rows.train_packed
    assert packed.shape == (n, 22) and packed.dtype == np.float32  # 10 hard, 10 soft, weight, alpha
    assert not packed[folds == 1].any()  # the fold's own rows are not trained on
    np.testing.assert_array_equal(packed[train_idx, :10], np.eye(10)[competition.y[train_idx]])
    soft = soften(head, teacher.runs[0].oof[train_idx], 2.0)
    np.testing.assert_allclose(packed[train_idx, 10:20], soft, rtol=1e-6)
    assert (packed[train_idx, 20] == 1.0).all() and np.allclose(packed[train_idx, 21], 0.3)
    # the pseudo rows: a fifth of the 40 training rows, the most confident of run a's fold-1 test predictions
    assert len(rows.pseudo_rows) == 8
    pseudo = rows.pseudo_packed[rows.pseudo_rows]
    expected = teacher.runs[0].fold_tests[1][rows.pseudo_rows]
    np.testing.assert_allclose(pseudo[:, :10], expected, rtol=1e-6)
    np.testing.assert_allclose(pseudo[:, 10:20], expected, rtol=1e-6)
    assert (pseudo[:, 20] == 0.5).all() and (pseudo[:, 21] == 0).all()
    others = np.setdiff1d(np.arange(len(competition.test_ids)), rows.pseudo_rows)
    assert not rows.pseudo_packed[others].any()
    assert rows.info["distill"] == {"targets": "oof", "alpha": 0.3, "temperature": 2.0, "rows": 40}
    assert rows.info["pseudo"]["count"] == 8 and set(rows.info["pseudo"]["balance"]) == set(competition.classes)
    assert (rows.loss.temperature, rows.loss.distill, rows.loss.n_out) == (2.0, True, 10) and rows.loss.head is head
    assert rows.pseudo_packed.dtype == np.float32 and rows.pseudo_rows.dtype == np.int64
    # the pseudo table is kept with the classes' names, and read back as it was made (hard or soft)
    stored = pd.read_parquet(tmp_path / "student" / "fold1" / "pseudo.parquet")
    assert list(stored.columns) == ["row", *[str(c) for c in competition.classes]]
    hard_plan = StudentPlan("pseudo", teacher, competition, folds, config, PseudoConfig(hard_threshold=0.2))
    (tmp_path / "hard" / "fold1").mkdir(parents=True)  # the fold's folder may be there already
    made = hard_plan.pseudo_rows(1, RunLayout(tmp_path / "hard"), 40, seed=0)
    again = hard_plan.pseudo_rows(1, RunLayout(tmp_path / "hard"), 40, seed=0)
    assert made.hard is True and again.hard is True and set(np.unique(made.targets)) <= {0.0, 1.0}
    np.testing.assert_array_equal(again.targets, made.targets)
    assert plan.pseudo_rows(1, RunLayout(tmp_path / "student"), 40, seed=0).hard is False
    # pseudo-labels alone: no teacher column, no alpha, a plain loss
    plain = StudentPlan("pseudo", teacher, competition, folds, config, PseudoConfig()).fold_rows(
        1, RunLayout(tmp_path / "pl"), head, runtime, cfg)
    assert not plain.train_packed[:, 10:20].any() and not plain.train_packed[:, 21].any()
    assert set(plain.info) == {"pseudo"} and (plain.loss.temperature, plain.loss.distill) == (1.0, False)
    assert len(plain.pseudo_rows) == len(competition.test_ids)  # 20 test rows, below the cap of 40
    # distillation alone: no pseudo rows
    alone = StudentPlan("distill", teacher, competition, folds, config, None, DistillConfig(targets="oof")).fold_rows(
        1, RunLayout(tmp_path / "d"), head, runtime, cfg)
    assert alone.pseudo_rows.shape == (0,) and alone.pseudo_rows.dtype == np.int64 and set(alone.info) == {"distill"}
    assert not alone.pseudo_packed.any()


def _checkpoint_for(config, competition, run_name, fold, cfg):
    """Give a hand-written run a fold checkpoint of its recipe (fresh weights) and its settings in meta.json."""
    from safetensors.torch import save_file

    from pipeline.train.model import prepare_model
    from pipeline.train.runtime import select_runtime

    layout = RunLayout(config.runs_dir / run_name)
    model = prepare_model(cfg, len(competition.classes), select_runtime(cfg, True), False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(layout.best(fold)))
    meta = read_meta(layout)
    meta.config = cfg.model_dump()
    write_meta(layout, meta)
    return model


def test_the_teachers_fold_checkpoint_predicts_the_students_training_rows(store, tmp_path):
    from pipeline.config import DistillConfig, resolve_train_config
    from pipeline.students.teacher import StudentPlan, teacher_model_predictions
    from pipeline.train.runtime import select_runtime

    path, config, competition, fingerprint = store
    cfg = resolve_train_config(config, "digits_resnet")[1]
    runtime = select_runtime(cfg, True)
    layout = RunLayout(config.runs_dir / "a")
    run = resolve_teacher(config, "a", competition, fingerprint).runs[0]
    with pytest.raises(TeacherError, match=rf"^teacher run a has no checkpoint of fold 0 \({layout.best(0)} is "
                                           r"missing\): run 'make train MODEL=a FOLDS=0 FORCE=1' first$"):
        teacher_model_predictions(config, run, 0, np.arange(4), runtime, competition, 8)
    _checkpoint_for(config, competition, "a", 0, cfg)
    teacher = resolve_teacher(config, "a", competition, fingerprint)  # meta.json now holds the run's settings
    rows = np.array([5, 0, 9])
    got = teacher_model_predictions(config, teacher.runs[0], 0, rows, runtime, competition, 2)
    assert got.shape == (3, 10)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)  # probabilities: the head's activation applied
    assert not np.allclose(got[0], got[1])  # each row its own image
    # in any batch size, and row by row: the same predictions
    np.testing.assert_allclose(teacher_model_predictions(config, teacher.runs[0], 0, rows[1:2], runtime, competition,
                                                         8)[0], got[1], rtol=1e-4, atol=1e-6)
    # distill.targets: fold reads each teacher run's fold-k checkpoint once, then its cache
    plan = StudentPlan("distill", teacher, competition, competition_folds(config, competition), config, None,
                       DistillConfig(targets="fold"))
    train_idx = np.flatnonzero(plan.folds != 0)
    student = RunLayout(tmp_path / "student")
    targets = plan.train_soft_targets(0, train_idx, student, runtime, 8)
    direct = teacher_model_predictions(config, teacher.runs[0], 0, train_idx, runtime, competition, 8)
    np.testing.assert_allclose(targets, direct, rtol=1e-4, atol=1e-6)
    assert (student.fold_dir(0) / "teacher" / "a.parquet").is_file()
    # ... and fold_rows packs them, softened, for the fold's training rows
    from pipeline.students.targets import soften
    from pipeline.train.heads import make_head

    head = make_head(competition.task, "ce", competition.targets)
    packed = plan.fold_rows(0, student, head, runtime, cfg).train_packed
    np.testing.assert_allclose(packed[train_idx, 10:20], soften(head, direct, plan.distill.temperature), rtol=1e-4,
                               atol=1e-6)
    meta = read_meta(layout)
    meta.config = {"lr": "fast"}
    write_meta(layout, meta)
    broken = resolve_teacher(config, "a", competition, fingerprint).runs[0]
    with pytest.raises(TeacherError, match=r"(?s)^teacher run a: its settings in meta.json do not load \(.*\); "
                                           r"retrain it$"):
        teacher_model_predictions(config, broken, 0, rows, runtime, competition, 8)


def test_run_student_hands_the_fold_loop_its_plan(store, monkeypatch, caplog):
    import pipeline.train.stage as stage
    from pipeline.students.teacher import StudentPlan, run_student

    path, config, competition, fingerprint = store
    as_imported(config, "c")  # left out of the teacher, with a warning
    _ensemble(path, "ensemble.runs=[a,b,c]")
    calls = []
    monkeypatch.setattr(stage, "run_train", lambda *args, **kwargs: calls.append((args, kwargs)) or "trained")
    with caplog.at_level("INFO", logger="pipeline.students.teacher"):
        assert run_student(config, "digits_resnet", "distill", teacher="mean", folds_subset=[1], force=True,
                           overrides={"train.epochs": 2}, competition=competition) == "trained"
    (args, kwargs), = calls
    assert args == (config, "digits_resnet", [1])
    plan = kwargs.pop("student")
    assert kwargs == {"force": True, "overrides": {"train.epochs": 2}, "competition": competition,
                      "name": "digits_resnet-distill"}
    assert isinstance(plan, StudentPlan) and plan.kind == "distill" and plan.config is config
    assert plan.pseudo is None and plan.distill == config.distill  # distill.pseudo is off by default
    assert [r.name for r in plan.teacher.runs] == ["a", "b"] and plan.teacher.method == "mean"
    np.testing.assert_array_equal(plan.folds, competition_folds(config, competition))
    assert "digits_resnet-distill: teacher run c left out: imported: no per-fold test predictions" in caplog.text
    assert "digits_resnet-distill: teacher mean (mean over a, b)" in caplog.text
    calls.clear()
    run_student(config, "digits_resnet", "pseudo", teacher="a", name="pl", competition=competition)
    plan = calls[0][1]["student"]
    assert (plan.kind, plan.pseudo, plan.distill, calls[0][1]["name"]) == ("pseudo", config.pseudo, None, "pl")
    assert "pl: teacher a (single model over a)" in caplog.text
