"""Command line: one sub-command per stage. The Makefile calls only this.

    python -m pipeline validate --config configs/digits.yaml [--image-size 224]
    python -m pipeline folds    --config configs/digits.yaml
    python -m pipeline train    --config ... --model resnet18 [--preset strong] [--name r18_seed2] [--seeds 3] [--folds 0,2] [--epochs 3] [--force] [key=value ...]
    python -m pipeline lr-find  --config ... --model resnet18 [--preset strong] [--start-lr 1e-7] [--end-lr 10] [--steps 100] [key=value ...]
    python -m pipeline predict  --config ... --model resnet18 [--preset strong] [--name r18_seed2] [key=value ...]
    python -m pipeline pseudo   --config ... --model resnet18 [--teacher submission|<method>|<run>] [--rounds 1] [--name x] [--folds 0,2]
    python -m pipeline distill  --config ... --student resnet18 [--teacher ...] [--alpha 0.5] [--temperature 2] [--name x]
    python -m pipeline ensemble --config ...
    python -m pipeline export   --config ... [--method submission|<method>] [--out export/<competition>] [--check]
    python -m pipeline zoo      --config ... [--zoo configs/zoo/default.yaml] [--top 3]
    python -m pipeline zoo-promote --config ... --top 3
    python -m pipeline models
    python -m pipeline clean-run --config ... --name resnet18 [--force]
    python -m pipeline demo     --config configs/digits.yaml
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipeline.errors import PipelineError

DEFAULT_CONFIG = "configs/digits.yaml"
# commands that read no image and train nothing: they import no torch, timm, albumentations or OpenCV
LIGHT_COMMANDS = ("folds", "ensemble", "import-oof", "clean-run")


class UsageError(PipelineError, ValueError):
    """A command-line value is wrong."""


def _parse_folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip() != ""]
    except ValueError:
        raise UsageError(f"FOLDS={text!r} must be comma-separated fold numbers, e.g. 0,2") from None


def _parse_settings(args: argparse.Namespace) -> dict:
    """``ARGS`` (and ``--epochs``) parsed into nested settings, once per command; every stage receives this dict."""
    from pipeline.config import parse_overrides

    items = list(args.overrides or [])
    if getattr(args, "epochs", None) is not None:
        items.append(f"train.epochs={args.epochs}")
    if getattr(args, "preset", None):
        items.append(f"train.preset={args.preset}")
    for flag, key in (("alpha", "distill.alpha"), ("temperature", "distill.temperature")):
        if getattr(args, flag, None) is not None:
            items.append(f"{key}={getattr(args, flag)}")
    return parse_overrides(items)


def _load(args: argparse.Namespace):
    from pipeline.config import load_config

    # the commands that never train start without torch: the training section's transforms are checked by training
    config = load_config(args.config, args.settings, check_files=False, training=args.command not in LIGHT_COMMANDS)
    if config.competition.demo and not (config.data_dir / config.competition.train_csv).is_file():
        from pipeline.demo_data import DEMO_BUILDERS  # scikit-learn's digits and OpenCV: only to build the demo

        print(f"building the demo competition in {config.data_dir} ...")
        DEMO_BUILDERS[config.competition.demo](config.data_dir)
    from pipeline.config import check_data_files

    check_data_files(config)
    return config


def cmd_folds(args: argparse.Namespace) -> int:
    from pipeline.data import load_competition
    from pipeline.folds import fold_summary, run_folds
    from pipeline.report import format_table

    config = _load(args)
    competition = load_competition(config, check_image_files=False)  # the split reads train.csv only
    folds, fingerprint, status = run_folds(config, competition, force=args.force)
    print(format_table(fold_summary(competition.y, folds, competition.classes, competition.task).to_dict("records"),
                       f"folds: {config.folds.n_splits}-fold {config.folds.strategy}, seed {config.folds.seed}"))
    print(f"{config.folds_csv}: {status} (fingerprint {fingerprint})")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.report import format_table
    from pipeline.validate import validate_competition, write_problems

    config = _load(args)
    report = validate_competition(config, input_size=args.image_size)
    print(format_table(report.table_rows(), f"validate: {config.competition.name} ({config.data_dir})"))
    if len(report.problems):
        print(f"every problem file: {write_problems(report, config)}")
    print(f"{report.n_errors} error(s), {report.n_warnings} warning(s)"
          + ("; fix the errors before training" if report.n_errors else ""))
    return 1 if report.n_errors else 0


def _models_to_run(args: argparse.Namespace, config) -> list[str]:
    """MODEL (one, or several as MODEL=a,b), or else the competition's `models:` line-up; NAME= names one run,
    so it needs one model."""
    models = [m.strip() for m in args.model.split(",") if m.strip()] if args.model else config.models
    if not models:
        raise UsageError(f"name a model: make {args.command} MODEL=resnet18 (or list models: in the competition config)")
    if getattr(args, "name", None) and len(models) > 1:
        raise UsageError(f"NAME={args.name} names one run; give one model with it: make {args.command} MODEL=<recipe> NAME={args.name}")
    return models


def _print_on_main(text: str) -> None:
    import os

    # under torchrun every rank runs the command; one copy of each table is enough
    if os.environ.get("RANK", "0") == "0":
        print(text)


def _executor_name(args: argparse.Namespace, config) -> str:
    """EXECUTOR=, else the config's ``executor.name``."""
    return getattr(args, "executor", None) or config.executor.name


