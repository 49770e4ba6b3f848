"""Fixtures that shrink the real demo config: same file, smaller data, one epoch, tiny models."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import load_config
from pipeline.data.demo import build_digits_competition

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "configs" / "digits.yaml"


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """The full demo competition, built once per test session (about a second)."""
    return build_digits_competition(tmp_path_factory.mktemp("digits"))


def build_small_competition(source: Path, target: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A stratified sample of the demo competition in the same layout."""
    rng = np.random.default_rng(seed)
    train = pd.read_csv(source / "train.csv", dtype=str)
    picked = train.groupby("label").sample(n_train // 10, random_state=seed)
    picked = picked.sort_values("id")
    sample = pd.read_csv(source / "sample_submission.csv", dtype=str)
    test_ids = np.sort(rng.choice(sample["id"].to_numpy(), size=n_test, replace=False))
    solution = pd.read_csv(source / "solution.csv", dtype=str).set_index("id").loc[test_ids].reset_index()
    (target / "train").mkdir(parents=True)
    (target / "test").mkdir()
    for image_id in picked["id"]:
        shutil.copy(source / "train" / f"{image_id}.png", target / "train")
    for image_id in test_ids:
        shutil.copy(source / "test" / f"{image_id}.png", target / "test")
    picked.to_csv(target / "train.csv", index=False)
    pd.DataFrame({"id": test_ids, "label": "0"}).to_csv(target / "sample_submission.csv", index=False)
    solution.to_csv(target / "solution.csv", index=False)
    return target


@pytest.fixture()
def small_competition(digits_dir, tmp_path) -> Path:
    """60 training images (6 per class) and 20 test images."""
    return build_small_competition(digits_dir, tmp_path / "data", n_train=60, n_test=20)


def shrunk_demo_config(data_dir: Path, output_dir: Path, changes: dict | None = None) -> dict:
    """configs/digits.yaml shrunk for tests (3 folds, 1 epoch, two tiny models); ``changes`` merge in (nested dicts)."""
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    config["competition"]["data_dir"] = str(data_dir)
    config["competition"].pop("demo")
    config["output_dir"] = str(output_dir)
    config["recipes_dir"] = str(ROOT / "configs" / "recipes")
    config["folds"]["n_splits"] = 3
    config["train"].update(epochs=1, batch_size=16, patience=None, tta=["identity", "shift(1,0)"])
    config["ensemble"].update(optuna_trials=20, methods=["mean", "optuna", "caruana"])
    config["models"] = ["digits_resnet", "digits_effnet"]
    for key, value in (changes or {}).items():
        if isinstance(value, dict):
            config.setdefault(key, {}).update(value)
        else:
            config[key] = value
    return config


def materialise_template(template: Path, target: Path) -> Path:
    """A working copy of a template folder (``target``, or the template itself when they are the same).

    The template holds ``comp.yaml.in``, a config whose output folder is written ``@OUT@``; the copy gets
    ``comp.yaml`` with its own ``out/``, so each test writes only beside its own copy.
    """
    if target != template:
        shutil.copytree(template, target)
    text = (template / "comp.yaml.in").read_text().replace("@OUT@", str(target / "out"))
    (target / "comp.yaml").write_text(text)
    return target


@pytest.fixture()
def write_config(tmp_path):
    """Write a shrunk copy of configs/digits.yaml (:func:`shrunk_demo_config`) beside the test's files."""

    def write(data_dir: Path, changes: dict | None = None, name: str = "comp.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(shrunk_demo_config(data_dir, tmp_path / "out", changes)))
        return path

    return write


@pytest.fixture()
def small_config(small_competition, write_config):
    return write_config(small_competition)


@pytest.fixture()
def loaded_small_config(small_config):
    return load_config(small_config)


@contextlib.contextmanager
def interrupted_after_state(n: int = 1, check=None):
    """Inside the block, training stops with KeyboardInterrupt (Ctrl-C, a preempted machine) right after it saves
    its ``n``-th training state; ``check(state)`` sees each state first. Yields the list of saved epochs."""
    from pipeline.train import checkpoint

    real_save, saves = checkpoint.save_state, []

    def save_then_interrupt(path, state):
        real_save(path, state)
        saves.append(state["epoch"])
        if check is not None:
            check(state)
        if len(saves) == n:
            raise KeyboardInterrupt

    checkpoint.save_state = save_then_interrupt
    try:
        yield saves
    finally:
        checkpoint.save_state = real_save


def assert_same_fold_files(a: Path, b: Path, names=("valid.parquet", "test.parquet")) -> None:
    """The fold folders ``a`` and ``b`` hold exactly equal prediction files."""
    for name in names:
        pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name), check_exact=True)
