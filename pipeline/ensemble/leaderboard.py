"""The choice among candidates (one rule), the leaderboard's rows and notes, and the ensemble's figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline import blend
from pipeline.core.report import format_seconds
from pipeline.ensemble.candidates import Candidate
from pipeline.ensemble.submissions import SubmissionWriter
from pipeline.store import StoredRun
from pipeline.task.metrics import Metric


def choose_candidate(
    candidates: list[Candidate], metric: Metric, rule: str = "one_se", score: str = "nested"
) -> Candidate:
    # the one selection rule (blend.select_method): with one_se, the simplest candidate within one standard error
    # of the best score; ties to the earlier candidate (singles, then the methods in the configured order).
    scored = _scored(candidates, score)
    for i, se in blend.standard_errors(scored, metric).items():
        candidates[i].se = None if np.isnan(se) else se
    return candidates[blend.select_method(scored, metric, rule=rule)]


def _scored(candidates: list[Candidate], score: str) -> dict[int, blend.Scored]:
    # Keyed by position, as names may repeat. score="expected": each candidate's nested score (and every fold's)
    # moved by its estimated fold-averaging gain (estimate_averaging); one without an estimate keeps its nested score
    def shifted(c: Candidate) -> blend.Scored:
        nested = blend.Scored(c.nested, c.fold_scores, c.simplicity, c.family, c.exact)
        if score != "expected" or c.expected is None:
            return nested
        return blend.shift_scored(nested, c.expected - c.nested)

    return {i: shifted(c) for i, c in enumerate(candidates)}


def describe_rule(rule: str, score: str = "nested", stand_in: bool = False) -> str:
    """What chose the submission, in words: ``nested CV (<the rule>)`` or ``expected test score (...)``; with
    ``stand_in`` (some candidate is an exact fit, so the rule's last step can act) that step too."""
    what = "nested CV" if score == "nested" else "expected test score"
    if rule == "one_se":
        text = (f"the simplest within one standard error of the best {what}: means, then weights and single models, "
                f"then stackers; among equally simple ones the better {what}, a tie to the earlier listed")
        if stand_in:
            text += ("; an exact fit of the same weights (slsqp on its own loss) stands for a weight search within "
                     "that search's own standard error")
    else:
        text = (f"the best {what}, a tie to the earlier listed (single models first, then the methods in the "
                "configured order)")
    if score == "expected":
        text = "nested CV plus each candidate's estimated gain from averaging its k fold models; " + text
    return f"{what} ({text})"


def tie_note(candidates: list[Candidate], chosen: Candidate) -> str:
    """`` (tied with ...)`` naming the candidates whose nested score equals the chosen one's (6 decimals), else ''."""
    tied = [
        c.name
        for c in candidates
        if c is not chosen and not np.isnan(c.nested) and round(c.nested, 6) == round(chosen.nested, 6)
    ]
    if not tied:
        return ""
    return f" (tied at nested CV {chosen.nested:.6f} with {', '.join(tied)}; the rule above broke the tie)"


def stand_in_note(
    candidates: list[Candidate], chosen: Candidate, metric: Metric, rule: str = "one_se", score: str = "nested"
) -> str:
    """Why the one-SE rule's pick gave way to an exact fit of its family (the rule's last step,
    :func:`pipeline.blend.select_method`), or '' when it did not."""
    if rule != "one_se":
        return ""
    scored = _scored(candidates, score)
    pick = blend.select_method(scored, metric, rule=rule, stand_in=False)
    if candidates[pick] is chosen:
        return ""
    mine = next(i for i, c in enumerate(candidates) if c is chosen)
    what = "nested CV" if score == "nested" else "expected test score"
    sign = 1.0 if metric.greater_is_better else -1.0
    lead = round(sign * (scored[pick].nested - scored[mine].nested), 6)
    own = blend.own_standard_error(scored[pick])
    weighed = f", a lead within {candidates[pick].name}'s own standard error {own:.6f}" if lead > 0 else ""
    return (
        f"; {chosen.name} stands for {candidates[pick].name}, the rule's pick: both search the same weights, "
        f"{chosen.name} exactly ({what} {scored[pick].nested:.6f} against {scored[mine].nested:.6f}{weighed})"
    )


def leaderboard_rows(
    candidates: list[Candidate], metric: Metric, chosen: Candidate, other_apply: str = "fold_mean"
) -> list[dict]:
    """The leaderboard: the chosen candidate first (marked ``*``), then the others best first by nested CV,
    equal scores in the order the selection rule breaks ties (the earlier listed first), NaN last."""
    rest = [i for i, c in enumerate(candidates) if c is not chosen]
    order = blend.rank_candidates({i: candidates[i].nested for i in rest}, metric) if rest else []
    ordered = [chosen] + [candidates[i] for i in order]
    rows = []
    for cand in ordered:
        rows.append(
            {
                "submission": cand.name + (" *" if cand is chosen else ""),
                "kind": cand.kind,
                "CV": cand.cv,
                "CV no TTA": cand.cv_plain,
                "nested CV": None if cand.kind == "single" and not cand.decision else cand.nested,
                "SE": cand.se,
                **(
                    {"fold-avg gain": cand.averaging_gain, "expected": cand.expected}
                    if any(c.expected is not None for c in candidates)
                    else {}
                ),
                "gap": cand.gap,
                "weight std": cand.weight_std,
                "private LB": cand.private,
                **({"public LB": cand.public} if any(c.public is not None for c in candidates) else {}),
                "time": format_seconds(cand.seconds),
            }
        )
        if any(c.private_other is not None for c in candidates):
            # the other application (ensemble.apply) where it gives other test predictions than the chosen one
            rows[-1][f"private LB ({other_apply})"] = cand.private_other
        if any(c.temperature != 1.0 for c in candidates):
            rows[-1]["temperature"] = None if cand.kind == "single" else cand.temperature
        if any(c.decision for c in candidates):
            rows[-1]["decision (tuned on OOF)"] = describe_decision(cand.decision)
    return rows


def describe_decision(params: dict | None) -> str:
    """A tuned decision in a few characters: one threshold, a range of per-label thresholds, or the cut points."""
    if not params:
        return ""
    if "cutpoints" in params:
        return "cuts " + " ".join(f"{c:.2f}" for c in params["cutpoints"])
    thresholds = params.get("thresholds", [])
    if len(thresholds) == 1:
        return f"threshold {thresholds[0]:.2f}"
    return f"thresholds {min(thresholds):.2f}..{max(thresholds):.2f}" if thresholds else ""


PLOT_NAME = "ensemble.png"


def save_figure(writer: SubmissionWriter, name: str, fig) -> Path:
    """Write a matplotlib figure as a PNG through ``writer`` (so it is recorded as the pipeline's) and close it."""
    import matplotlib.pyplot as plt

    try:
        return writer.write_with(name, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def ensemble_figure(runs: list[StoredRun], preds: np.ndarray, candidates: list[Candidate], keep: np.ndarray):
    """Two panels: each weight method's weights per model, and the models' OOF correlation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.name for r in runs]
    corr = np.corrcoef(preds.reshape(len(runs), -1)) if len(runs) > 1 else np.ones((1, 1))
    weighted = [c for c in candidates if c.weights is not None and c.kind != "single"]
    fig, (ax_w, ax_c) = plt.subplots(1, 2, figsize=(12, 4.5))
    kept_names = [names[i] for i in keep]
    width = 0.8 / max(1, len(weighted))
    for j, cand in enumerate(weighted):
        ax_w.bar(np.arange(len(kept_names)) + j * width, cand.weights, width=width, label=cand.name)
    ax_w.set_xticks(np.arange(len(kept_names)) + 0.4 - width / 2, kept_names, rotation=20, ha="right")
    ax_w.set_ylabel("weight")
    ax_w.set_title("blend weights per model")
    if weighted:
        ax_w.legend(fontsize=8)
    image = ax_c.imshow(corr, vmin=min(0.9, corr.min()), vmax=1.0, cmap="viridis")
    ax_c.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax_c.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax_c.text(j, i, f"{corr[i, j]:.3f}", ha="center", va="center", color="w", fontsize=8)
    ax_c.set_title("OOF prediction correlation (lower = more diverse)")
    fig.colorbar(image, ax=ax_c)
    fig.tight_layout()
    return fig
