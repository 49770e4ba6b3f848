"""The built-in demo competitions, made from scikit-learn's bundled handwritten digits.

1,797 real 8x8 scans of digits (UCI optical recognition set), written out as PNG
images in Kaggle's layout. A stratified 20% is held out as the test set; its labels
go to ``solution.csv``, which only the scorer reads (the private leaderboard).

One image set, one competition per task shape (``make demo TASK=<task>``):

==============  ==============================================  ===================
demo            target (column)                                 like
==============  ==============================================  ===================
digits          the digit, 10 classes (``label``)               MNIST
digits_binary   is it a 0? (``is_zero``: 0/1)                   melanoma (AUC)
digits_multi…   space-separated properties (``tags``): even,    planet (F1)
                prime, loop (a closed loop: 0 6 8 9), big (>= 5)
digits_regr…    the digit as a number (``value``)               Pawpularity (RMSE)
digits_ordinal  grade = digit // 2, five grades (``grade``)     retinopathy (QWK)
==============  ==============================================  ===================
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pipeline.core import io

DEMO_IMAGE_SIZE = 32


_PRIMES = {2, 3, 5, 7}
_LOOPS = {0, 6, 8, 9}


def _tags(digit: int) -> str:
    names = [name for name, has in (("even", digit % 2 == 0), ("prime", digit in _PRIMES),
                                    ("loop", digit in _LOOPS), ("big", digit >= 5)) if has]
    return " ".join(names)  # the digit 1 has none: an empty label set, as Kaggle multilabel data has


# task -> (target column, digit -> target value, the sample submission's placeholder)
DEMO_TARGETS = {
    "multiclass": ("label", lambda d: int(d), 0),
    "binary": ("is_zero", lambda d: int(d == 0), 0.5),
    "multilabel": ("tags", _tags, ""),
    "regression": ("value", lambda d: float(d), 0.0),
    "ordinal": ("grade", lambda d: int(d) // 2, 0),
}


def build_digits_competition(
    data_dir: str | Path,
    test_size: float = 0.2,
    seed: int = 0,
    image_size: int = DEMO_IMAGE_SIZE,
    task: str = "multiclass",
) -> Path:
    """Write the digits competition to ``data_dir`` unless it is already complete.

    Parameters
    ----------
    data_dir : path
        Target folder; a finished folder (with its ``.complete`` marker) is left as it is.
    test_size : float
        Share of images held out as the test set.
    seed : int
        Seed of the train/test split.
    image_size : int
        Side of the written PNGs; the 8x8 scans are upscaled with bicubic interpolation.
    task : str
        Which target to write (see the module table); the split is the same for every task.

    Returns
    -------
    Path of the folder.
    """
    data_dir = Path(data_dir)
    marker = data_dir / ".complete"
    if marker.is_file():
        return data_dir
    digits = load_digits()
    # 17 grey levels (0..16) -> 0..255, ink bright on a dark background as in the source
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = digits.target.astype(int)
    ids = np.array([f"digit_{i:04d}" for i in range(len(labels))])
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
    )
    for split, indices in (("train", train_idx), ("test", test_idx)):
        folder = data_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in indices:
            big = cv2.resize(images[i], (image_size, image_size), interpolation=cv2.INTER_CUBIC)
            io.write_with(
                folder / f"{ids[i]}.png", lambda tmp, img=big: Image.fromarray(img, mode="L").save(tmp, format="PNG")
            )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    column, target, placeholder = DEMO_TARGETS[task]
    values = np.array([target(d) for d in labels], dtype=object)
    io.write_csv(data_dir / "train.csv", pd.DataFrame({"id": ids[train_idx], column: values[train_idx]}))
    io.write_csv(data_dir / "sample_submission.csv", pd.DataFrame({"id": ids[test_idx], column: placeholder}))
    io.write_csv(data_dir / "solution.csv", pd.DataFrame({"id": ids[test_idx], column: values[test_idx]}))
    io.write_text(marker, f"{len(train_idx)} train, {len(test_idx)} test\n")
    return data_dir


DEMO_BUILDERS = {"digits": build_digits_competition} | {
    f"digits_{task}": (lambda data_dir, task=task: build_digits_competition(data_dir, task=task))
    for task in DEMO_TARGETS
    if task != "multiclass"
}
