"""The ensemble stage: blends the stored runs, scores every blend by nested CV, writes the submissions.

``stage`` (:func:`run_ensemble`), ``candidates`` (every blend and single run, scored), ``leaderboard`` (the one choice
rule, the rows, the figure) and ``submissions`` (files in the sample's format, written under a manifest) make the
stage; ``fitted`` keeps the fitted blends as typed records that ``make export``, the students and
``reproduce_submission`` read back.
"""

from pipeline.ensemble.candidates import (Candidate, blend_candidates, method_params, optuna_study_path,
                                          per_fold_scores, select_runs, single_candidate, stacked_fold_tests,
                                          stacker_features)
from pipeline.ensemble.leaderboard import (PLOT_NAME, choose_candidate, describe_decision, describe_rule,
                                           ensemble_figure, leaderboard_rows, save_figure, stand_in_note,
                                           tie_note)
from pipeline.ensemble.stage import DEFAULT_METHODS, run_ensemble, save_optuna_trials
from pipeline.ensemble.submissions import SubmissionError, SubmissionWriter, check_submission, submission_frame

__all__ = ["SubmissionError", "submission_frame", "check_submission", "SubmissionWriter", "Candidate",
           "method_params", "optuna_study_path", "stacker_features", "blend_candidates", "single_candidate",
           "per_fold_scores", "stacked_fold_tests", "select_runs", "choose_candidate", "describe_rule", "tie_note",
           "stand_in_note",
           "leaderboard_rows", "describe_decision", "PLOT_NAME", "save_figure", "ensemble_figure",
           "DEFAULT_METHODS", "run_ensemble", "save_optuna_trials"]
