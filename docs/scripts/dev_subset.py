"""A small slice of a Kaggle-layout image competition (docs/benchmarks.md, "Peak memory").

    python docs/scripts/dev_subset.py <competition folder> <new folder> <train images per class> <test images>

Takes the first images of each class in train.csv order and the first test rows of solution.csv,
copies their JPEG files, and writes train.csv, solution.csv and a sample_submission.csv.
"""

import shutil
import sys
from pathlib import Path

import pandas as pd

source, target, per_class, n_test = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
train = pd.read_csv(source / "train.csv").groupby("label").head(per_class)
test = pd.read_csv(source / "solution.csv").head(n_test)
for split, frame in (("train", train), ("test", test)):
    (target / split).mkdir(parents=True, exist_ok=True)
    for image_id in frame["id"]:
        shutil.copy(source / split / f"{image_id}.jpg", target / split)
train.to_csv(target / "train.csv", index=False)
test.to_csv(target / "solution.csv", index=False)
test.assign(label=train["label"].iloc[0]).to_csv(target / "sample_submission.csv", index=False)
print(f"{target}: {len(train)} train, {len(test)} test images")
