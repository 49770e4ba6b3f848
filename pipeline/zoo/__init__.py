"""``make zoo``: screen every architecture of a zoo file quickly, then promote the best to full runs.

``plan`` (the zoo file and the screen's plan), ``screen`` (the screen, its workers, promotion), ``report`` (the
leaderboard, the Pareto front and the HTML report); the speed measurements are ``pipeline.train.timing``'s.
"""

from pipeline.zoo.plan import (DEFAULT_ZOO, ScreenConfig, ScreenPlan, ZooConfig, load_zoo, make_plan, screen_image_size,
                               screen_rows, stratified_subset, subset_competition, zoo_config)
from pipeline.zoo.report import (format_leaderboard, leaderboard, oof_residual_correlation, pareto_front, shortlist,
                                 write_report)
from pipeline.zoo.screen import (main, measure_cost, peak_memory_mb, promote, read_leaderboard, run_screen_process,
                                 run_zoo, screen_one)

__all__ = ["DEFAULT_ZOO", "ScreenConfig", "ZooConfig", "load_zoo", "stratified_subset", "screen_rows",
           "screen_image_size", "zoo_config", "subset_competition", "ScreenPlan", "make_plan", "measure_cost",
           "peak_memory_mb", "screen_one", "run_screen_process", "run_zoo", "promote", "read_leaderboard", "main",
           "leaderboard", "format_leaderboard", "pareto_front", "oof_residual_correlation", "shortlist",
           "write_report"]