def cmd_train(args: argparse.Namespace) -> int:
    from pipeline.train import run_train, train_leaderboard

    config = _load(args)
    models = _models_to_run(args, config)
    executor = _executor_name(args, config)
    if args.seeds is not None:
        if executor != "local":
            raise UsageError(f"SEEDS= trains its runs one after another; it does not combine with EXECUTOR={executor} yet")
        return _train_seed_bags(args, config, models)
    if executor != "local":
        return _train_on_executor(args, config, models, executor)
    for model in models:
        meta = run_train(config, model, _parse_folds(args.folds), force=args.force, overrides=args.settings,
                         name=args.name)
        _print_on_main(train_leaderboard(meta))
    return 0


def _train_seed_bags(args: argparse.Namespace, config, models: list[str]) -> int:
    """SEEDS=n: each model trained with n seeds as n runs, then the bag's line (each seed's CV, the mean OOF's CV)."""
    from pipeline.config import resolve_train_config
    from pipeline.data import load_competition
    from pipeline.metrics import get_metric
    from pipeline.train import run_train, train_leaderboard
    from pipeline.train.seeds import bag_seeds, bag_summary, seed_overrides, seed_run_names

    competition = load_competition(config)
    for model in models:
        # NAME=, else the run's default name (the recipe's, -<preset> under a preset)
        names = seed_run_names(args.name or resolve_train_config(config, model, args.settings)[0], args.seeds)
        seeds = bag_seeds(config, model, args.settings, args.seeds)
        metas = []
        for name, seed in zip(names, seeds):
            meta = run_train(config, model, _parse_folds(args.folds), force=args.force,
                             overrides=seed_overrides(args.settings, seed), competition=competition, name=name)
            _print_on_main(train_leaderboard(meta))
            metas.append(meta)
        if all(m.status == "finished" for m in metas):
            _print_on_main(bag_summary(metas, config.runs_dir, competition, get_metric(config.competition.metric)).table())
        else:
            _print_on_main(f"seed bag {names[0]}..{names[-1]}: not every fold is trained; the bag is scored once they are")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from pipeline.train.lr_find import SUGGESTION_RULE, lr_find_settings, run_lr_find

    config = _load(args)
    settings = lr_find_settings(config, args.start_lr, args.end_lr, args.steps)
    for model in _models_to_run(args, config):
        result = run_lr_find(config, model, settings, overrides=args.settings)
        stop = f", stopped early at lr {result.lrs[-1]:.2e} (the loss diverged)" if result.stopped_early else ""
        print(f"{result.name}: suggested lr {result.suggestion:.2e} ({SUGGESTION_RULE}){stop}")
        print(f"  curve: {result.plot} and {result.csv}; set it with ARGS=\"train.lr={result.suggestion:.1e}\" "
              "or in the recipe")
    return 0


def _train_on_executor(args: argparse.Namespace, config, models: list[str], executor_name: str) -> int:
    from pipeline.executors import get_executor
    from pipeline.train import train_leaderboard
    from pipeline.train.grid import run_train_grid

    _refuse_under_torchrun(f"EXECUTOR={executor_name} runs one job per GPU; it does not combine with GPUS=n (torchrun)")
    executor = get_executor(executor_name, config.executor.settings())
    results = run_train_grid(config, models, executor, _parse_folds(args.folds), force=args.force,
                             overrides=args.settings, run_name=args.name)
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

    config = _load(args)
    for model in _models_to_run(args, config):
        _print_on_main(train_leaderboard(run_predict(config, model, overrides=args.settings, name=args.name)))
    return 0


