"""A competition folder in Kaggle's layout: read, check, and serve decoded images (torch-free: the training
package wraps the store in a Dataset, :mod:`pipeline.train.dataset`).

Layout (names set in the competition config)::

    <data_dir>/train.csv              id, label[, group columns ...]
    <data_dir>/sample_submission.csv  id, then the target column or one column per class
    <data_dir>/train/{id}.png         one image per row of train.csv
    <data_dir>/test/{id}.png          one image per row of sample_submission.csv
    <data_dir>/solution.csv           optional: test labels, read only by the scorer
    <data_dir>/test.csv               optional: test rows' metadata (same ids as the sample submission)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline.config import Config
from pipeline.core.errors import PipelineError
from pipeline.core.report import progress_bar
from pipeline.task.tasks import Targets, TaskError, get_task


class DataError(PipelineError, ValueError):
    """The competition data is not usable; the message names the file, row or value.

    ``problems`` lists every problem found, one sentence each (the message joins them).
    """

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


@dataclass
class Competition:
    """The parsed competition: tables, targets, image paths.

    ``classes`` names the prediction columns (the class names for multiclass; see
    :mod:`pipeline.task.tasks` for the other tasks) and ``y`` holds the task's targets;
    both come from ``targets``.
    """

    train: pd.DataFrame
    sample_submission: pd.DataFrame
    targets: Targets
    train_paths: list[Path]
    test_paths: list[Path]
    id_column: str
    target_column: str
    task: str = "multiclass"
    solution: pd.DataFrame | None = None
    solution_y: np.ndarray | None = None     # the solution's targets in sample-submission order
    test_table: pd.DataFrame | None = None

    @property
    def classes(self) -> list[str]:
        return self.targets.columns

    @property
    def y(self) -> np.ndarray:
        return self.targets.y

    @property
    def train_ids(self) -> np.ndarray:
        return self.train[self.id_column].astype(str).to_numpy()

    @property
    def test_ids(self) -> np.ndarray:
        return self.sample_submission[self.id_column].astype(str).to_numpy()

    def solution_labels(self) -> np.ndarray | None:
        """Test targets (shaped as ``y``) in sample-submission order, if a solution file exists."""
        return self.solution_y


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{what} {path} does not exist")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from None


def _missing_columns(frame: pd.DataFrame, columns: list[str], path: Path, config_key: str) -> list[str]:
    missing = [c for c in columns if c not in frame.columns]
    if not missing:
        return []
    return [f"{path} has no column {', '.join(repr(c) for c in missing)} (columns: {list(frame.columns)}); "
            f"fix the file or set {config_key} in the competition config"]


def _id_problems(frame: pd.DataFrame, id_column: str, path: Path) -> list[str]:
    ids = frame[id_column]
    problems = []
    if ids.isna().any():
        rows = (np.flatnonzero(ids.isna().to_numpy()) + 2)[:5].tolist()
        problems.append(f"{path}: empty id in row(s) {rows} (row 1 is the header)")
    dup = ids[ids.duplicated(keep=False) & ids.notna()]
    if len(dup):
        problems.append(
            f"{path}: {dup.nunique()} duplicate ids {sorted(dup.unique().tolist())[:5]}; each id must appear once"
        )
    return problems


def _submission_format_problems(sample: pd.DataFrame, path: Path, comp, targets: Targets) -> list[str]:
    """The sample submission's columns must fit a format of the task: checked now, not after training.

    A dry run of the writer on zero predictions, so the check and the real writer cannot disagree.
    """
    from pipeline.task.metrics import get_metric
    from pipeline.task.tasks import submission_frame

    zeros = np.zeros((len(sample), len(targets.columns)))
    try:
        submission_frame(
            sample, comp.id_column, comp.target_column, comp.task, targets, zeros, needs=get_metric(comp.metric).needs
        )
    except TaskError as exc:
        return [f"{path}: {exc}"]
    return []


def _raise_if(problems: list[str]) -> None:
    if problems:
        head = (
            problems[0]
            if len(problems) == 1
            else f"{len(problems)} problems in the competition data:\n  - " + "\n  - ".join(problems)
        )
        raise DataError(head, problems)


def _image_paths(data_dir: Path, pattern: str, ids: np.ndarray) -> list[Path]:
    root = data_dir.resolve()
    paths = []
    for image_id in ids:
        path = (root / pattern.format(id=image_id)).resolve()
        # an id such as '../../etc/passwd' must not reach outside the competition folder
        if root not in path.parents:
            raise DataError(f"image path for id {image_id!r} ({path}) is outside the competition folder {root}")
        paths.append(path)
    return paths


# PIL refuses to decode an image whose header claims over twice Image.MAX_IMAGE_PIXELS (a "decompression bomb")
TOO_MANY_PIXELS = (
    f"too many pixels (header over {2 * Image.MAX_IMAGE_PIXELS:,} pixels: a decompression bomb, "
    "or an image to shrink before training)"
)


def check_images(paths: list[Path], what: str, show: int = 5) -> None:
    """Every image must exist and open; raise naming the first few bad files.

    ``Image.open`` reads only the header, so this costs little even on large sets;
    a file corrupt past its header is caught when it is decoded.
    """
    missing, unreadable, too_large = [], [], []
    for path in paths:
        if not path.is_file():
            missing.append(path)
            continue
        try:
            with Image.open(path) as image:
                image.size  # noqa: B018 - forces the header parse
        except Image.DecompressionBombError:
            too_large.append(path)
        except (UnidentifiedImageError, OSError):
            unreadable.append(path)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(str(p) for p in missing[:show])})")
    if unreadable:
        problems.append(f"{len(unreadable)} unreadable (e.g. {', '.join(str(p) for p in unreadable[:show])})")
    if too_large:
        problems.append(f"{len(too_large)} with {TOO_MANY_PIXELS} (e.g. {', '.join(str(p) for p in too_large[:show])})")
    if problems:
        raise DataError(f"{what} images: {'; '.join(problems)}. Check competition.{what}_images in the config")


def load_competition(config: Config, check_image_files: bool = True) -> Competition:
    """Read and check the competition tables and image paths.

    Raises
    ------
    DataError
        For a missing file or column, an empty label, a duplicate id, or a missing
        or unreadable image; nothing is written before this passes.
    """
    comp = config.competition
    data_dir = config.data_dir
    train_path = data_dir / comp.train_csv
    sub_path = data_dir / comp.sample_submission
    train = _read_csv(train_path, "train csv")
    sample = _read_csv(sub_path, "sample submission")
    # every table problem is collected first, so one run of `make validate` shows them all
    problems = _missing_columns(train, [comp.id_column], train_path, "competition.id_column")
    problems += _missing_columns(
        train,
        comp.target_names,
        train_path,
        "competition.target_columns" if comp.target_columns else "competition.target_column",
    )
    if config.folds.group_column:
        problems += _missing_columns(train, [config.folds.group_column], train_path, "folds.group_column")
    problems += _missing_columns(sample, [comp.id_column], sub_path, "competition.id_column")
    for frame, path in ((train, train_path), (sample, sub_path)):
        if frame.empty:
            problems.append(f"{path.name} has no rows ({path}: a header only); every row is an image")
    if comp.id_column in train.columns:
        problems += _id_problems(train, comp.id_column, train_path)
    if comp.id_column in sample.columns:
        problems += _id_problems(sample, comp.id_column, sub_path)
    task = get_task(comp.task)
    targets = None
    if all(c in train.columns for c in comp.target_names) and not train.empty:
        try:
            targets = task.parse(train, comp)
        except TaskError as exc:
            problems.append(f"{train_path}: {exc}")
    if targets is not None and comp.id_column in sample.columns:
        problems += _submission_format_problems(sample, sub_path, comp, targets)
    solution, test_table = None, None
    if comp.solution:
        sol_path = data_dir / comp.solution
        solution = _read_csv(sol_path, "solution")
        problems += _missing_columns(solution, [comp.id_column, *comp.target_names], sol_path, "competition.solution")
    if comp.test_csv:
        test_path = data_dir / comp.test_csv
        test_table = _read_csv(test_path, "test csv")
        problems += _missing_columns(test_table, [comp.id_column], test_path, "competition.id_column")
        if comp.id_column in test_table.columns and comp.id_column in sample.columns:
            extra = set(test_table[comp.id_column]) ^ set(sample[comp.id_column])
            if extra:
                problems.append(
                    f"{test_path}: ids differ from {sub_path.name} ({len(extra)} id(s) in one but not the other, e.g. "
                    f"{sorted(extra)[:3]})"
                )
    _raise_if(problems)

    solution_y = None
    if solution is not None:
        sol_path = data_dir / comp.solution
        by_id = solution.set_index(solution[comp.id_column].astype(str))
        test_ids = sample[comp.id_column].astype(str)
        absent = test_ids[~test_ids.isin(by_id.index)]
        if len(absent):
            _raise_if([f"{sol_path}: no row for {len(absent)} test id(s), e.g. {absent.tolist()[:3]}"])
        try:  # parsed once, in the sample's order, with train.csv's classes or grades
            solution_y = task.parse(by_id.loc[test_ids].reset_index(drop=True), comp, labels=targets.labels or None).y
        except TaskError as exc:
            _raise_if([f"{sol_path}: {exc}"])

    competition = Competition(
        train=train,
        sample_submission=sample,
        targets=targets,
        train_paths=_image_paths(data_dir, comp.train_images, train[comp.id_column].to_numpy()),
        test_paths=_image_paths(data_dir, comp.test_images, sample[comp.id_column].to_numpy()),
        id_column=comp.id_column,
        target_column=comp.target_column,
        task=comp.task,
        solution=solution,
        solution_y=solution_y,
        test_table=test_table,
    )
    if check_image_files:
        check_images(competition.train_paths, "train")
        check_images(competition.test_paths, "test")
    return competition


# 16-bit and 32-bit integer modes hold 0..65535: scaled to 0..255 over that full range
_WIDE_INTEGER_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def median_short_side(paths: list[Path], sample: int = 200) -> int:
    """Median shorter side of up to ``sample`` images spread over ``paths`` (headers only, no decoding).

    Returns
    -------
    int
        0 for an empty list.
    """
    step = max(1, len(paths) // sample)
    sides = []
    for path in paths[::step][:sample]:
        with Image.open(path) as image:
            sides.append(min(image.size))
    return int(np.median(sides)) if sides else 0


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Grayscale or RGBA arrays to 3-channel uint8 RGB."""
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    image = np.ascontiguousarray(image, dtype=np.uint8)
    # Pillow hands out read-only arrays: torch.from_numpy warns on them (every predict.py run showed the warning)
    return image if image.flags.writeable else image.copy()


