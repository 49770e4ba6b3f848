"""Ensemble ("blend") methods over stacked out-of-fold predictions.

This package is the pure core of the ensemble stage: NumPy arrays in, NumPy
arrays out, no file I/O.  Every method sees the same input

``preds``
    float array of shape ``(n_models, n_rows, n_cols)``: one OOF prediction
    per model, stacked.
``y``
    the targets of the OOF rows.

and returns ``(n_rows, n_cols)`` predictions of the same kind from
``predict``.  What the columns and ``y`` hold depends on the task (the
``task`` keyword of :meth:`BlendMethod.fit`, :func:`nested_score`, ...;
``None`` infers binary from one column and multiclass otherwise):

==========  ==========================  ====================================  ============
task        ``y``                       ``preds[m]``                          output kind
==========  ==========================  ====================================  ============
multiclass  int ``(n,)``, 0..C-1        ``(n, C)`` probabilities, rows sum 1  simplex
binary      int ``(n,)``, 0/1           ``(n, 1)`` P(positive)                probability
multilabel  int ``(n, L)``, 0/1         ``(n, L)`` independent probabilities  probability
regression  float ``(n,)``              ``(n, 1)`` real values                value
ordinal     int ``(n,)``, grade >= 0    ``(n, 1)`` values on the grade scale  value
==========  ==========================  ====================================  ============

Not every method makes sense for every output kind (a geometric mean of
regression values takes logs of negative numbers): :func:`applicable` says
which do, and fitting one that does not raises :class:`NotApplicable`.

Methods live in a registry (:data:`BLEND_METHODS`), filled with the
:func:`register_blend` decorator and instantiated with :func:`make_blend`, in
the way timm registers models.  A method fitted on OOF rows is scored
honestly by :func:`nested_score`: it is refitted inside the folds, so the
number that picks the ensemble (:func:`select_method`) is never the score
on rows the blender was tuned on.

Where things live
-----------------
``base``            the registry, :class:`BlendMethod`, applicability
``validation``      checks of ``preds``, ``y`` and ``extra``; task resolution
``objective``       the fast loss of linear blends, array helpers, single-model scores
``calibration``     temperature scaling
``means``           ``mean``, ``rank_mean``, ``geometric_mean``, ``power_mean``, ``logit_mean``
``optuna_weights``  ``optuna``
``caruana``         ``caruana``
``hill_climb``      ``hill_climb``
``slsqp``           ``slsqp``
``stackers``        ``logreg_stacker``, ``lgbm_stacker``
``nested``          :func:`nested_score` and :class:`NestedResult`
``selection``       :func:`select_method` (the one-standard-error rule), :func:`standard_errors`,
                    :func:`own_standard_error`, :func:`prune_correlated`
``apply``           the fitted blend on the test set: per fold model then averaged
                    (:func:`predict_per_fold`) or on the fold means
``averaging``       what averaging the k fold models gains on the test set, which OOF rows cannot show
"""

from __future__ import annotations

# TASK_OUTPUT (task -> "simplex" | "probability" | "value") decides validation, the blend's output
# and which methods apply
from ..task.metrics import TASK_OUTPUT
from .base import (BLEND_METHODS, BlendMethod, NotApplicable, applicable, make_blend, not_applicable_reason,
                   register_blend)
from .calibration import apply_temperature, fit_temperature

# The method modules register their classes when imported, so this order is the order of
# BLEND_METHODS, which callers rely on (the benchmark's listing, the tests over the registry, which
# method is "simpler"): means, then weight searches, then stackers.  Keep it; do not sort.
# isort: off
from .means import GeometricMean, LogitMean, Mean, PowerMean, RankMean
from .optuna_weights import OptunaWeights
from .caruana import CaruanaSelection
from .hill_climb import HillClimb
from .slsqp import SLSQPWeights
from .stackers import LGBMStacker, LogRegStacker
# isort: on

from .apply import APPLY_MODES, blend_each_fold, fold_means, predict_fold_mean, predict_per_fold, predict_test
from .averaging import DRAWABLE_TASKS, ambiguity, averaging_gain, reference_distribution
from .nested import NestedResult, nested_score
from .objective import LinearLoss, single_model_scores
from .selection import (SELECTION_RULES, Scored, own_standard_error, prune_correlated, rank_candidates, select_method,
                        shift_scored, standard_errors)

__all__ = [
    "APPLY_MODES",
    "BLEND_METHODS",
    "DRAWABLE_TASKS",
    "ambiguity",
    "averaging_gain",
    "blend_each_fold",
    "reference_distribution",
    "SELECTION_RULES",
    "Scored",
    "fold_means",
    "predict_fold_mean",
    "predict_per_fold",
    "predict_test",
    "standard_errors",
    "own_standard_error",
    "TASK_OUTPUT",
    "BlendMethod",
    "NestedResult",
    "NotApplicable",
    "applicable",
    "apply_temperature",
    "fit_temperature",
    "make_blend",
    "nested_score",
    "not_applicable_reason",
    "prune_correlated",
    "register_blend",
    "select_method",
    "shift_scored",
    "rank_candidates",
    "LinearLoss",
    "GeometricMean",
    "LogitMean",
    "Mean",
    "PowerMean",
    "RankMean",
    "OptunaWeights",
    "CaruanaSelection",
    "HillClimb",
    "SLSQPWeights",
    "LGBMStacker",
    "LogRegStacker",
    "single_model_scores",
]
