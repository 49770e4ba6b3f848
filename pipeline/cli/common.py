"""What every sub-command shares: the usage error, the parsing of folds and ``ARGS``, loading the config, and the
refusals under torchrun.
"""

from __future__ import annotations

import argparse

from pipeline.core.errors import PipelineError

DEFAULT_CONFIG = "configs/digits.yaml"
# commands that read no image and train nothing: they import no torch, timm, albumentations or OpenCV
LIGHT_COMMANDS = ("folds", "ensemble", "lb", "import-oof", "clean-run")


class UsageError(PipelineError, ValueError):
    """A command-line value is wrong."""


def parse_folds(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip() != ""]
    except ValueError:
        raise UsageError(f"FOLDS={text!r} must be comma-separated fold numbers, e.g. 0,2") from None


def parse_settings(args: argparse.Namespace) -> dict:
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


def load_command_config(args: argparse.Namespace):
    from pipeline.config import load_config

    # the commands that never train start without torch: the training section's transforms are checked by training
    config = load_config(args.config, args.settings, check_files=False, training=args.command not in LIGHT_COMMANDS)
    if config.competition.demo and not (config.data_dir / config.competition.train_csv).is_file():
        from pipeline.data.demo import DEMO_BUILDERS  # scikit-learn's digits and OpenCV: only to build the demo

        print(f"building the demo competition in {config.data_dir} ...")
        DEMO_BUILDERS[config.competition.demo](config.data_dir)
    from pipeline.config import check_data_files

    check_data_files(config)
    return config


def models_to_run(args: argparse.Namespace, config) -> list[str]:
    """MODEL (one, or several as MODEL=a,b), or else the competition's `models:` line-up; NAME= names one run,
    so it needs one model."""
    models = [m.strip() for m in args.model.split(",") if m.strip()] if args.model else config.models
    if not models:
        raise UsageError(
            f"name a model: make {args.command} MODEL=resnet18 (or list models: in the competition config)"
        )
    if getattr(args, "name", None) and len(models) > 1:
        raise UsageError(
            f"NAME={args.name} names one run; give one model with it: make {args.command} MODEL=<recipe> "
            f"NAME={args.name}"
        )
    return models


def print_on_main(text: str) -> None:
    import os

    # under torchrun every rank runs the command; one copy of each table is enough
    if os.environ.get("RANK", "0") == "0":
        print(text)


def chosen_executor(args: argparse.Namespace, config) -> str:
    """EXECUTOR=, else the config's ``executor.name``."""
    return getattr(args, "executor", None) or config.executor.name


def refuse_under_torchrun(message: str) -> None:
    """A UsageError with ``message`` in a process torchrun started (GPUS=n), for commands that run in one process."""
    import os

    if "RANK" in os.environ:
        raise UsageError(message)


def student_commands_run_alone() -> None:
    refuse_under_torchrun(
        "make pseudo / make distill run in one process; they do not combine with GPUS=n (torchrun) yet"
    )