def _refuse_under_torchrun(message: str) -> None:
    """A UsageError with ``message`` in a process torchrun started (GPUS=n), for commands that run in one process."""
    import os

    if "RANK" in os.environ:
        raise UsageError(message)


def _student_commands_run_alone() -> None:
    _refuse_under_torchrun("make pseudo / make distill run in one process; they do not combine with GPUS=n (torchrun) yet")


def cmd_pseudo(args: argparse.Namespace) -> int:
    """``make pseudo MODEL=x [TEACHER=] [ROUNDS=n]``: run ``x-pl`` (round r > 1: ``x-pl<r>``), each round taught
    by the ensemble made after the round before (the ensemble stage runs between rounds)."""
    from pipeline.ensemble import run_ensemble
    from pipeline.train.teacher import run_student, student_leaderboard, student_name

    _student_commands_run_alone()
    config = _load(args)
    models = _models_to_run(args, config)
    if len(models) != 1:
        raise UsageError(f"make pseudo trains one student: give one MODEL (got {','.join(models)})")
    if args.rounds < 1:
        raise UsageError(f"ROUNDS={args.rounds}: give 1 or more rounds")
    if args.rounds > 1 and args.folds:
        raise UsageError("ROUNDS>1 needs every fold of each round (the next round's teacher is an ensemble of it); "
                         "drop FOLDS=")
    for round_ in range(1, args.rounds + 1):
        name = student_name(models[0], "pseudo", args.name, round_)
        if round_ > 1:
            print(f"round {round_}: make ensemble with {student_name(models[0], 'pseudo', args.name, round_ - 1)}, "
                  f"then {name} taught by it")
            run_ensemble(config)
        meta = run_student(config, models[0], "pseudo", args.teacher, name, _parse_folds(args.folds), force=args.force,
                           overrides=args.settings)
        print(student_leaderboard(meta))
        if meta.status != "finished":
            break
    print("'make ensemble' now blends it with the other runs")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    """``make distill STUDENT=y [TEACHER=] [ALPHA=] [T=]``: run ``y-distill``."""
    from pipeline.train.teacher import run_student, student_leaderboard

    _student_commands_run_alone()
    config = _load(args)
    if not args.model:
        raise UsageError("name the student: make distill STUDENT=<recipe>, e.g. STUDENT=digits_resnet")
    meta = run_student(config, args.model, "distill", args.teacher, args.name, _parse_folds(args.folds),
                       force=args.force, overrides=args.settings)
    print(student_leaderboard(meta))
    print("'make ensemble' now blends it with the other runs")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from pipeline.ensemble import run_ensemble

    config = _load(args)
    run_ensemble(config, force=args.force)
    return 0


def cmd_import_oof(args: argparse.Namespace) -> int:
    from pipeline.data import load_competition
    from pipeline.folds import read_folds
    from pipeline.metrics import get_metric
    from pipeline.io import safe_name
    from pipeline.store import import_run

    config = _load(args)
    if not (args.name and args.oof and args.test):
        raise UsageError("import-oof needs NAME=<run name> OOF=<oof .csv/.parquet> TEST=<test .csv/.parquet>")
    safe_name(args.name, "NAME")
    competition = load_competition(config, check_image_files=False)
    folds, fingerprint = read_folds(config, competition)
    meta = import_run(config.runs_dir / args.name, Path(args.oof), Path(args.test), competition.train_ids,
                      competition.test_ids, folds, fingerprint, competition.classes,
                      get_metric(config.competition.metric), competition.y, force=args.force,
                      task=competition.task)
    print(f"imported {args.name}: CV {meta.cv:.4f} ({config.competition.metric}); 'make ensemble' now includes it")
    return 0


