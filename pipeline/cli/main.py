"""Command line: one sub-command per stage. The Makefile calls only this.

python -m pipeline validate --config configs/digits.yaml [--image-size 224]
python -m pipeline folds    --config configs/digits.yaml
python -m pipeline train    --config ... --model resnet18 [--preset strong] [--name r18_seed2] [--seeds 3]
                            [--folds 0,2] [--epochs 3] [--force] [key=value ...]
python -m pipeline lr-find  --config ... --model resnet18 [--preset strong] [--start-lr 1e-7] [--end-lr 10]
                            [--steps 100] [key=value ...]
python -m pipeline predict  --config ... --model resnet18 [--preset strong] [--name r18_seed2] [key=value ...]
python -m pipeline pseudo   --config ... --model resnet18 [--teacher submission|<method>|<run>] [--rounds 1]
                            [--name x] [--folds 0,2]
python -m pipeline distill  --config ... --student resnet18 [--teacher ...] [--alpha 0.5] [--temperature 2] [--name x]
python -m pipeline ensemble --config ...
python -m pipeline lb       --config ... --score 0.912 [--submission submission.csv|<method>]
python -m pipeline export   --config ... [--method submission|<method>] [--out export/<competition>] [--check]
                            [--budget 2h] [--test-images N]
python -m pipeline kaggle   --config ... [--method ...] [--user u] [--wheels timm] [--wheels-from dir] [--gpu]
                            [--time-limit 9h] [--push] [--submit]
python -m pipeline zoo      --config ... [--zoo configs/zoo/default.yaml] [--top 3]
python -m pipeline zoo-promote --config ... --top 3
python -m pipeline models
python -m pipeline clean-run --config ... --name resnet18 [--force]
python -m pipeline demo     --config configs/digits.yaml
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli.common import DEFAULT_CONFIG, parse_settings
from pipeline.cli.stages import (cmd_clean_run, cmd_demo, cmd_ensemble, cmd_export, cmd_folds, cmd_import_oof,
                                 cmd_kaggle, cmd_lb, cmd_models, cmd_validate, cmd_zoo, cmd_zoo_promote)
from pipeline.cli.training import cmd_distill, cmd_lr_find, cmd_predict, cmd_pseudo, cmd_train
from pipeline.core.errors import PipelineError

COMMANDS = {
    "validate": (cmd_validate, "check the competition folder: tables, every image, labels, ids"),
    "folds": (cmd_folds, "make the k-fold split (folds/<competition>.csv)"),
    "train": (cmd_train, "train one model on every fold, predict OOF and test with TTA"),
    "lr-find": (cmd_lr_find, "learning-rate range test on fold 0's training rows: loss curve and a suggested lr"),
    "predict": (cmd_predict, "re-predict OOF and test from saved checkpoints"),
    "pseudo": (cmd_pseudo, "train a student on its folds plus test rows labelled by each fold's teacher"),
    "distill": (cmd_distill, "train a student on the true labels and the fold teacher's soft targets"),
    "ensemble": (cmd_ensemble, "blend the stored runs and write submissions"),
    "lb": (cmd_lb, "record a submission's public-leaderboard score beside the nested CV that chose it"),
    "export": (cmd_export, "the chosen ensemble as an offline inference folder (Kaggle code competitions)"),
    "kaggle": (cmd_kaggle, "the export as a Kaggle dataset with an offline notebook (wheels included); --push uploads"),
    "import-oof": (cmd_import_oof, "add OOF and test predictions made elsewhere to the store"),
    "models": (cmd_models, "list model aliases and recipes"),
    "clean-run": (cmd_clean_run, "delete one run from the store (an unfinished or unwanted run)"),
    "zoo": (cmd_zoo, "screen many architectures quickly; leaderboard and report"),
    "zoo-promote": (cmd_zoo_promote, "train the best TOP screened architectures on every fold"),
    "demo": (cmd_demo, "run every stage on the demo competition"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline", description="k-fold training and ensembling for Kaggle image competitions"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        p.add_argument("--config", default=DEFAULT_CONFIG, help=f"competition YAML (default {DEFAULT_CONFIG})")
        p.add_argument(
            "overrides", nargs="*", help="config overrides as key=value, e.g. train.lr=1e-3 folds.n_splits=3"
        )
        if name in ("train", "predict", "lr-find", "pseudo"):
            p.add_argument("--model", help="recipe name, model alias or timm name (train: several as a,b)")
            p.add_argument(
                "--preset",
                help="a training preset over the recipe, e.g. strong: "
                "configs/recipes/presets/<preset>/<family>.yaml; train, predict and lr-find name the run "
                "<model>-<preset>",
            )
        if name == "distill":
            p.add_argument("--student", dest="model", help="the student's recipe name, model alias or timm name")
        if name in ("train", "predict", "clean-run", "pseudo", "distill"):
            p.add_argument("--name", help="the run's name (default: the recipe's); a folder in runs/<competition>/")
        if name in ("train", "demo", "predict", "pseudo", "distill"):
            p.add_argument("--epochs", type=int, help="override train.epochs")
        if name in ("train", "pseudo", "distill"):
            p.add_argument("--folds", help="comma-separated subset of folds, e.g. 0,2")
        if name in ("pseudo", "distill"):
            p.add_argument(
                "--teacher",
                default="submission",
                help="submission (the blend make ensemble chose), a method of the last ensemble, or a run",
            )
        if name == "pseudo":
            p.add_argument(
                "--rounds", type=int, default=1, help="rounds; round r is taught by the ensemble with round r-1"
            )
        if name == "distill":
            p.add_argument("--alpha", type=float, help="weight of the teacher's soft targets (distill.alpha)")
            p.add_argument("--temperature", type=float, help="softening temperature T (distill.temperature)")
        if name == "train":
            p.add_argument(
                "--seeds", type=int, help="a seed bag: train with seeds seed..seed+N-1 as runs <name>-seed<k>"
            )
        if name == "lr-find":
            p.add_argument(
                "--start-lr", type=float, help="the sweep's first learning rate (default lr_find.start_lr, 1e-7)"
            )
            p.add_argument("--end-lr", type=float, help="the sweep's last learning rate (default lr_find.end_lr, 10)")
            p.add_argument("--steps", type=int, help="the sweep's number of steps (default lr_find.num_steps, 100)")
        if name in ("train", "zoo", "zoo-promote"):
            p.add_argument("--executor", help="where the (run, fold) or zoo jobs run: local (default) or ray")
        if name in ("zoo", "zoo-promote"):
            p.add_argument("--top", type=int, help="train the best TOP screened architectures on every fold")
        if name == "zoo":
            p.add_argument(
                "--zoo", default="configs/zoo/default.yaml", help="zoo file: screen settings and architectures"
            )
        if name == "validate":
            p.add_argument(
                "--image-size", type=int, help="input size to check images against (default: the model line-up's)"
            )
        if name == "lb":
            p.add_argument("--score", type=float, help="the public leaderboard's score of the submission")
            p.add_argument(
                "--submission", help="a file in submissions/<competition>/ or a method (default submission.csv)"
            )
        if name == "import-oof":
            p.add_argument("--name", help="run name for the imported predictions")
            p.add_argument("--oof", help="OOF predictions: id, fold, one column per class (.csv or .parquet)")
            p.add_argument("--test", help="test predictions: id, one column per class (.csv or .parquet)")
        if name == "export":
            p.add_argument(
                "--method", default="submission", help="submission (the chosen one) or a method of the last ensemble"
            )
            p.add_argument("--out", help="the folder to write (default export/<competition>)")
            p.add_argument("--check", action="store_true", help="predict our test images with the export and compare")
        if name in ("export", "kaggle"):
            p.add_argument("--budget", help="the time the forward passes may take on the test set (2h, 90m, 3600s): "
                           "what does not fit is dropped, the blend refitted (default export.budget)")
            p.add_argument("--test-images", type=int, help="how many test images the budget is for (default "
                           "export.test_images, else this test set's)")
        if name == "kaggle":
            p.add_argument(
                "--method", default="submission", help="submission (the chosen one) or a method of the last ensemble"
            )
            p.add_argument("--out", help="the folder to write (default kaggle/<competition>)")
            p.add_argument("--user", help="your Kaggle user name (default: the credentials')")
            p.add_argument("--dataset", help="the dataset's slug (default <competition>-models)")
            p.add_argument("--notebook", help="the notebook's slug (default <competition>-inference)")
            p.add_argument(
                "--wheels", default="timm", help="packages shipped as wheels at their trained versions, a,b ('' none)"
            )
            p.add_argument("--wheels-from", help="a local folder of wheels to take them from (no package index)")
            p.add_argument("--gpu", action="store_true", help="the notebook runs on a GPU")
            p.add_argument("--time-limit", default="9h", help="the notebook's time limit predict.py warns against")
            p.add_argument("--push", action="store_true", help="upload the dataset and notebook with the kaggle CLI")
            p.add_argument("--submit", action="store_true", help="with --push: also submit submission.csv (CSV "
                           "competitions)")
        if name in (
            "kaggle",
            "train",
            "folds",
            "ensemble",
            "demo",
            "import-oof",
            "zoo",
            "zoo-promote",
            "export",
            "clean-run",
            "pseudo",
            "distill",
        ):
            p.add_argument(
                "--force", action="store_true", help="overwrite finished work (clean-run: delete without asking)"
            )
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline.core.report import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging()
    try:
        args.settings = parse_settings(args)
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
        print(
            f"this is a bug in kfold-ensembler, not a problem with your data: please report it with the traceback "
            f"above, the command ({bug_report_context(argv)}) and the versions ({bug_report_versions()})",
            file=sys.stderr,
        )
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
