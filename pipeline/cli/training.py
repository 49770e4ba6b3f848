"""The sub-commands that train: ``train`` (seed bags, executors), ``lr-find``, ``predict``, ``pseudo`` and ``distill``;
one function each.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.common import (UsageError, chosen_executor, load_command_config, models_to_run, parse_folds,
                                 print_on_main, refuse_under_torchrun, student_commands_run_alone)


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.train import run_train, train_leaderboard

    config = load_command_config(args)
    models = models_to_run(args, config)
    executor = chosen_executor(args, config)
    if args.seeds is not None:
        if executor != "local":
            raise UsageError(
                f"SEEDS= trains its runs one after another; it does not combine with EXECUTOR={executor} yet"
            )
        return _train_seed_bags(args, config, models)
    if executor != "local":
        return _train_on_executor(args, config, models, executor)
    for model in models:
        meta = run_train(
            config, model, parse_folds(args.folds), force=args.force, overrides=args.settings, name=args.name
        )
        print_on_main(train_leaderboard(meta))
    return 0


def _train_seed_bags(args: argparse.Namespace, config, models: list[str]) -> int:
    """SEEDS=n: each model trained with n seeds as n runs, then the bag's line (each seed's CV, the mean OOF's CV)."""
    from pipeline.config import resolve_train_config
    from pipeline.data import load_competition
    from pipeline.task.metrics import get_metric
    from pipeline.train import run_train, train_leaderboard
    from pipeline.train.seeds import bag_seeds, bag_summary, seed_overrides, seed_run_names

    competition = load_competition(config)
    for model in models:
        # NAME=, else the run's default name (the recipe's, -<preset> under a preset)
        names = seed_run_names(args.name or resolve_train_config(config, model, args.settings)[0], args.seeds)
        seeds = bag_seeds(config, model, args.settings, args.seeds)
        metas = []
        for name, seed in zip(names, seeds):
            meta = run_train(
                config,
                model,
                parse_folds(args.folds),
                force=args.force,
                overrides=seed_overrides(args.settings, seed),
                competition=competition,
                name=name,
            )
            print_on_main(train_leaderboard(meta))
            metas.append(meta)
        if all(m.status == "finished" for m in metas):
            print_on_main(
                bag_summary(metas, config.runs_dir, competition, get_metric(config.competition.metric)).table()
            )
        else:
            print_on_main(
                f"seed bag {names[0]}..{names[-1]}: not every fold is trained; the bag is scored once they are"
            )
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from pipeline.train.lr_find import SUGGESTION_RULE, lr_find_settings, run_lr_find

    config = load_command_config(args)
    settings = lr_find_settings(config, args.start_lr, args.end_lr, args.steps)
    for model in models_to_run(args, config):
        result = run_lr_find(config, model, settings, overrides=args.settings)
        stop = f", stopped early at lr {result.lrs[-1]:.2e} (the loss diverged)" if result.stopped_early else ""
        print(f"{result.name}: suggested lr {result.suggestion:.2e} ({SUGGESTION_RULE}){stop}")
        print(
            f'  curve: {result.plot} and {result.csv}; set it with ARGS="train.lr={result.suggestion:.1e}" '
            "or in the recipe"
        )
    return 0


def _train_on_executor(args: argparse.Namespace, config, models: list[str], executor_name: str) -> int:
    from pipeline.core.executors import get_executor
    from pipeline.train import train_leaderboard
    from pipeline.train.grid import run_train_grid

    refuse_under_torchrun(f"EXECUTOR={executor_name} runs one job per GPU; it does not combine with GPUS=n (torchrun)")
    executor = get_executor(executor_name, config.executor.settings())
    results = run_train_grid(
        config, models, executor, parse_folds(args.folds), force=args.force, overrides=args.settings, run_name=args.name
    )
    failed = []
    for name, meta, error in results:
        if error:
            failed.append(f"{name}: {error}")
        else:
            print(train_leaderboard(meta))
    for line in failed:
        print(f"failed: {line}; rerun the same command to retry the failed folds", file=sys.stderr)
    return 1 if failed else 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline.train import run_predict, train_leaderboard

    config = load_command_config(args)
    for model in models_to_run(args, config):
        print_on_main(train_leaderboard(run_predict(config, model, overrides=args.settings, name=args.name)))
    return 0


def cmd_pseudo(args: argparse.Namespace) -> int:
    """``make pseudo MODEL=x [TEACHER=] [ROUNDS=n]``: run ``x-pl`` (round r > 1: ``x-pl<r>``), each round taught
    by the ensemble made after the round before (the ensemble stage runs between rounds)."""
    from pipeline.ensemble import run_ensemble
    from pipeline.students.teacher import run_student, student_leaderboard, student_name

    student_commands_run_alone()
    config = load_command_config(args)
    models = models_to_run(args, config)
    if len(models) != 1:
        raise UsageError(f"make pseudo trains one student: give one MODEL (got {','.join(models)})")
    if args.rounds < 1:
        raise UsageError(f"ROUNDS={args.rounds}: give 1 or more rounds")
    if args.rounds > 1 and args.folds:
        raise UsageError(
            "ROUNDS>1 needs every fold of each round (the next round's teacher is an ensemble of it); drop FOLDS="
        )
    for round_ in range(1, args.rounds + 1):
        name = student_name(models[0], "pseudo", args.name, round_)
        if round_ > 1:
            print(
                f"round {round_}: make ensemble with {student_name(models[0], 'pseudo', args.name, round_ - 1)}, "
                f"then {name} taught by it"
            )
            run_ensemble(config)
        meta = run_student(
            config,
            models[0],
            "pseudo",
            args.teacher,
            name,
            parse_folds(args.folds),
            force=args.force,
            overrides=args.settings,
        )
        print(student_leaderboard(meta))
        if meta.status != "finished":
            break
    print("'make ensemble' now blends it with the other runs")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """``make distill STUDENT=y [TEACHER=] [ALPHA=] [T=]``: run ``y-distill``."""
    from pipeline.students.teacher import run_student, student_leaderboard

    student_commands_run_alone()
    config = load_command_config(args)
    if not args.model:
        raise UsageError("name the student: make distill STUDENT=<recipe>, e.g. STUDENT=digits_resnet")
    meta = run_student(
        config,
        args.model,
        "distill",
        args.teacher,
        args.name,
        parse_folds(args.folds),
        force=args.force,
        overrides=args.settings,
    )
    print(student_leaderboard(meta))
    print("'make ensemble' now blends it with the other runs")
    return 0
