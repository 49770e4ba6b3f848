"""``optuna``: blend weights searched by optuna's TPE on the simplex."""

from __future__ import annotations

import contextlib
import math

import numpy as np

from .base import BlendMethod, is_int, register_blend, require
from .objective import LinearLoss


@contextlib.contextmanager
def _quiet_optuna():
    """Silence optuna's per-trial INFO lines, restoring the caller's level."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield optuna
    finally:
        optuna.logging.set_verbosity(level)


@register_blend("optuna")
class OptunaWeights(BlendMethod):
    """Blend weights searched by optuna's TPE on the simplex.

    Each trial suggests ``u_i`` in (0, 1] and sets ``x_i = -log(u_i)``,
    ``w = x / sum(x)``: with uniform ``u`` the weights are Dirichlet(1), i.e.
    uniform on the simplex, so the search space has no redundant scale.
    To limit overfitting the first two trials of a new study are the equal
    weights and the best single model, so the search starts from the two
    classical baselines and only moves away if a blend beats them.

    Parameters
    ----------
    n_trials : int, default 100
    timeout : float or None, default None
        Seconds; with a timeout the result depends on machine speed.
    storage : str or None, default None
        None keeps the study in memory; a URL such as ``sqlite:///blend.db``
        makes it persistent.
    study_name : str or None, default None
        With ``storage``, a rerun with the same name continues the study
        (``load_if_exists``); it must hold the same number of models.
    seed : int, default 0
        Seed of the TPE sampler.
    previous_trials : list of dict or None, default None
        ``[{"params": {...}, "value": float}, ...]`` from :meth:`trials_record`
        of a study on the same models and rows; added to a new in-memory
        study before the search, which then continues from them (the
        baselines are not enqueued again).

    Attributes
    ----------
    study_ : optuna.Study
    """

    defaults = {"n_trials": 100, "timeout": None, "storage": None, "study_name": None, "seed": 0,
                "previous_trials": None}

    def _check_params(self):
        p = self.params
        require(is_int(p["n_trials"]) and p["n_trials"] >= 1, f"n_trials must be an int >= 1; got {p['n_trials']!r}")
        require(p["timeout"] is None or p["timeout"] > 0, f"timeout must be None or > 0 seconds; got {p['timeout']!r}")

    def _fit(self, preds, y, metric, extra):
        obj = LinearLoss(preds, y, metric, task=self.task_)
        n = preds.shape[0]
        keys = [f"u{i:04d}" for i in range(n)]

        def to_weights(u: np.ndarray) -> np.ndarray:
            x = -np.log(u) + 0.0  # + 0.0 turns -log(1) = -0.0 into 0.0
            s = x.sum()
            return x / s if s > 0 else np.full(n, 1.0 / n)

        def objective(trial) -> float:
            u = np.array([trial.suggest_float(k, 1e-6, 1.0) for k in keys])
            return obj.weights_loss(to_weights(u))

        with _quiet_optuna() as optuna:
            sampler = optuna.samplers.TPESampler(seed=self.params["seed"])
            study = optuna.create_study(
                storage=self.params["storage"], study_name=self.params["study_name"], sampler=sampler,
                direction="minimize", load_if_exists=True,
            )
            shape = {"n_models": int(n), "n_rows": int(preds.shape[1]), "n_cols": int(preds.shape[2])}
            stored = {k: study.user_attrs.get(k) for k in shape}
            previous = self.params["previous_trials"] or []
            if previous and len(study.trials) == 0:
                names = [sorted(t.get("params", {})) for t in previous]
                if any(n != keys for n in names):
                    raise ValueError(f"previous_trials were made for other models (parameters {names[0][:3]}..., not "
                                     f"{keys[:3]}... of {n} models); start a new study")
                distributions = {k: optuna.distributions.FloatDistribution(1e-6, 1.0) for k in keys}
                study.add_trials([optuna.trial.create_trial(params=t["params"], distributions=distributions,
                                                            value=float(t["value"])) for t in previous])
                for k, v in shape.items():
                    study.set_user_attr(k, v)
                stored = dict(shape)
            if len(study.trials) == 0:
                for k, v in shape.items():
                    study.set_user_attr(k, v)
                # baselines first: equal weights (all x_i = 1) and best single model (x_i = 0 elsewhere)
                one = math.exp(-1.0)
                study.enqueue_trial({k: one for k in keys})
                best = int(np.argmin(obj.single_losses()))
                study.enqueue_trial({k: (one if i == best else 1.0) for i, k in enumerate(keys)})
            elif stored != shape:
                raise ValueError(
                    f"optuna study {study.study_name!r} in {self.params['storage']} was created for {stored}, "
                    f"not {shape}; use another study_name"
                )
            study.optimize(objective, n_trials=self.params["n_trials"], timeout=self.params["timeout"])
        self.study_ = study
        self.weights_ = to_weights(np.array([study.best_trial.params[k] for k in keys]))

    def trials_record(self) -> list[dict]:
        """The fitted study's finished trials, ``[{"params": ..., "value": ...}]``, for ``previous_trials``."""
        import optuna

        return [{"params": dict(t.params), "value": float(t.value)} for t in self.study_.trials
                if t.state == optuna.trial.TrialState.COMPLETE]
