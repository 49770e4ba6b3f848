"""What is predicted and how it is scored, with no torch: the metric registry (``metrics``, the built-in scores in
``scores``, a user's own metric in ``user_metric``), the task registry (``tasks``: targets, strata, submission
formats) and the decisions a task needs on top of a blend (``decision``: thresholds and cut points)."""
