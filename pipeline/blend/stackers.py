"""Stackers: a second-level model (logistic/ridge regression, LightGBM) on the models' logits (+ extra features)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import BlendMethod, is_int, register_blend, require
from .objective import logit_features, single_scores, to_output


def _check_max_models(value: Any) -> None:
    require(value is None or (is_int(value) and value >= 1), f"max_models must be None or an int >= 1; got {value!r}")


class _Stacker(BlendMethod):
    """Second-level model on the models' logits (+ extra features).

    * multiclass, binary: one classifier on every kept model's logits.
    * multilabel: one binary classifier per label, on the kept models'
      logits of that label (``label_features="own"``) or of every label
      (``"all"``).  A label with a
      single class in the fitting rows (never positive in a small fold)
      cannot be learnt; it gets the mean of the kept models' probabilities
      for that label rather than a certain 0 or 1, which would cost ~34.5
      nats of log loss on every held-out positive.
    * regression, ordinal: one regressor on the kept models' values, fitted
      to the residual of their mean: the prediction is that mean plus a
      learnt correction, so regularisation (Ridge's penalty, few shallow
      trees) pulls towards the mean blend rather than towards a constant.
    """

    kind = "stacker"
    simplicity = 3

    def _check_params(self):
        _check_max_models(self.params["max_models"])
        require(self.params["label_features"] in ("own", "all"),
                 f"label_features must be 'own' or 'all'; got {self.params['label_features']!r}")

    def _make_model(self, regression: bool = False):
        raise NotImplementedError

    def _features(self, preds, extra):
        x = logit_features(np.take(preds, self.models_, axis=0), self.output_)
        return x if extra is None else np.hstack([x, extra.astype(np.float32)])

    def _label_inputs(self, x: np.ndarray, label: int, n_labels: int) -> np.ndarray:
        """Multilabel: the columns of ``_features`` that label ``label``'s model reads."""
        if self.params["label_features"] == "all":
            return x
        # _features is model-major (model 0's labels, then model 1's, ...); extra features follow
        n_logits = len(self.models_) * n_labels
        return x[:, np.r_[label:n_logits:n_labels, n_logits:x.shape[1]]]

    def _fit(self, preds, y, metric, extra):
        self._n_classes = 2 if preds.shape[2] == 1 else preds.shape[2]
        # the stacker reads only the best `max_models` models: fewer inputs overfit less and fit faster
        limit = self.params["max_models"]
        if limit and preds.shape[0] > limit:
            scores = single_scores(preds, y, metric)
            best_first = np.argsort(-scores if metric.greater_is_better else scores, kind="stable")
            self.models_ = np.sort(best_first[:limit])
        else:
            self.models_ = np.arange(preds.shape[0])
        if self.output_ == "value":
            base = np.take(preds, self.models_, axis=0).mean(axis=0)[:, 0]
            self.model_ = self._make_model(regression=True)
            self.model_.fit(self._features(preds, extra), y - base)
            return
        if self.task_ == "multilabel":
            # None marks a label with one class in these rows: predicted by the models' mean
            self.model_ = None
            self.label_models_ = []
            x = self._features(preds, extra)  # once: each label's model reads a slice
            for label in range(preds.shape[2]):
                if np.unique(y[:, label]).size < 2:
                    self.label_models_.append(None)
                    continue
                model = self._make_model()
                model.fit(self._label_inputs(x, label, preds.shape[2]), y[:, label])
                self.label_models_.append(model)
            return
        present = np.unique(y)
        if present.size < 2:
            # a classifier cannot be fitted on one class; predict it for sure
            self.model_ = None
            self._constant = present[0]
            return
        self.model_ = self._make_model()
        self.model_.fit(self._features(preds, extra), y)

    def _predict(self, preds, extra):
        n_rows = preds.shape[1]
        if self.output_ == "value":
            base = np.take(preds, self.models_, axis=0).mean(axis=0)[:, 0]
            return (base + self.model_.predict(self._features(preds, extra)))[:, None]
        if self.task_ == "multilabel":
            out = np.take(preds, self.models_, axis=0).mean(axis=0)
            x = self._features(preds, extra)
            for label, model in enumerate(self.label_models_):
                if model is not None:
                    # column of class 1: classes_ is [0, 1] as both were present in the fitting rows
                    out[:, label] = model.predict_proba(self._label_inputs(x, label, preds.shape[2]))[:, 1]
            return np.clip(out, 0.0, 1.0)
        full = np.zeros((n_rows, self._n_classes))
        if self.model_ is None:
            full[:, self._constant] = 1.0
        else:
            # classes absent from the training rows (a small fold) get probability 0
            full[:, self.model_.classes_] = self.model_.predict_proba(self._features(preds, extra))
        if preds.shape[2] == 1:
            return np.clip(full[:, 1:2], 0.0, 1.0)
        return to_output(full, "simplex")

    # -- stored state: the second-level models as JSON data (see BlendMethod.state) --

    def _dump_model(self, model) -> dict:
        raise NotImplementedError

    def _load_model(self, data: dict, regression: bool):
        raise NotImplementedError

    def _state(self) -> dict:
        regression = self.output_ == "value"
        state = {"models": [int(m) for m in self.models_], "n_classes": getattr(self, "_n_classes", None)}
        if self.task_ == "multilabel" and not regression:
            state["label_models"] = [None if m is None else self._dump_model(m) for m in self.label_models_]
        else:
            state["model"] = None if self.model_ is None else self._dump_model(self.model_)
            if self.model_ is None:
                state["constant"] = int(self._constant)
        return state

    def _load_state(self, fitted: dict) -> None:
        regression = self.output_ == "value"
        self.models_ = np.asarray(fitted["models"], dtype=np.int64)
        if fitted.get("n_classes") is not None:
            self._n_classes = int(fitted["n_classes"])
        if "label_models" in fitted:
            self.model_ = None
            self.label_models_ = [None if m is None else self._load_model(m, False) for m in fitted["label_models"]]
            return
        self.model_ = None if fitted["model"] is None else self._load_model(fitted["model"], regression)
        if self.model_ is None:
            self._constant = int(fitted["constant"])


