"""The sub-commands that never train (``folds``, ``validate``, ``ensemble``, ``lb``, ``import-oof``, ``clean-run``,
``models``, ``zoo``, ``zoo-promote``, ``export``) and ``demo``; one function each.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.cli.common import UsageError, load_command_config


def cmd_folds(args: argparse.Namespace) -> int:
    from pipeline.core.report import format_table
    from pipeline.data import load_competition
    from pipeline.folds import fold_summary, run_folds

    config = load_command_config(args)
    competition = load_competition(config, check_image_files=False)  # the split reads train.csv only
    folds, fingerprint, status = run_folds(config, competition, force=args.force)
    print(
        format_table(
            fold_summary(competition.y, folds, competition.classes, competition.task).to_dict("records"),
            f"folds: {config.folds.n_splits}-fold {config.folds.strategy}, seed {config.folds.seed}",
        )
    )
    print(f"{config.folds_csv}: {status} (fingerprint {fingerprint})")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.core.report import format_table
    from pipeline.data.validate import validate_competition, write_problems

    config = load_command_config(args)
    report = validate_competition(config, input_size=args.image_size)
    print(format_table(report.table_rows(), f"validate: {config.competition.name} ({config.data_dir})"))
    if len(report.problems):
        print(f"every problem file: {write_problems(report, config)}")
    print(
        f"{report.n_errors} error(s), {report.n_warnings} warning(s)"
        + ("; fix the errors before training" if report.n_errors else "")
    )
    return 1 if report.n_errors else 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from pipeline.ensemble import run_ensemble

    config = load_command_config(args)
    run_ensemble(config, force=args.force)
    return 0


def cmd_lb(args: argparse.Namespace) -> int:
    from pipeline.core.report import format_table
    from pipeline.ensemble.public_lb import rank_correlation, read_public_scores, record_public_score

    if args.score is None:
        raise UsageError("give the public leaderboard's score: make lb SCORE=0.912 [SUBMISSION=<file or method>]")
    config = load_command_config(args)
    entry = record_public_score(config, args.score, args.submission)
    entries = read_public_scores(config)
    rows = [
        {"file": e["file"], "candidate": e["candidate"], "nested CV": e["nested_cv"], "public LB": e["public_lb"],
         "public - nested": e["public_lb"] - e["nested_cv"], "recorded": e["recorded_at"]}
        for e in entries
    ]
    rho = rank_correlation(entries)
    print(format_table(rows, f"recorded public-LB scores ({len(entries)}); Spearman rank correlation with nested CV: "
                             + (f"{rho:.2f}" if rho is not None else "needs 3 or more")))
    print(f"recorded {entry['public_lb']} for {entry['file']} ({entry['candidate']}, nested CV "
          f"{entry['nested_cv']:.4f}); make ensemble shows it in the leaderboard's public LB column")
    return 0


def cmd_import_oof(args: argparse.Namespace) -> int:
    from pipeline.core.io import safe_name
    from pipeline.data import load_competition
    from pipeline.folds import read_folds
    from pipeline.store import import_run
    from pipeline.task.metrics import get_metric

    config = load_command_config(args)
    if not (args.name and args.oof and args.test):
        raise UsageError("import-oof needs NAME=<run name> OOF=<oof .csv/.parquet> TEST=<test .csv/.parquet>")
    safe_name(args.name, "NAME")
    competition = load_competition(config, check_image_files=False)
    folds, fingerprint = read_folds(config, competition)
    meta = import_run(
        config.runs_dir / args.name,
        Path(args.oof),
        Path(args.test),
        competition.train_ids,
        competition.test_ids,
        folds,
        fingerprint,
        competition.classes,
        get_metric(config.competition.metric),
        competition.y,
        force=args.force,
        task=competition.task,
    )
    print(f"imported {args.name}: CV {meta.cv:.4f} ({config.competition.metric}); 'make ensemble' now includes it")
    return 0


def cmd_clean_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.store import check_run_name, describe_run, remove_run

    config = load_config(args.config, args.settings, check_files=False, training=False)
    if not args.name:
        raise UsageError(
            "clean-run needs NAME=<run>, e.g. make clean-run NAME=resnet18 (make ensemble lists the runs it leaves out)"
        )
    run_dir = config.runs_dir / check_run_name(args.name)
    if not args.force and run_dir.is_dir():
        if not sys.stdin.isatty():
            raise UsageError(f"clean-run deletes {run_dir} ({describe_run(run_dir)}); confirm with FORCE=1")
        answer = input(f"delete {run_dir} ({describe_run(run_dir)})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    print(f"deleted {remove_run(config.runs_dir, args.name)}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from pipeline.config import image_size_choice, load_config, recipe_names, resolve_train_config
    from pipeline.core.report import format_table
    from pipeline.vision.models import MODEL_ALIASES

    print(
        format_table(
            [{"alias": alias, "timm model": name, "family": family} for alias, (name, family) in MODEL_ALIASES.items()],
            "model aliases (any timm model name works too)",
        )
    )
    if Path(args.config).is_file():
        config = load_config(args.config, check_files=False)
        rows = []
        for recipe in recipe_names(config):
            _, cfg = resolve_train_config(config, recipe)
            choice = image_size_choice(config, recipe)
            rows.append(
                {
                    "recipe": recipe,
                    "model": cfg.model,
                    "image size": cfg.image_size or "model's",
                    "size from": choice.source.removesuffix(f" {recipe}.yaml"),
                    "small input": "yes" if cfg.small_input else "",
                    "epochs": cfg.epochs,
                    "lr": cfg.lr,
                    "batch": cfg.batch_size,
                }
            )
        print()
        print(format_table(rows, f"recipes in {config.recipes_path} with {config.source}"))
        if config.train.image_size and config.train.image_size_from == "recipe":
            print(
                f"the competition's train.image_size {config.train.image_size} applies to recipes without their own; "
                "set train.image_size_from: competition to use it for every recipe"
            )
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from pipeline.zoo import format_leaderboard, promote, run_zoo

    config = load_command_config(args)
    board, n_failed = run_zoo(args.config, args.zoo, args.settings, executor=args.executor)
    print(format_leaderboard(board, config.competition.metric))
    print(f"report: {config.out / 'zoo' / config.competition.name / 'report.html'}")
    if args.top:
        promote(config, board, args.top, force=args.force, executor=args.executor)
    if n_failed:
        print(f"{n_failed} architecture(s) failed; see their screen.log", file=sys.stderr)
    return 1 if n_failed else 0


def cmd_zoo_promote(args: argparse.Namespace) -> int:
    from pipeline.zoo import promote, read_leaderboard

    config = load_command_config(args)
    if not args.top or args.top < 1:
        raise UsageError("zoo-promote needs TOP=<number of architectures>, e.g. make zoo-promote TOP=3")
    promote(config, read_leaderboard(config), args.top, force=args.force, executor=args.executor)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export import run_export

    config = load_command_config(args)
    result = run_export(
        config, method=args.method, out=Path(args.out) if args.out else None, force=args.force, check=args.check,
        budget=args.budget, test_images=args.test_images,
    )
    print(
        f"offline: python {result['out']}/predict.py --images <test folder> --sample-submission <csv> --out "
        "submission.csv"
    )
    return 0


def cmd_kaggle(args: argparse.Namespace) -> int:
    from pipeline.export.kaggle import run_kaggle

    config = load_command_config(args)
    wheels = tuple(w.strip() for w in args.wheels.split(",") if w.strip())
    result = run_kaggle(
        config, method=args.method, out=Path(args.out) if args.out else None, user=args.user, dataset=args.dataset,
        notebook=args.notebook, wheels=wheels, wheels_from=Path(args.wheels_from) if args.wheels_from else None,
        gpu=args.gpu, time_limit=args.time_limit, push=args.push, submit=args.submit, force=args.force,
        budget=args.budget, test_images=args.test_images,
    )
    target, out = result["target"], result["out"]
    print(f"wrote {out}/dataset (the export, wheels: {', '.join(result['wheels']) or 'none'}) and "
          f"{out}/notebook/{target.notebook}.ipynb (internet off; dataset {target.dataset_id}, competition "
          f"{target.competition})")
    if target.user == "your-kaggle-username":
        print("the ids hold a placeholder user: pass KAGGLE_USER=<you> (or put your token in ~/.kaggle/kaggle.json) "
              "and rerun before uploading")
    if args.push:
        print(f"pushed: https://www.kaggle.com/code/{target.notebook_id} (run it there, then submit its output)")
    else:
        print("to upload: make kaggle PUSH=1 (the kaggle CLI and a token in ~/.kaggle/kaggle.json), or run:")
        for command in result["commands"]:
            print("  " + " ".join(f"'{c}'" if " " in c else c for c in command))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.data import load_competition
    from pipeline.ensemble import run_ensemble
    from pipeline.export import run_export
    from pipeline.folds import run_folds
    from pipeline.train import run_train, train_leaderboard

    started = time.perf_counter()
    config = load_command_config(args)
    competition = load_competition(config)
    _, fingerprint, status = run_folds(config, competition, force=args.force)
    print(f"folds: {config.folds_csv} {status} (fingerprint {fingerprint})")
    for model in config.models:
        print(
            train_leaderboard(
                run_train(config, model, force=args.force, overrides=args.settings, competition=competition)
            )
        )
    run_ensemble(config, force=args.force, competition=competition)
    # the last step of a code competition: the chosen ensemble as a folder that predicts offline (make export)
    exported = run_export(config, force=args.force)
    print(
        f"offline: python {exported['out']}/predict.py --images <test folder> --sample-submission <csv> --out "
        "submission.csv"
    )
    print(f"demo finished in {time.perf_counter() - started:.0f}s")
    return 0
