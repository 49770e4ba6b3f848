"""Students of a teacher: ``make pseudo`` (test rows labelled by the fold's teacher) and ``make distill``
(soft targets on the training rows), trained by the normal fold loop.

The teacher of fold k is :mod:`pipeline.students.teach`'s fold-k teacher: the chosen blend refit on the OOF
rows outside fold k, applied to the fold-k models of the runs it blends, none of which saw fold k's
labels. The student's validation rows are its fold's rows only, so its OOF is a normal OOF and
``make ensemble`` blends it like any run.

Every training row carries a packed target (:func:`pack`): the target of the task loss in the
head's form, the teacher's softened target, the row's loss weight and its distillation weight
alpha. :class:`TeacherLoss` is one weighted mean over the batch; with no teacher targets it is
the head's soft-target loss (:meth:`Head.soft_loss_rows`, the path mixup trains on).
"""


from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from safetensors.torch import load_file as load_safetensors

from pipeline.config import Config, ConfigError, DistillConfig, PseudoConfig, TrainConfig
from pipeline.core import io
from pipeline.core.hashing import json_hash
from pipeline.core.report import format_table
from pipeline.data import Competition, load_competition
from pipeline.data.images import input_size, open_image_store
from pipeline.folds import read_folds
from pipeline.store import RunLayout, RunMeta, StoredRun, check_run_name, read_meta
from pipeline.students.targets import SoftRows, TeacherLoss, head_targets, pack, soften, true_targets
from pipeline.students.teach import (PseudoTable, Teacher, TeacherError, blend_outside_fold, pseudo_table,
                                     resolve_teacher)
from pipeline.task.metrics import get_metric
from pipeline.task.tasks import get_task
from pipeline.train.dataset import ImageDataset
from pipeline.train.heads import Head, make_head
from pipeline.train.model import prepare_model
from pipeline.train.predict import predict_views
from pipeline.train.runtime import Runtime, device_transform, eval_batch_size, make_loader
from pipeline.vision.host import HostTransform
from pipeline.vision.models import data_config

log = logging.getLogger(__name__)


SUFFIXES = {"pseudo": "pl", "distill": "distill"}


# -- the teacher's fold-k models on the student's training rows (make distill) -------------------------

def teacher_model_predictions(config: Config, run: StoredRun, fold: int, rows: np.ndarray, runtime: Runtime,
                              competition: Competition, batch_size: int) -> np.ndarray:
    """Run ``run``'s fold-``fold`` checkpoint on the training images ``rows``, with the run's own input size,
    normalisation and TTA views; ``(len(rows), n_cols)``, the mean over views (as its OOF).

    Raises
    ------
    TeacherError
        If the checkpoint is missing (naming the command that retrains it) or the run's settings do not load.
    """
    from pipeline.train.spec import view_list

    layout = RunLayout(config.runs_dir / run.name)
    if not layout.best(fold).is_file():
        raise TeacherError(f"teacher run {run.name} has no checkpoint of fold {fold} ({layout.best(fold)} is missing): "
                           f"run 'make train MODEL={run.name} FOLDS={fold} FORCE=1' first")
    try:
        cfg = TrainConfig.model_validate(run.meta.config or {})
    except ValueError as exc:
        raise TeacherError(f"teacher run {run.name}: its settings in meta.json do not load ({exc}); retrain "
                           "it") from None
    n_cols = len(competition.classes)
    head = make_head(competition.task, cfg.loss, competition.targets, cfg.label_smoothing)
    store = open_image_store(config, cfg, competition.train_paths, "train", input_size(cfg, n_cols), progress=False)
    model = prepare_model(cfg, head.n_outputs(n_cols), runtime, False)
    model.load_state_dict(load_safetensors(str(layout.best(fold)), device=str(runtime.device)))
    dcfg = data_config(model, cfg.image_size, cfg.mean, cfg.std, cfg.interpolation)
    loader = make_loader(
        ImageDataset(store, rows, HostTransform(dcfg.image_size, dcfg.interpolation)), batch_size, runtime
    )
    views, _ = view_list(cfg)
    return predict_views(model, loader, views, runtime, head.activate, device_transform(cfg, dcfg, runtime)).mean(
        axis=0
    )