@register_blend("logreg_stacker")
class LogRegStacker(_Stacker):
    """Logistic (or, for values, ridge) regression on standardised logits (+ extra).

    Multiclass: one multinomial model; binary: one logistic model;
    multilabel: one logistic model per label.  Regression and ordinal: a
    ridge regression on the standardised values (+ extra) with
    ``alpha = 1 / C``, fitted to the residual of the kept models' mean (see
    :class:`_Stacker`), so that the one knob ``C`` keeps its direction
    (larger = weaker penalty).  Ridge's penalty is scale-free in the target
    (scaling ``y`` scales the solution), but its per-row curvature (2) is
    larger than the logistic loss's (at most 1/4), so for the same ``C`` it
    regularises relatively less; check with :func:`nested_score`.

    Parameters
    ----------
    C : float, default 0.001
        Inverse L2 strength (sklearn's: it multiplies the summed loss).  The
        model has ``n_models * n_classes`` inputs per class, which overfits
        fast: on the benchmark's synthetic set (50 models x 10 classes,
        20,000 rows) nested log loss was 1.810 / 1.759 / 1.690 for C = 0.1 /
        0.01 / 0.001, against 1.680 for caruana.  The penalty per row is
        ``1 / (C * n_rows)``, so small OOF sets need a larger C (about 0.1
        for 1,000 rows).  Check it with :func:`nested_score` on your data.
    max_iter : int, default 200
    max_models : int or None, default 10
        Only the best ``max_models`` models (by their own score on the fitting
        rows) feed the stacker; None keeps all.
    label_features : {"own", "all"}, default "own"
        Multilabel only: label ``l``'s model reads the kept models' logits
        of label ``l`` (``n_models`` inputs) or of every label (``n_models *
        n_labels``).  Measured on synthetic sets (6 models, 5 folds, nested
        mean BCE, mean of 3 seeds), "own" vs "all": independent labels,
        logreg 1,000 rows x 16 labels 0.195 vs 0.221, 400 x 16 0.210 vs
        0.247, lgbm 1,000 x 8 0.219 vs 0.229; co-occurring labels whose
        models ignore each other, 0.229 vs 0.190, 0.247 vs 0.240 (and AUC
        0.952 vs 0.949 in favour of "own"), 0.266 vs 0.217.  "own" is the
        default: its inputs do not grow with the number of labels (less
        variance on small OOF sets, cost linear in labels), and models that
        share a backbone usually learn co-occurrence themselves, which is
        the only case "all" wins; try "all" with :func:`nested_score` when
        labels co-occur strongly and the OOF set is large.
    """

    defaults = {"C": 0.001, "max_iter": 200, "max_models": 10, "label_features": "own"}

    def _check_params(self):
        super()._check_params()
        require(self.params["C"] > 0, f"C must be > 0; got {self.params['C']!r}")

    def _make_model(self, regression: bool = False):
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if regression:
            return make_pipeline(StandardScaler(), Ridge(alpha=1.0 / self.params["C"]))
        return make_pipeline(StandardScaler(), LogisticRegression(C=self.params["C"], max_iter=self.params["max_iter"]))

    # the fitted attributes sklearn's predict reads; set back on fresh objects, the same code predicts
    _SCALER = ("mean_", "scale_", "var_", "n_samples_seen_", "n_features_in_")
    _LINEAR = ("coef_", "intercept_", "classes_", "n_features_in_", "n_iter_")

    def _dump_model(self, model) -> dict:
        scaler, linear = model[0], model[-1]
        data = {"scaler": {k: getattr(scaler, k) for k in self._SCALER if hasattr(scaler, k)},
                "linear": {k: getattr(linear, k) for k in self._LINEAR if hasattr(linear, k)}}
        # each array's dtype: float32 logits give float32 coefficients, and float64 ones would predict other bits
        data["dtypes"] = {f"{part}.{k}": str(v.dtype) for part in ("scaler", "linear")
                          for k, v in data[part].items() if isinstance(v, np.ndarray)}
        return data

    def _load_model(self, data: dict, regression: bool):
        model = self._make_model(regression=regression)
        dtypes = data.get("dtypes", {})
        for part, step in (("scaler", model[0]), ("linear", model[-1])):
            for key, value in data[part].items():
                dtype = dtypes.get(f"{part}.{key}")
                setattr(step, key, np.asarray(value, dtype=dtype) if dtype else value)
        return model


