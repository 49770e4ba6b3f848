"""Transfer check of `fine_tune` without downloadable weights (docs/benchmarks.md, "fine_tune transfer check").

    python docs/scripts/cifar_transfer.py [--dev data/cifar10-dev] [--work bench/transfer] [--epochs 10]

1. Splits the CIFAR-10 dev competition by class into two competitions of five classes each (A: the first
   five class names in sorted order, B: the other five), copying their images (the pipeline refuses image
   paths that leave the competition folder, symlinks included).
2. Pretrains timm's test_resnet on A (fold 0's training rows) with the real `train` command, and saves its
   best checkpoint without the classifier as a local weights file (a backbone, as an ImageNet file would be
   for a new task: B's head starts fresh).
3. Trains on B, fold 0, three ways through `benchmarks.recipes` (the same commands a user runs):
   from scratch, a plain full fine-tune of the file, and `fine_tune` (head-only epochs, then layer-wise
   learning-rate decay). Prints fold-0 and private-LB accuracy on B for each.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
# the light recipe every stage of the check shares (docs/benchmarks.md, "Training recipes on CIFAR-10")
LIGHT = {
    "lr": 0.003,
    "label_smoothing": 0.1,
    "tta": ["identity", "hflip"],
    "device_augment": [{"HorizontalFlip": {"p": 0.5}}, {"Affine": {"translate_percent": [-0.125, 0.125], "p": 1.0}}],
}


def split_competition(dev: Path, work: Path) -> dict[str, Path]:
    """Write competitions A and B (train.csv, sample_submission.csv, solution.csv and their images)."""
    train = pd.read_csv(dev / "train.csv", dtype=str)
    solution = pd.read_csv(dev / "solution.csv", dtype=str)
    classes = sorted(train["label"].unique())
    halves = {"a": classes[:5], "b": classes[5:]}
    folders = {}
    for half, keep in halves.items():
        folder = work / f"cifar-{half}"
        folder.mkdir(parents=True, exist_ok=True)
        rows = train[train["label"].isin(keep)]
        hidden = solution[solution["label"].isin(keep)]
        for split, frame in (("train", rows), ("test", hidden)):
            (folder / split).mkdir(exist_ok=True)
            for image_id in frame["id"]:
                if not (folder / split / f"{image_id}.jpg").exists():
                    shutil.copy(dev / split / f"{image_id}.jpg", folder / split)
        rows.to_csv(folder / "train.csv", index=False)
        hidden.to_csv(folder / "solution.csv", index=False)
        hidden.assign(label=keep[0]).to_csv(folder / "sample_submission.csv", index=False)
        folders[half] = folder
    return folders


def write_config(work: Path, half: str, data_dir: Path, epochs: int, pretrained: bool | str = False) -> Path:
    config = {
        "competition": {
            "name": f"cifar-{half}",
            "data_dir": str(data_dir.resolve()),
            "train_images": "train/{id}.jpg",
            "test_images": "test/{id}.jpg",
            "solution": "solution.csv",
            "task": "multiclass",
            "metric": "accuracy",
        },
        "folds": {"n_splits": 5, "seed": 42},
        "train": {"pretrained": pretrained, "image_size": 32, "epochs": epochs, **LIGHT},
        "recipes_dir": str(ROOT / "configs" / "recipes"),
        "output_dir": str((work / "out").resolve()),
    }
    path = work / f"cifar-{half}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dev", default="data/cifar10-dev")
    parser.add_argument("--work", default="bench/transfer")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    work = Path(args.work)
    folders = split_competition(Path(args.dev), work)

    config_a = write_config(work, "a", folders["a"], args.epochs)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "train",
            "--config",
            str(config_a),
            "--model",
            "test_resnet",
            "--name",
            "pretrain",
            "--folds",
            "0",
        ],
        check=True,
    )
    weights = work / "pretrained_a.safetensors"
    state = load_file(str(work / "out" / "runs" / "cifar-a" / "pretrain" / "fold0" / "best.safetensors"))
    backbone = {k: v for k, v in state.items() if not k.startswith("fc.")}  # test_resnet's classifier is `fc`
    save_file(backbone, str(weights))
    print(f"{weights}: {len(backbone)} tensors (classifier dropped: {len(state) - len(backbone)})")

    config_b = write_config(work, "b", folders["b"], args.epochs)
    rows = work / "rows_b.yaml"
    file = str(weights.resolve())
    rows.write_text(
        yaml.safe_dump(
            {
                "folds": [0],
                "rows": [
                    {"name": "scratch", "model": "test_resnet"},
                    {"name": "full_fine_tune", "model": "test_resnet", "set": {"train.pretrained": file}},
                    {
                        "name": "fine_tune",
                        "model": "test_resnet",
                        "set": {"train.pretrained": file, "train.freeze_epochs": 2, "train.layer_decay": 0.75},
                    },
                ],
            },
            sort_keys=False,
        )
    )
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.recipes",
            "--config",
            str(config_b),
            "--rows",
            str(rows),
            "--out",
            str(work / "transfer.json"),
        ],
        check=False,
    ).returncode


if __name__ == "__main__":
    raise SystemExit(main())