def _cached_rows(path, rows: np.ndarray, compute) -> np.ndarray:
    """Row-keyed predictions kept in ``path`` (computed once: a resumed fold reads them back)."""
    if path.is_file():
        frame = pd.read_parquet(path)
        if np.array_equal(frame["row"].to_numpy(), rows):
            return frame.drop(columns="row").to_numpy(dtype=np.float64)
    values = np.asarray(compute(), dtype=np.float64)
    frame = pd.DataFrame(values, columns=[str(k) for k in range(values.shape[1])])
    frame.insert(0, "row", rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_parquet(path, frame)
    return values


# -- the plan of a student run ----------------------------------------------------------------------


@dataclass
class StudentPlan:
    """What a student run learns from: the teacher, pseudo rows (or not), distillation (or not).

    ``run_train(..., student=plan)`` calls :meth:`key` (hashed into the run's settings),
    :meth:`record` (``meta.json``'s ``teacher``) and :meth:`fold_rows` before each fold.
    """

    kind: str  # pseudo | distill
    teacher: Teacher
    competition: Competition
    folds: np.ndarray
    config: Config
    pseudo: PseudoConfig | None = None  # None: no pseudo rows
    distill: DistillConfig | None = None

    def key(self) -> str:
        return json_hash(
            [
                self.kind,
                self.teacher.key(),
                None if self.pseudo is None else self.pseudo.model_dump(),
                None if self.distill is None else self.distill.model_dump(),
            ]
        )

    def record(self) -> dict:
        record: dict[str, Any] = {
            "kind": self.kind,
            **self.teacher.record(),
            "rule": "fold k's targets come from the blend refit on the OOF rows outside fold k, "
            "applied to the fold-k models of its runs",
        }
        if self.pseudo is not None:
            record["pseudo"] = self.pseudo.model_dump()
        if self.distill is not None:
            record["distill"] = self.distill.model_dump()
        return record

    def check(self, cfg: TrainConfig) -> None:
        """Refuse what the student cannot combine with (before any work)."""
        if cfg.mixes:
            raise ConfigError(
                f"make {self.kind} trains on packed soft targets; mixup/cutmix (train.mixup_alpha, "
                "train.cutmix_alpha) do not combine with it yet: set them to 0 for the student"
            )

    def _teacher_on(self, fold: int, inputs: np.ndarray) -> np.ndarray:
        t, comp = self.teacher, self.competition
        return blend_outside_fold(
            t.method,
            t.params,
            t.oof(),
            comp.y,
            self.folds,
            fold,
            inputs,
            get_metric(self.config.competition.metric),
            comp.task,
        )

    def pseudo_rows(self, fold: int, layout: RunLayout, n_train: int, seed: int) -> PseudoTable:
        """The fold's pseudo-label table, kept in ``fold<k>/pseudo.parquet`` (a resume reads it back)."""
        path = layout.fold_dir(fold) / "pseudo.parquet"
        hard = self.pseudo.hard_threshold is not None
        if path.is_file():
            frame = pd.read_parquet(path)
            return PseudoTable(frame["row"].to_numpy(), frame.drop(columns="row").to_numpy(dtype=np.float64), hard)
        pred = self._teacher_on(fold, self.teacher.fold_test(fold))
        table = pseudo_table(
            pred, self.competition.task, n_train, self.pseudo.hard_threshold, self.pseudo.max_share, seed=seed + fold
        )
        frame = pd.DataFrame(table.targets, columns=[str(c) for c in self.competition.classes])
        frame.insert(0, "row", table.rows)
        path.parent.mkdir(parents=True, exist_ok=True)
        io.write_parquet(path, frame)
        return table

    def train_soft_targets(
        self, fold: int, train_idx: np.ndarray, layout: RunLayout, runtime: Runtime, batch_size: int
    ) -> np.ndarray:
        """The teacher's targets for the fold's training rows, in stored form, ``(len(train_idx), n_cols)``.

        ``distill.targets: fold`` (default): each teacher run's fold-k checkpoint on those rows (it was trained
        on them and never saw fold k), cached in ``fold<k>/teacher/<run>.parquet``; ``oof``: the teacher runs'
        OOF rows, each made by a model that saw fold k's labels (leaky; README says by how much).
        """
        if self.distill.targets == "oof":
            inputs = self.teacher.oof()[:, train_idx]
        else:
            inputs = np.stack(
                [
                    _cached_rows(
                        layout.fold_dir(fold) / "teacher" / f"{run.name}.parquet",
                        train_idx,
                        lambda run=run: teacher_model_predictions(
                            self.config, run, fold, train_idx, runtime, self.competition, batch_size
                        ),
                    )
                    for run in self.teacher.runs
                ]
            )
        return self._teacher_on(fold, inputs)

    def fold_rows(self, fold: int, layout: RunLayout, head: Head, runtime: Runtime, cfg: TrainConfig) -> SoftRows:
        """The fold's packed training rows, pseudo rows and loss (:class:`SoftRows`)."""
        comp = self.competition
        n_cols = len(comp.classes)
        n_out = head.n_outputs(n_cols)
        train_idx = np.flatnonzero(self.folds != fold)
        info: dict[str, Any] = {}
        soft, alpha = None, 0.0
        if self.distill is not None:
            teacher = self.train_soft_targets(
                fold, train_idx, layout, runtime, eval_batch_size(cfg.batch_size, runtime)
            )
            soft = soften(head, head_targets(head, teacher), self.distill.temperature)
            alpha = self.distill.alpha
            info["distill"] = {
                "targets": self.distill.targets,
                "alpha": alpha,
                "temperature": self.distill.temperature,
                "rows": int(len(train_idx)),
            }
        width = 2 * n_out + 2
        train_packed = np.zeros((len(comp.train_ids), width), dtype=np.float32)
        train_packed[train_idx] = pack(true_targets(head, comp.y[train_idx], n_cols), soft, 1.0, alpha)
        pseudo_packed = np.zeros((len(comp.test_ids), width), dtype=np.float32)
        rows = np.zeros(0, dtype=np.int64)
        if self.pseudo is not None:
            table = self.pseudo_rows(fold, layout, len(train_idx), cfg.seed)
            rows = table.rows
            if len(rows):
                targets = head_targets(head, table.targets)
                pseudo_packed[rows] = pack(targets, targets, self.pseudo.weight, 0.0)
            info["pseudo"] = table.stats(comp.classes, get_task(comp.task).output)
        loss = TeacherLoss(head, n_out, self.distill.temperature if self.distill else 1.0, self.distill is not None)
        return SoftRows(train_packed, rows, pseudo_packed, loss, info)


# -- the commands -------------------------------------------------------------------------------


def student_name(model: str, kind: str, name: str | None = None, round_: int = 1) -> str:
    """The student run's name: ``NAME=`` or ``<model>-pl`` / ``<model>-distill``; round r > 1 appends r."""
    base = name or f"{model}-{SUFFIXES[kind]}"
    return check_run_name(base if round_ == 1 else f"{base}{round_}")


def run_student(
    config: Config,
    model: str,
    kind: str,
    teacher: str = "submission",
    name: str | None = None,
    folds_subset: list[int] | None = None,
    force: bool = False,
    overrides: dict[str, Any] | None = None,
    competition: Competition | None = None,
) -> RunMeta:
    """Train (or resume) a student run of ``model``: ``kind`` ``pseudo`` or ``distill``.

    Parameters
    ----------
    config : Config
        Its ``pseudo:`` and ``distill:`` sections set the targets.
    model : str
        The student's recipe, alias or timm name.
    kind : {"pseudo", "distill"}
    teacher : str
        ``submission`` (the blend ``make ensemble`` chose), a method of the last ensemble, or a run name.
    name : str, optional
        The run's name (default :func:`student_name`).
    folds_subset, force, overrides, competition
        As :func:`pipeline.train.run_train`.

    Returns
    -------
    RunMeta
        The run's metadata; ``teacher`` records the teacher and the settings, ``folds[k]`` the pseudo
        rows' count and balance.

    Raises
    ------
    TeacherError
        If the teacher's runs are missing, unfinished, made on other folds, or lack a fold's
        predictions or checkpoint; the message names what to run first.
    """
    from pipeline.train.stage import run_train

    if kind not in SUFFIXES:
        raise ValueError(f"student kind {kind!r}: choose one of {sorted(SUFFIXES)}")
    run_name = name or student_name(model, kind)
    competition = competition or load_competition(config)
    layout = RunLayout(config.runs_dir / run_name)
    meta = None if force else read_meta(layout)
    if meta is not None and meta.status == "finished" and not folds_subset and (meta.teacher or {}).get("kind") == kind:
        # a finished student is not retrained, whatever the ensemble says now (FORCE=1 retrains it)
        log.info("%s: already finished (CV %.4f); pass FORCE=1 to retrain", run_name, meta.cv)
        return meta
    folds, fingerprint = read_folds(config, competition)
    resolved = resolve_teacher(config, teacher, competition, fingerprint, student=run_name)
    if resolved.fallback:
        log.warning(
            "%s: the teacher's %s cannot be refit per fold (%s); it falls back to %s (recorded in meta.json)",
            run_name,
            resolved.name,
            resolved.fallback,
            resolved.method,
        )
    for left, why in resolved.left_out:
        log.warning("%s: teacher run %s left out: %s", run_name, left, why)
    use_pseudo = kind == "pseudo" or config.distill.pseudo
    plan = StudentPlan(
        kind,
        resolved,
        competition,
        folds,
        config,
        config.pseudo if use_pseudo else None,
        config.distill if kind == "distill" else None,
    )
    log.info(
        "%s: teacher %s (%s over %s)%s",
        run_name,
        resolved.name,
        resolved.method or "single model",
        ", ".join(r.name for r in resolved.runs),
        "" if not resolved.fallback else f", fallback {resolved.method}",
    )
    return run_train(
        config,
        model,
        folds_subset,
        force=force,
        overrides=overrides,
        competition=competition,
        name=run_name,
        student=plan,
    )


def student_leaderboard(meta: RunMeta) -> str:
    """The per-fold table of a student: score, pseudo rows and their balance, distillation settings."""
    teacher = meta.teacher or {}
    rows = []
    for fold, info in sorted((meta.folds or {}).items(), key=lambda kv: int(kv[0])):
        pseudo = info.get("pseudo") or {}
        balance = pseudo.get("balance")
        rows.append(
            {
                "fold": int(fold),
                "score": info.get("score"),
                "no TTA": info.get("score_plain"),
                "pseudo rows": pseudo.get("count", 0),
                "pseudo balance": (
                    " ".join(f"{v:.2f}" for v in balance.values())
                    if balance
                    else (f"mean {pseudo['mean']:.3g} std {pseudo['std']:.3g}" if "mean" in pseudo else "")
                ),
            }
        )
    if meta.status == "finished":
        rows.append({"fold": "CV", "score": meta.cv, "no TTA": meta.cv_plain, "pseudo rows": "", "pseudo balance": ""})
    how = teacher.get("method") or "single model"
    title = (
        f"{meta.name} ({meta.timm_name}, {meta.metric}) - {meta.status}; {teacher.get('kind', 'student')} of "
        f"{teacher.get('name')} ({how}{', fallback: ' + teacher['fallback'] if teacher.get('fallback') else ''})"
    )
    if meta.private_lb is not None:
        title += f", private LB {meta.private_lb:.4f}"
    return format_table(rows, title)