@register_blend("lgbm_stacker")
class LGBMStacker(_Stacker):
    """LightGBM on the logits (+ extra), small and regularised.

    A classifier for multiclass and binary, one binary classifier per label
    for multilabel, and a regressor (L2) for regression and ordinal, fitted
    to the residual of the kept models' mean (see :class:`_Stacker`): with
    few shallow trees at a small learning rate, boosting from the mean blend
    reaches a good prediction that boosting from a constant would not.

    Deterministic for a given ``seed`` (``deterministic=True``,
    ``force_row_wise=True``).

    Parameters
    ----------
    n_estimators : int, default 200
    learning_rate : float, default 0.05
    num_leaves : int, default 7
    min_child_samples : int, default 20
    subsample : float, default 0.8
    colsample_bytree : float, default 0.5
    reg_lambda : float, default 1.0
    max_bin : int, default 63
        Fewer histogram bins than LightGBM's 255: faster, and plenty for
        smooth logit inputs.
    bin_sample : int, default 20000
        Rows sampled to find the bin edges (LightGBM's
        ``bin_construct_sample_cnt``, 200000 by default); measured to halve
        the Dataset construction on 80,000 rows x 500 features.
    n_jobs : int, default 2
    seed : int, default 0
    max_models : int or None, default 10
        Only the best ``max_models`` models feed the stacker; None keeps all.
    label_features : {"own", "all"}, default "own"
        Multilabel only; see :class:`LogRegStacker`.
    """

    defaults = {
        "max_models": 10,
        "label_features": "own",
        "n_estimators": 200,
        "learning_rate": 0.05,
        "num_leaves": 7,
        "min_child_samples": 20,
        "subsample": 0.8,
        "colsample_bytree": 0.5,
        "reg_lambda": 1.0,
        "max_bin": 63,
        "bin_sample": 20000,
        "n_jobs": 2,
        "seed": 0,
    }

    def _make_model(self, regression: bool = False):
        import lightgbm as lgb

        p = self.params
        cls = lgb.LGBMRegressor if regression else lgb.LGBMClassifier
        return cls(
            n_estimators=p["n_estimators"],
            learning_rate=p["learning_rate"],
            num_leaves=p["num_leaves"],
            min_child_samples=p["min_child_samples"],
            subsample=p["subsample"],
            subsample_freq=1,
            colsample_bytree=p["colsample_bytree"],
            reg_lambda=p["reg_lambda"],
            max_bin=p["max_bin"],
            bin_construct_sample_cnt=p["bin_sample"],
            n_jobs=p["n_jobs"],
            random_state=p["seed"],
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )

    def _dump_model(self, model) -> dict:
        data = {"booster": model.booster_.model_to_string()}
        if hasattr(model, "classes_"):
            data["classes"] = model.classes_
        return data

    def _load_model(self, data: dict, regression: bool):
        import lightgbm as lgb

        booster = lgb.Booster(model_str=data["booster"])
        return _StoredBooster(booster, None if regression else np.asarray(data["classes"]), self.params["n_jobs"])


class _StoredBooster:
    """A LightGBM model read back from its text format, predicting as the sklearn wrapper that was fitted.

    ``LGBMClassifier.predict_proba`` is ``Booster.predict`` with, for two classes,
    ``[1 - p, p]`` stacked; ``LGBMRegressor.predict`` is ``Booster.predict``.
    """

    def __init__(self, booster, classes: np.ndarray | None, n_jobs: int):
        self.booster_ = booster
        self.n_jobs = n_jobs
        if classes is not None:
            self.classes_ = classes

    def _raw(self, x: np.ndarray) -> np.ndarray:
        return self.booster_.predict(x, num_threads=self.n_jobs)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self._raw(x)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        result = self._raw(x)
        if result.ndim == 2:
            return result
        return np.vstack((1.0 - result, result)).transpose()
