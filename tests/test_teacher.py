"""Pseudo-labels and distillation (make pseudo, make distill): the fold-k teacher leaks nothing of fold k.

The leak checks plant memorising "models" (a model predicts, for an image it was trained on, that
image's label; for any other, noise) on labels that are pure noise, so any OOF score above chance
is a leak. The naive teacher carries fold k's labels into fold k's student; ours does not.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import DistillConfig, PseudoConfig
from pipeline.store import RunLayout, RunMeta, StoredRun
from pipeline.students.targets import TeacherLoss, head_targets, pack, soften, true_targets
from pipeline.students.teach import Teacher, TeacherError, naive_teacher_test, pseudo_table
from pipeline.students.teacher import StudentPlan
from pipeline.train.heads import make_head

N_CLASSES = 10


def memorised(train_rows: np.ndarray, image: np.ndarray, y: np.ndarray, rows: np.ndarray, rng) -> np.ndarray:
    """A model that memorised ``train_rows``: for an image it saw, the mean one-hot of its labels there; else noise."""
    out = rng.dirichlet(np.ones(N_CLASSES), size=len(rows))
    for i, r in enumerate(rows):
        seen = [s for s in train_rows if image[s] == image[r]]
        if seen:
            out[i] = 0.02 / (N_CLASSES - 1) + np.eye(N_CLASSES)[y[seen]].mean(axis=0) * (
                1 - 0.02 * N_CLASSES / (N_CLASSES - 1)
            )
    return out / out.sum(axis=1, keepdims=True)


def planted_runs(y, folds, train_image, test_image, n_runs=2, seed=0):
    """Stored runs of memorising fold models: OOF rows and per-fold test predictions."""
    rng = np.random.default_rng(seed)
    runs = []
    k_all = sorted(np.unique(folds))
    for m in range(n_runs):
        oof = np.zeros((len(y), N_CLASSES))
        fold_tests = []
        for k in k_all:
            train_rows = np.flatnonzero(folds != k)
            valid = np.flatnonzero(folds == k)
            oof[valid] = memorised(train_rows, train_image, y, valid, rng)
            # a test image is "seen" when it is a copy of a training row the fold model trained on
            fold_tests.append(
                memorised(
                    train_rows, np.concatenate([train_image, test_image]), y, len(y) + np.arange(len(test_image)), rng
                )
            )
        fold_tests = np.stack(fold_tests)
        meta = RunMeta(
            name=f"m{m}",
            status="finished",
            classes=[str(c) for c in range(N_CLASSES)],
            folds_fingerprint="f",
            folds_done=list(k_all),
            config_hash=f"h{m}",
        )
        runs.append(StoredRun(f"m{m}", oof, fold_tests.mean(axis=0), meta, fold_tests))
    return runs


def plan_for(runs, y, folds, n_test, method="mean", pseudo=None, distill=None):
    competition = SimpleNamespace(
        y=y,
        classes=[str(c) for c in range(N_CLASSES)],
        task="multiclass",
        train_ids=np.arange(len(y)).astype(str),
        test_ids=np.arange(n_test).astype(str),
    )
    config = SimpleNamespace(competition=SimpleNamespace(metric="accuracy"))
    teacher = Teacher("planted", method, {}, runs)
    return StudentPlan("pseudo" if distill is None else "distill", teacher, competition, folds, config, pseudo, distill)


def test_pseudo_labels_of_fold_k_carry_no_fold_k_labels_while_the_naive_teacher_leaks(tmp_path, monkeypatch):
    # 90 noise images with random labels (nothing to learn); the test set is a copy of each, with other random labels
    rng = np.random.default_rng(1)
    n = 90
    y = rng.integers(0, N_CLASSES, n)
    hidden = rng.integers(0, N_CLASSES, n)
    folds = np.arange(n) % 3
    image = np.arange(n)
    runs = planted_runs(y, folds, image, image.copy())
    plan = plan_for(runs, y, folds, n, pseudo=PseudoConfig(max_share=2.0))
    naive = naive_teacher_test(
        "mean", {}, np.stack([r.oof for r in runs]), y, np.stack([r.fold_tests for r in runs]), "accuracy", "multiclass"
    )
    oof_ours, oof_naive = np.zeros(n, int), np.zeros(n, int)
    test_ours = []
    for k in range(3):
        table = plan.pseudo_rows(k, RunLayout(tmp_path / "student"), int(np.sum(folds != k)), seed=0)
        if k == 0:
            first_fold = table
        assert (tmp_path / "student" / f"fold{k}" / "pseudo.parquet").is_file()
        valid = np.flatnonzero(folds == k)
        # a memorising student of fold k predicts a validation image from the pseudo row of its copy
        ours = dict(zip(table.rows, table.targets.argmax(axis=1)))
        oof_ours[valid] = [ours[r] for r in valid]
        oof_naive[valid] = naive[valid].argmax(axis=1)
        test_ours.append(table.targets.argmax(axis=1))
    naive_oof_score = np.mean(oof_naive == y)
    ours_oof_score = np.mean(oof_ours == y)
    hidden_score = np.mean(naive.argmax(axis=1) == hidden)
    assert naive_oof_score > 0.95 and hidden_score < 0.3  # the naive student's OOF lies
    assert ours_oof_score < 0.3  # ours stays at chance, like the hidden score
    assert all(np.mean(t == hidden) < 0.3 for t in test_ours)
    # the pseudo table is cached: a resumed fold reads the same rows back
    again = plan.pseudo_rows(0, RunLayout(tmp_path / "student"), 60, seed=0)
    np.testing.assert_array_equal(again.rows, np.arange(n))
    # read, not recomputed: no teacher is applied, and a fold size whose cap (2.0 x 10 = 20 rows) would keep fewer
    # rows still gets the stored table, bit for bit
    import pipeline.students.teacher as teacher_module

    applied = []
    real = teacher_module.blend_outside_fold
    monkeypatch.setattr(teacher_module, "blend_outside_fold", lambda *a, **k: applied.append(a[5]) or real(*a, **k))
    cached = plan.pseudo_rows(0, RunLayout(tmp_path / "student"), 10, seed=0)
    assert applied == []
    np.testing.assert_array_equal(cached.rows, np.arange(n))
    np.testing.assert_array_equal(cached.targets, first_fold.targets)
    # the spy sees a real computation: a fresh folder applies fold 0's teacher and caps at 20 rows
    fresh = plan.pseudo_rows(0, RunLayout(tmp_path / "fresh"), 10, seed=0)
    assert applied == [0] and len(fresh.rows) == 20


def test_distill_targets_of_fold_k_carry_no_fold_k_labels_but_the_oof_option_does(tmp_path, monkeypatch):
    # 30 images, each twice in the training set (two folds), with independent random labels
    rng = np.random.default_rng(2)
    n = 60
    image = np.repeat(np.arange(30), 2)
    folds = np.zeros(n, int)
    folds[0::2] = np.arange(30) % 3
    folds[1::2] = (np.arange(30) + 1) % 3  # the copy is always in another fold
    y = rng.integers(0, N_CLASSES, n)
    runs = planted_runs(y, folds, image, np.arange(5) + 100)
    partner = np.arange(n) ^ 1

    def fold_models(config, run, fold, rows, runtime, competition, batch_size):
        return memorised(np.flatnonzero(folds != fold), image, y, rows, np.random.default_rng(fold))

    import pipeline.students.teacher as teacher_module

    monkeypatch.setattr(teacher_module, "teacher_model_predictions", fold_models)
    agreement = {}
    for mode in ("fold", "oof"):
        plan = plan_for(runs, y, folds, 5, distill=DistillConfig(targets=mode))
        hits = []
        for k in range(3):
            train_idx = np.flatnonzero(folds != k)
            targets = plan.train_soft_targets(k, train_idx, RunLayout(tmp_path / mode), None, 16)
            # the training rows whose copy is a validation row of fold k: does the target give that row's label?
            for i, r in enumerate(train_idx):
                if folds[partner[r]] == k:
                    hits.append(targets[i].argmax() == y[partner[r]])
        agreement[mode] = np.mean(hits)
    assert agreement["oof"] > 0.95  # the leaky option: fold k's labels reach fold k's student
    assert agreement["fold"] < 0.3  # ours: chance
    assert (tmp_path / "fold" / "fold0" / "teacher" / "m0.parquet").is_file()  # cached for a resume


@pytest.mark.parametrize(
    "task, pred",
    [
        ("multiclass", np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]])),
        ("binary", np.array([[0.95], [0.3], [0.8], [0.5]])),
        ("multilabel", np.array([[0.9, 0.05], [0.6, 0.9], [0.99, 0.01], [0.5, 0.5]])),
    ],
)
def test_pseudo_table_soft_hard_and_cap(task, pred):
    soft = pseudo_table(pred, task, n_train=10)
    np.testing.assert_array_equal(soft.rows, np.arange(4))
    np.testing.assert_allclose(soft.targets, pred)
    hard = pseudo_table(pred, task, n_train=10, hard_threshold=0.8)
    assert set(np.unique(hard.targets)) <= {0.0, 1.0} and len(hard.rows) == 2
    capped = pseudo_table(pred, task, n_train=10, max_share=0.1)  # one row: the most confident
    assert len(capped.rows) == 1 and capped.rows[0] in (0, 2)
    stats = soft.stats(["a", "b"][: pred.shape[1]], "simplex" if task == "multiclass" else "probability")
    assert stats["count"] == 4 and len(stats["balance"]) == pred.shape[1]


def test_pseudo_values_are_soft_and_capped_at_random():
    pred = np.arange(10.0)[:, None]
    table = pseudo_table(pred, "regression", n_train=10, max_share=0.5, seed=3)
    assert len(table.rows) == 5 and list(table.rows) == sorted(table.rows)
    assert set(table.stats(["target"], "value")) == {"count", "hard", "mean", "std"}
    with pytest.raises(TeacherError, match="hard_threshold"):
        pseudo_table(pred, "ordinal", n_train=10, hard_threshold=0.9)


def test_teacher_loss_is_the_task_loss_without_a_teacher_and_zero_kl_at_the_teacher():
    head = make_head("multiclass", "ce")
    logits = torch.randn(6, 4)
    y = np.array([0, 1, 2, 3, 0, 1])
    packed = torch.from_numpy(pack(true_targets(head, y, 4), None, 1.0, 0.0))
    plain = TeacherLoss(head, 4)(logits, packed)
    assert torch.allclose(plain, torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)), atol=1e-6)
    # alpha 1, the teacher's softened targets equal to the student's: the KL term is zero
    teacher = torch.softmax(logits, dim=1).numpy()
    soft = soften(head, head_targets(head, teacher), 2.0)
    packed = torch.from_numpy(pack(true_targets(head, y, 4), soft, 1.0, 1.0))
    assert float(TeacherLoss(head, 4, 2.0, distill=True)(logits, packed)) == pytest.approx(0.0, abs=1e-5)
    # a pseudo row of weight w counts w times
    one = torch.from_numpy(pack(true_targets(head, y[:1], 4), None, 1.0, 0.0))
    heavy = torch.from_numpy(pack(true_targets(head, y[1:2], 4), None, 3.0, 0.0))
    both = TeacherLoss(head, 4)(logits[:2], torch.cat([one, heavy]))
    parts = torch.nn.functional.cross_entropy(logits[:2], torch.from_numpy(y[:2]), reduction="none")
    assert torch.allclose(both, (parts[0] + 3 * parts[1]) / 4, atol=1e-6)


def test_binary_softmax_head_takes_two_columns():
    head = make_head("binary", "ce")
    np.testing.assert_allclose(head_targets(head, np.array([[0.25]])), [[0.75, 0.25]])


def test_pseudo_and_distill_end_to_end(small_config, tmp_path, capsys):
    """train two tiny models, ensemble, pseudo, distill (one fold, then the rest: resumed), ensemble again."""
    from pipeline.cli import main
    from pipeline.config import load_config
    from pipeline.store import read_meta

    config = load_config(small_config)
    args = ["--config", str(small_config)]
    for model in ("digits_resnet", "digits_effnet"):
        assert main(["train", *args, "--model", model]) == 0
    # no ensemble yet: TEACHER=submission names what to run first, and nothing is written
    capsys.readouterr()
    assert main(["pseudo", *args, "--model", "digits_resnet"]) == 2
    assert "make ensemble" in capsys.readouterr().err
    assert not (config.runs_dir / "digits_resnet-pl").exists()
    assert main(["ensemble", *args]) == 0
    capsys.readouterr()

    assert main(["pseudo", *args, "--model", "digits_resnet", "pseudo.max_share=0.25"]) == 0
    printed = capsys.readouterr().out
    meta = read_meta(RunLayout(config.runs_dir / "digits_resnet-pl"))
    assert meta.status == "finished" and meta.cv is not None
    assert meta.teacher["kind"] == "pseudo" and {r[0] for r in meta.teacher["runs"]} <= {
        "digits_resnet",
        "digits_effnet",
    }
    assert meta.teacher["pseudo"]["max_share"] == 0.25
    for fold, info in meta.folds.items():
        assert info["pseudo"]["count"] == 10  # 25% of 40 training rows, from 20 test rows
        assert sum(info["pseudo"]["balance"].values()) == pytest.approx(1.0)
    oof = pd.read_parquet(config.runs_dir / "digits_resnet-pl" / "oof.parquet")
    assert len(oof) == 60  # a normal OOF: the training rows only
    assert "pseudo rows" in printed

    # a rerun skips the finished student
    best = config.runs_dir / "digits_resnet-pl" / "fold0" / "best.safetensors"
    stamp = best.stat().st_mtime_ns
    assert main(["pseudo", *args, "--model", "digits_resnet"]) == 0
    assert best.stat().st_mtime_ns == stamp
    # ROUNDS=2: round 1 is done; the ensemble runs again, with it, and teaches round 2
    assert main(["pseudo", *args, "--model", "digits_resnet", "--rounds", "2", "pseudo.max_share=0.25"]) == 0
    assert best.stat().st_mtime_ns == stamp
    second = read_meta(RunLayout(config.runs_dir / "digits_resnet-pl2"))
    assert second.status == "finished" and second.teacher["kind"] == "pseudo"
    fitted = pd.read_csv(config.submissions_dir / "leaderboard.csv")["submission"].str.rstrip(" *")
    assert "single-digits_resnet-pl" in set(fitted)

    assert main(["distill", *args, "--student", "digits_resnet", "--alpha", "0.7", "--folds", "0"]) == 0
    run = config.runs_dir / "digits_resnet-distill"
    assert read_meta(RunLayout(run)).status == "partial"
    assert (run / "fold0" / "teacher").is_dir()
    stamp = (run / "fold0" / "best.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["distill", *args, "--student", "digits_resnet", "--alpha", "0.7"]) == 0
    assert (run / "fold0" / "best.safetensors").stat().st_mtime_ns == stamp  # fold 0 was done: skipped
    meta = read_meta(RunLayout(run))
    assert meta.status == "finished" and meta.teacher["distill"]["alpha"] == 0.7
    assert meta.folds["1"]["distill"]["targets"] == "fold"

    assert main(["ensemble", *args]) == 0
    board = pd.read_csv(config.submissions_dir / "leaderboard.csv")
    assert {"single-digits_resnet-pl", "single-digits_resnet-distill"} <= set(board["submission"].str.rstrip(" *"))


def test_distill_targets_of_fold_k_come_from_fold_k_checkpoint(small_config):
    """Unmocked: the teacher's predictions on fold k's training rows are made by fold k's checkpoint.

    The stored OOF rows of fold k were predicted by fold k's model when it was trained; the teacher's prediction of
    the same rows must equal them, and any other fold's checkpoint gives other numbers."""
    from pipeline.cli import main
    from pipeline.config import load_config
    from pipeline.data import load_competition
    from pipeline.folds import read_folds
    from pipeline.store import load_runs
    from pipeline.train.runtime import Runtime
    from pipeline.students.teacher import teacher_model_predictions

    config = load_config(small_config)
    assert main(["train", "--config", str(small_config), "--model", "digits_resnet"]) == 0
    competition = load_competition(config)
    folds, fingerprint = read_folds(config, competition)
    (run,), _ = load_runs(config.runs_dir, competition.train_ids, competition.test_ids, competition.classes,
                          fingerprint)
    runtime = Runtime(torch.device("cpu"), None, False, 0, False)
    n_folds = len(np.unique(folds))
    for k in range(n_folds):
        valid = np.flatnonzero(folds == k)
        by_fold = {j: teacher_model_predictions(config, run, j, valid, runtime, competition, 16)
                   for j in range(n_folds)}
        np.testing.assert_allclose(by_fold[k], run.oof[valid], rtol=0, atol=1e-5)
        for j in set(by_fold) - {k}:
            assert np.abs(by_fold[j] - run.oof[valid]).max() > 1e-3   # another fold's model: other numbers

    # the student's plan asks each fold for its own teacher checkpoint (a single-run teacher: its predictions as-is)
    plan = StudentPlan("distill", Teacher("digits_resnet", None, {}, [run]), competition, folds, config, None,
                       DistillConfig())
    layout = RunLayout(small_config.parent / "student")
    for k in range(n_folds):
        train_idx = np.flatnonzero(folds != k)
        targets = plan.train_soft_targets(k, train_idx, layout, runtime, 16)
        own = teacher_model_predictions(config, run, k, train_idx, runtime, competition, 16)
        np.testing.assert_allclose(targets, own, rtol=0, atol=1e-6)
        other = teacher_model_predictions(config, run, (k + 1) % n_folds, train_idx, runtime, competition, 16)
        assert np.abs(targets - other).max() > 1e-3
        assert (layout.fold_dir(k) / "teacher" / "digits_resnet.parquet").is_file()