def image_to_rgb(image: Image.Image) -> np.ndarray:
    """Any PIL image mode to RGB uint8 ``(H, W, 3)``.

    Grayscale is repeated over three channels, 16-bit data is scaled to 8 bits over
    its full range, float images are min-max scaled, and every other mode (palette,
    CMYK, RGBA, ...) goes through PIL's own conversion to RGB (alpha is dropped).
    """
    if image.mode in _WIDE_INTEGER_MODES:
        wide = np.asarray(image).astype(np.float32)
        return to_rgb_uint8(np.clip(np.rint(wide / 257.0), 0, 255))
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
        return to_rgb_uint8(np.rint(np.nan_to_num(scaled)))
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    return to_rgb_uint8(np.asarray(image))


def decode_image(path: Path) -> np.ndarray:
    """Decode one image file to RGB uint8 ``(H, W, 3)`` (see :func:`image_to_rgb`)."""
    try:
        with Image.open(path) as image:
            return image_to_rgb(image)
    except Image.DecompressionBombError:
        raise DataError(f"cannot decode image {path}: {TOO_MANY_PIXELS}") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None


class ImageStore:
    """Images by index: decoded once and held in memory when they fit, else decoded on access."""

    def __init__(
        self, paths: list[Path], preload: bool | str = "auto", memory_budget_bytes: int = 2 << 30, desc: str = "images"
    ):
        self.paths = list(paths)
        self._images: list[np.ndarray] | None = None
        if preload == "auto" and self.paths:
            first = decode_image(self.paths[0])
            preload = first.nbytes * len(self.paths) <= memory_budget_bytes
        if preload:
            self._images = [
                decode_image(p) for p in progress_bar(self.paths, desc=f"decode {desc}", leave=False, mininterval=1.0)
            ]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def in_memory(self) -> bool:
        return self._images is not None

    def __getitem__(self, index: int) -> np.ndarray:
        if self._images is not None:
            return self._images[index]
        return decode_image(self.paths[index])