def cmd_clean_run(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.store import check_run_name, describe_run, remove_run

    config = load_config(args.config, args.settings, check_files=False, training=False)
    if not args.name:
        raise UsageError("clean-run needs NAME=<run>, e.g. make clean-run NAME=resnet18 (make ensemble lists the runs it leaves out)")
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
    from pipeline.models import MODEL_ALIASES
    from pipeline.report import format_table

    print(format_table([{"alias": alias, "timm model": name, "family": family} for alias, (name, family) in MODEL_ALIASES.items()],
                       "model aliases (any timm model name works too)"))
    if Path(args.config).is_file():
        config = load_config(args.config, check_files=False)
        rows = []
        for recipe in recipe_names(config):
            _, cfg = resolve_train_config(config, recipe)
            choice = image_size_choice(config, recipe)
            rows.append({"recipe": recipe, "model": cfg.model, "image size": cfg.image_size or "model's",
                         "size from": choice.source.removesuffix(f" {recipe}.yaml"),
                         "small input": "yes" if cfg.small_input else "", "epochs": cfg.epochs, "lr": cfg.lr,
                         "batch": cfg.batch_size})
        print()
        print(format_table(rows, f"recipes in {config.recipes_path} with {config.source}"))
        if config.train.image_size and config.train.image_size_from == "recipe":
            print(f"the competition's train.image_size {config.train.image_size} applies to recipes without their own; "
                  "set train.image_size_from: competition to use it for every recipe")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from pipeline.zoo import format_leaderboard, promote, run_zoo

    config = _load(args)
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

    config = _load(args)
    if not args.top or args.top < 1:
        raise UsageError("zoo-promote needs TOP=<number of architectures>, e.g. make zoo-promote TOP=3")
    promote(config, read_leaderboard(config), args.top, force=args.force, executor=args.executor)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pipeline.export import run_export

    config = _load(args)
    result = run_export(config, method=args.method, out=Path(args.out) if args.out else None, force=args.force,
                        check=args.check)
    print(f"offline: python {result['out']}/predict.py --images <test folder> --sample-submission <csv> --out submission.csv")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.data import load_competition
    from pipeline.ensemble import run_ensemble
    from pipeline.export import run_export
    from pipeline.folds import run_folds
    from pipeline.train import run_train, train_leaderboard

    started = time.perf_counter()
    config = _load(args)
    competition = load_competition(config)
    _, fingerprint, status = run_folds(config, competition, force=args.force)
    print(f"folds: {config.folds_csv} {status} (fingerprint {fingerprint})")
    for model in config.models:
        print(train_leaderboard(run_train(config, model, force=args.force, overrides=args.settings,
                                          competition=competition)))
    run_ensemble(config, force=args.force, competition=competition)
    # the last step of a code competition: the chosen ensemble as a folder that predicts offline (make export)
    exported = run_export(config, force=args.force)
    print(f"offline: python {exported['out']}/predict.py --images <test folder> --sample-submission <csv> --out submission.csv")
    print(f"demo finished in {time.perf_counter() - started:.0f}s")
    return 0


COMMANDS = {
    "validate": (cmd_validate, "check the competition folder: tables, every image, labels, ids"),
    "folds": (cmd_folds, "make the k-fold split (folds/<competition>.csv)"),
    "train": (cmd_train, "train one model on every fold, predict OOF and test with TTA"),
    "lr-find": (cmd_lr_find, "learning-rate range test on fold 0's training rows: loss curve and a suggested lr"),
    "predict": (cmd_predict, "re-predict OOF and test from saved checkpoints"),
    "pseudo": (cmd_pseudo, "train a student on its folds plus test rows labelled by each fold's teacher"),
    "distill": (cmd_distill, "train a student on the true labels and the fold teacher's soft targets"),
    "ensemble": (cmd_ensemble, "blend the stored runs and write submissions"),
    "export": (cmd_export, "the chosen ensemble as an offline inference folder (Kaggle code competitions)"),
    "import-oof": (cmd_import_oof, "add OOF and test predictions made elsewhere to the store"),
    "models": (cmd_models, "list model aliases and recipes"),
    "clean-run": (cmd_clean_run, "delete one run from the store (an unfinished or unwanted run)"),
    "zoo": (cmd_zoo, "screen many architectures quickly; leaderboard and report"),
    "zoo-promote": (cmd_zoo_promote, "train the best TOP screened architectures on every fold"),
    "demo": (cmd_demo, "run every stage on the demo competition"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description="k-fold training and ensembling for Kaggle image competitions")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"competition YAML (default {DEFAULT_CONFIG})")
        p.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. train.lr=1e-3 folds.n_splits=3")
        if name in ("train", "predict", "lr-find", "pseudo"):
            p.add_argument("--model", help="recipe name, model alias or timm name (train: several as a,b)")
            p.add_argument("--preset", help="a training preset over the recipe, e.g. strong: "
                                            "configs/recipes/presets/<preset>/<family>.yaml; train, predict and lr-find name the run <model>-<preset>")
        if name == "distill":
            p.add_argument("--student", dest="model", help="the student's recipe name, model alias or timm name")
        if name in ("train", "predict", "clean-run", "pseudo", "distill"):
            p.add_argument("--name", help="the run's name (default: the recipe's); a folder in runs/<competition>/")
        if name in ("train", "demo", "predict", "pseudo", "distill"):
            p.add_argument("--epochs", type=int, help="override train.epochs")
        if name in ("train", "pseudo", "distill"):
            p.add_argument("--folds", help="comma-separated subset of folds, e.g. 0,2")
        if name in ("pseudo", "distill"):
            p.add_argument("--teacher", default="submission",
                           help="submission (the blend make ensemble chose), a method of the last ensemble, or a run")
        if name == "pseudo":
            p.add_argument("--rounds", type=int, default=1, help="rounds; round r is taught by the ensemble with round r-1")
        if name == "distill":
            p.add_argument("--alpha", type=float, help="weight of the teacher's soft targets (distill.alpha)")
            p.add_argument("--temperature", type=float, help="softening temperature T (distill.temperature)")
        if name == "train":
            p.add_argument("--seeds", type=int, help="a seed bag: train with seeds seed..seed+N-1 as runs <name>-seed<k>")
        if name == "lr-find":
            p.add_argument("--start-lr", type=float, help="the sweep's first learning rate (default lr_find.start_lr, 1e-7)")
            p.add_argument("--end-lr", type=float, help="the sweep's last learning rate (default lr_find.end_lr, 10)")
            p.add_argument("--steps", type=int, help="the sweep's number of steps (default lr_find.num_steps, 100)")
        if name in ("train", "zoo", "zoo-promote"):
            p.add_argument("--executor", help="where the (run, fold) or zoo jobs run: local (default) or ray")
        if name in ("zoo", "zoo-promote"):
            p.add_argument("--top", type=int, help="train the best TOP screened architectures on every fold")
        if name == "zoo":
            p.add_argument("--zoo", default="configs/zoo/default.yaml", help="zoo file: screen settings and architectures")
        if name == "validate":
            p.add_argument("--image-size", type=int, help="input size to check images against (default: the model line-up's)")
        if name == "import-oof":
            p.add_argument("--name", help="run name for the imported predictions")
            p.add_argument("--oof", help="OOF predictions: id, fold, one column per class (.csv or .parquet)")
            p.add_argument("--test", help="test predictions: id, one column per class (.csv or .parquet)")
        if name == "export":
            p.add_argument("--method", default="submission", help="submission (the chosen one) or a method of the last ensemble")
            p.add_argument("--out", help="the folder to write (default export/<competition>)")
            p.add_argument("--check", action="store_true", help="predict our test images with the export and compare")
        if name in ("train", "folds", "ensemble", "demo", "import-oof", "zoo", "zoo-promote", "export", "clean-run",
                    "pseudo", "distill"):
            p.add_argument("--force", action="store_true", help="overwrite finished work (clean-run: delete without asking)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.report import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        args.settings = _parse_settings(args)
        return args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished folds are kept; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - not one of ours: a bug; show everything needed to report it
        import traceback

        traceback.print_exc()
        print(f"this is a bug in kfold-ensembler, not a problem with your data: please report it with the traceback "
              f"above, the command ({bug_report_context(argv)}) and the versions ({bug_report_versions()})",
              file=sys.stderr)
        return 1


def bug_report_context(argv: list[str] | None) -> str:
    """The command line as typed, for a bug report."""
    import shlex

    return "python -m pipeline " + shlex.join(sys.argv[1:] if argv is None else argv)


def bug_report_versions() -> str:
    """Python and the libraries that matter, from package metadata: works even if one of them fails to import."""
    import platform
    from importlib import metadata

    parts = [f"python {platform.python_version()}"]
    for package in ("kfold-ensembler", "torch", "timm", "albumentations", "numpy", "pandas", "scikit-learn"):
        try:
            parts.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(parts)
