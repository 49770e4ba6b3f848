"""The registry of blend methods and their base class.

:data:`BLEND_METHODS` is filled by :func:`register_blend` and read by :func:`make_blend`;
:func:`applicable` / :func:`not_applicable_reason` say which methods apply to a task;
:class:`BlendMethod` holds what every method shares: parameter checks, validation in
``fit``/``predict`` and the optional temperature.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..task.metrics import TASK_OUTPUT, Metric
from .calibration import apply_temperature, fit_temperature
from .objective import to_output
from .validation import as_metric, check_task, validate_extra, validate_preds, validate_y

# How NotApplicable's message names each output kind
_OUTPUT_WORDS = {
    "simplex": "class probabilities",
    "probability": "probabilities",
    "value": "values, not probabilities",
}

BLEND_METHODS: dict[str, type["BlendMethod"]] = {}


def register_blend(name: str) -> Callable[[type["BlendMethod"]], type["BlendMethod"]]:
    """Class decorator adding a :class:`BlendMethod` subclass to the registry.

    Parameters
    ----------
    name : str
        Registry key, as written in a config (``ensemble.method: caruana``).

    Returns
    -------
    decorator : callable
        Returns the class unchanged, with ``cls.name`` set to ``name``.
    """

    def decorator(cls: type[BlendMethod]) -> type[BlendMethod]:
        if not (isinstance(cls, type) and issubclass(cls, BlendMethod)):
            raise TypeError(f"@register_blend({name!r}) must decorate a BlendMethod subclass, got {cls!r}")
        if name in BLEND_METHODS:
            raise ValueError(f"blend method {name!r} is already registered (by {BLEND_METHODS[name].__name__})")
        cls.name = name
        BLEND_METHODS[name] = cls
        return cls

    return decorator


def make_blend(name: str, **params: Any) -> "BlendMethod":
    """Instantiate a registered blend method.

    Parameters
    ----------
    name : str
        A key of :data:`BLEND_METHODS`.
    **params
        Method parameters; see each class's ``defaults``.  ``calibrate`` is
        accepted by every method.

    Returns
    -------
    method : BlendMethod
        Unfitted.

    Raises
    ------
    KeyError
        ``name`` is not registered; the message lists the known methods.
    ValueError
        A parameter is unknown (the message names it and lists the valid
        ones) or has an invalid value.
    """
    try:
        cls = BLEND_METHODS[name]
    except KeyError:
        raise KeyError(
            f"unknown blend method {name!r}; known methods: {', '.join(BLEND_METHODS)}"
        ) from None
    return cls(**params)


class NotApplicable(ValueError):
    """A blend method does not apply to the task's predictions.

    Raised by ``fit`` (and so by :func:`nested_score`) before any work, e.g.
    for a geometric mean of regression values.  Check beforehand with
    :func:`applicable` to skip such methods without ``try``/``except``.
    """


def _method_class(method: str | type[BlendMethod]) -> type[BlendMethod]:
    if isinstance(method, type) and issubclass(method, BlendMethod):
        return method
    try:
        return BLEND_METHODS[method]
    except KeyError:
        raise KeyError(f"unknown blend method {method!r}; known methods: {', '.join(BLEND_METHODS)}") from None


def not_applicable_reason(method: str | type[BlendMethod], task: str | None) -> str | None:
    """Why a blend method does not apply to a task, or None when it does.

    Parameters
    ----------
    method : str or BlendMethod subclass
        A key of :data:`BLEND_METHODS` (or the class itself).
    task : str or None
        A key of :data:`TASK_OUTPUT`.  None (inferred binary or multiclass)
        always means probabilities, which every method handles.

    Returns
    -------
    reason : str or None
        The message :class:`NotApplicable` would carry, naming the methods
        that do apply; None when ``method`` applies.
    """
    cls = _method_class(method)
    if task is None:
        return None
    output = TASK_OUTPUT[check_task(task)]
    if output in cls.outputs:
        return None
    usable = [name for name, c in BLEND_METHODS.items() if output in c.outputs and not name.startswith("_")]
    alternatives = ", ".join(usable[:-1]) + (" or " if len(usable) > 1 else "") + usable[-1] if usable else "none"
    why = f"{_OUTPUT_WORDS[output]}: {cls.why_not}" if cls.why_not else _OUTPUT_WORDS[output]
    return f"blend method {cls.name!r} does not apply to {task} predictions ({why}); use {alternatives}"


def applicable(method: str | type[BlendMethod], task: str | None) -> bool:
    """Whether a blend method applies to a task's predictions.

    Parameters
    ----------
    method : str or BlendMethod subclass
        A key of :data:`BLEND_METHODS` (or the class itself).
    task : str or None
        A key of :data:`TASK_OUTPUT`; None (inferred binary or multiclass)
        always applies.

    Returns
    -------
    bool
        False exactly when ``fit`` would raise :class:`NotApplicable`;
        :func:`not_applicable_reason` gives the message.
    """
    return not_applicable_reason(method, task) is None


class BlendMethod:
    """Base class of blend methods.

    Subclasses set ``kind`` and ``defaults`` and implement ``_fit`` (and
    ``_predict`` unless they are a linear blend with ``weights_``); one that
    does not handle every output kind narrows ``outputs`` and says why in
    ``why_not``.

    Parameters
    ----------
    calibrate : bool, default False
        After fitting, and only when the metric is ``log_loss`` and the task
        is multiclass or binary, fit a temperature on the method's in-sample
        blend (:func:`fit_temperature`) and keep it only if it lowers the
        in-sample log loss; ``predict`` then applies it.  Averages of
        diverse models are typically under-confident, which a temperature
        below 1 corrects; :func:`nested_score` tells whether it helps out
        of sample.  Other tasks ignore it quietly: a temperature is a
        softmax/sigmoid rescaling, meaningless for values, and for multilabel
        one shared temperature over labels of different calibration is not
        what a per-label fix would need.
    **params
        Method-specific parameters; see the subclass's ``defaults``.

    Attributes
    ----------
    params : dict
        All parameters, defaults filled in.
    weights_ : ndarray of shape (n_models,) or None
        Blend weights (uniform for the ``mean`` kind); None for stackers.
    temperature_ : float
        1.0 unless ``calibrate`` kept a temperature.
    exact_ : bool
        True when the fit is the exact optimum of the metric over the
        parameters its :meth:`family` searches (``slsqp`` on log loss or
        squared error, where its smooth loss is the metric); False for
        searches that approximate it (random, greedy) or optimise a
        surrogate.  The one-SE rule lets an exact fit stand for the other
        members of its family (:func:`pipeline.blend.select_method`).
    task_ : str
        The task the method was fitted for (resolved: never None), so that
        ``predict`` validates and outputs the same way.
    output_ : {"simplex", "probability", "value"}
        ``TASK_OUTPUT[task_]``.
    kind : {"mean", "weights", "stacker"}
        Class attribute.
    outputs : frozenset of str
        Class attribute: the output kinds the method applies to.
    why_not : str
        Class attribute: why it does not apply to the others (for
        :class:`NotApplicable`'s message).
    transductive : bool
        Class attribute; True when a row's prediction depends on the other
        rows passed to ``predict`` (``rank_mean``).
    simplicity : int
        Class attribute: the rank of the method in the one-standard-error
        selection rule (:func:`pipeline.blend.select_method`), lower =
        simpler = preferred when the nested scores are within one standard
        error: 0 for the fixed means (nothing learnt from the rows), 2 for
        weight searches (one weight per model), 3 for stackers (a model per
        class on every model's logits).  A single model ranks with the
        weight searches (2): it is the weight vector with one weight 1, a
        corner of the simplex they search (and start from), chosen on the
        same OOF rows.
    """

    name: str = "?"
    kind: str = "weights"
    outputs: frozenset[str] = frozenset({"simplex", "probability", "value"})
    why_not: str = ""
    transductive: bool = False
    simplicity: int = 2
    defaults: dict[str, Any] = {}
    _base_defaults: dict[str, Any] = {"calibrate": False}

    def __init__(self, **params: Any):
        allowed = {**self._base_defaults, **self.defaults}
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {', '.join(map(repr, unknown))} for blend method {self.name!r}; "
                f"valid parameters: {', '.join(sorted(allowed))}"
            )
        self.params: dict[str, Any] = {**allowed, **params}
        self._check_params()
        self.weights_: np.ndarray | None = None
        self.temperature_: float = 1.0
        self.exact_: bool = False
        self.n_models_: int | None = None
        self.n_cols_: int | None = None
        self.n_extra_: int | None = None
        self.metric_: Metric | None = None
        self.task_: str | None = None
        self.output_: str | None = None

    def __repr__(self) -> str:
        changed = {k: v for k, v in self.params.items() if v != {**self._base_defaults, **self.defaults}.get(k)}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    # -- hooks ------------------------------------------------------------- #

    def _check_params(self) -> None:
        """Raise ValueError for invalid parameter values (subclasses extend)."""

    def _fit(self, preds: np.ndarray, y: np.ndarray, metric: Metric, extra: np.ndarray | None) -> None:
        raise NotImplementedError

    def _predict(self, preds: np.ndarray, extra: np.ndarray | None) -> np.ndarray:
        return to_output(np.tensordot(self.weights_, preds, axes=1), self.output_)

    # -- public API -------------------------------------------------------- #

    def fit(self, preds: np.ndarray, y: np.ndarray, metric: Metric | str,
            extra: np.ndarray | None = None, *, task: str | None = None) -> "BlendMethod":
        """Fit the blend on OOF predictions.

        Parameters
        ----------
        preds : array-like of shape (n_models, n_rows, n_cols)
            Stacked OOF predictions (see the table in :mod:`pipeline.blend` for each task).
        y : array-like of shape (n_rows,) or (n_rows, n_labels)
            Targets: class labels ``0 .. n_classes - 1``, a 0/1 indicator
            per label (multilabel), real values (regression) or grade
            indices (ordinal).
        metric : Metric or str
            The competition metric (or its registry name).
        extra : array-like of shape (n_rows, n_features), optional
            Per-row metadata features; used by stackers, ignored otherwise.
        task : str or None, default None
            A key of :data:`TASK_OUTPUT`; None infers binary (one column)
            or multiclass.

        Returns
        -------
        self

        Raises
        ------
        NotApplicable
            The method does not apply to the task (see :func:`applicable`).
        ValueError
            ``preds``, ``y`` or ``extra`` do not fit the task; the message
            names the bad value.
        """
        metric = as_metric(metric)
        if task is not None:
            self._check_applicable(check_task(task))  # before validating: the cheaper, clearer error
        preds, task = validate_preds(preds, task=task)
        _, n_rows, n_cols = preds.shape
        y = validate_y(y, n_rows, n_cols, task)
        extra = validate_extra(extra, n_rows)
        return self._fit_valid(preds, y, metric, extra, task)

    def _check_applicable(self, task: str) -> None:
        reason = not_applicable_reason(type(self), task)
        if reason is not None:
            raise NotApplicable(reason)

    def _fit_valid(self, preds: np.ndarray, y: np.ndarray, metric: Metric, extra: np.ndarray | None,
                   task: str) -> "BlendMethod":
        # fit on inputs already validated for `task` (nested_score checks the full arrays once)
        self._check_applicable(task)
        self.task_, self.output_ = task, TASK_OUTPUT[task]
        self.n_models_, self.n_cols_ = preds.shape[0], preds.shape[2]
        self.n_extra_ = None if extra is None else extra.shape[1]
        self.metric_ = metric
        self.temperature_ = 1.0
        self.exact_ = False  # only a fit that completes says otherwise
        self._fit(preds, y, metric, extra if self.kind == "stacker" else None)
        if self.params["calibrate"] and metric.name == "log_loss" and task in ("multiclass", "binary"):
            raw = self._predict(preds, extra if self.kind == "stacker" else None)
            t = fit_temperature(raw, y)
            if metric.loss(y, apply_temperature(raw, t)) < metric.loss(y, raw):
                self.temperature_ = t
        return self

    def family(self) -> str:
        """What the method fits, as a name: blends of one family search the same parameters for the same loss, so
        the one-SE rule lets an exact fit (:attr:`exact_`) stand for the others
        (:func:`pipeline.blend.select_method`).

        Returns
        -------
        str
            Its ``kind`` (``"weights"``: one weight per model on the simplex), with ``" + temperature"`` when
            ``calibrate`` is on.
        """
        return self.kind + (" + temperature" if self.params["calibrate"] else "")

    def predict(self, preds: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
        """Blend new stacked predictions (OOF or test) with the fitted method.

        Parameters
        ----------
        preds : array-like of shape (n_models, n_rows, n_cols)
            Same models, same order, same task as in ``fit``.
        extra : array-like of shape (n_rows, n_features), optional
            Required by a stacker fitted with extra features.

        Returns
        -------
        pred : ndarray of shape (n_rows, n_cols)
            Of the fitted task's output kind: rows sum to 1 (multiclass),
            probabilities in [0, 1] (binary, multilabel), or unclipped
            values (regression, ordinal).
        """
        if self.n_models_ is None:
            raise RuntimeError(f"blend method {self.name!r} is not fitted; call fit(preds, y, metric) first")
        preds, _ = validate_preds(preds, task=self.task_, n_models=self.n_models_, n_cols=self.n_cols_)
        return self._predict_valid(preds, extra)

    def _predict_valid(self, preds: np.ndarray, extra: np.ndarray | None, calibrated: bool = True) -> np.ndarray:
        # calibrated=False: the blend without its temperature (nested CV scores both, see nested_score)
        if self.kind == "stacker":
            if self.n_extra_ is not None and extra is None:
                raise ValueError(f"{self.name!r} was fitted with {self.n_extra_} extra features; pass extra of shape "
                                 f"(n_rows, {self.n_extra_})")
            if self.n_extra_ is None and extra is not None:
                raise ValueError(f"{self.name!r} was fitted without extra features; pass extra=None")
            extra = validate_extra(extra, preds.shape[1], self.n_extra_)
        else:
            extra = None
        out = self._predict(preds, extra)
        if calibrated and self.temperature_ != 1.0:
            out = apply_temperature(out, self.temperature_)
        return out

    # -- stored state ------------------------------------------------------ #

    #: Version of the dict :meth:`state` returns; :meth:`from_state` refuses newer ones.
    STATE_VERSION = 1
    # parameters that steer the search only, never a prediction: not kept (optuna's past trials can be large)
    _SEARCH_ONLY = ("previous_trials", "storage", "study_name")

    def state(self) -> dict:
        """The fitted method as plain JSON data (no pickle): what :meth:`from_state` needs to predict.

        Returns
        -------
        dict
            ``method``, ``params``, ``task``, ``n_models``, ``n_cols``, ``n_extra``,
            ``weights``, ``temperature``, the metric's name, and the subclass's own
            fitted attributes under ``fitted`` (:meth:`_state`).  Every float is a
            Python float, so ``json`` writes it with ``repr`` and reads back the same bits.

        Raises
        ------
        RuntimeError
            If the method is not fitted.
        """
        if self.n_models_ is None:
            raise RuntimeError(f"blend method {self.name!r} is not fitted; nothing to store")
        return {
            "version": self.STATE_VERSION,
            "method": self.name,
            "params": _plain({k: v for k, v in self.params.items() if k not in self._SEARCH_ONLY}),
            "task": self.task_,
            "n_models": int(self.n_models_),
            "n_cols": int(self.n_cols_),
            "n_extra": None if self.n_extra_ is None else int(self.n_extra_),
            "weights": None
            if self.weights_ is None
            else [float(w) for w in np.asarray(self.weights_, dtype=np.float64)],
            "temperature": float(self.temperature_),
            "metric": None if self.metric_ is None else self.metric_.name,
            "fitted": _plain(self._state()),
        }

    @classmethod
    def from_state(cls, state: dict) -> "BlendMethod":
        """Rebuild a fitted method from :meth:`state`'s dict; its ``predict`` gives the same numbers.

        Parameters
        ----------
        state : dict
            As written by :meth:`state` (read back from JSON).

        Returns
        -------
        BlendMethod
            Of the registered class ``state["method"]`` (called on the base class,
            the registry picks it).

        Raises
        ------
        ValueError
            If the dict is not a stored blend state, or of a newer version.
        """
        if not isinstance(state, dict) or "method" not in state:
            raise ValueError(f"not a stored blend state: {str(state)[:80]!r}")
        if state.get("version", 1) > cls.STATE_VERSION:
            raise ValueError(
                f"blend state version {state.get('version')} is newer than this code's ({cls.STATE_VERSION}); "
                "upgrade the pipeline"
            )
        method = make_blend(state["method"], **state["params"])
        method.task_ = state["task"]
        method.output_ = TASK_OUTPUT[state["task"]]
        method.n_models_, method.n_cols_, method.n_extra_ = state["n_models"], state["n_cols"], state["n_extra"]
        method.weights_ = None if state["weights"] is None else np.asarray(state["weights"], dtype=np.float64)
        method.temperature_ = float(state["temperature"])
        if state.get("metric"):
            try:
                method.metric_ = as_metric(state["metric"])
            except (KeyError, ValueError):
                method.metric_ = None  # a user's metric not registered here: predict does not need it
        method._load_state(state.get("fitted") or {})
        return method

    def _state(self) -> dict:
        """The subclass's fitted attributes beyond weights and temperature, as JSON data (hook)."""
        return {}

    def _load_state(self, fitted: dict) -> None:
        """Set what :meth:`_state` stored (hook)."""


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays in ``value`` as Python numbers and lists, for JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


# Parameter checks shared by the method modules' _check_params
def require(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
