"""Check a competition folder before any GPU time is spent: ``make validate``.

Every image is opened and fully decoded (in parallel), so missing, zero-byte,
corrupt and truncated files are all found in one pass, along with what the
pipeline will have to convert (16-bit, CMYK, palette, grayscale, alpha), images
smaller than the models' input size, identical files under different ids (and
between train and test: a leak), labels too rare for the number of folds, and
test images or ids that differ from the sample submission.

The result is a table of findings, each ``ok``, ``warning`` or ``error``; errors
make the command exit non-zero, warnings do not. Every problem file is listed in
``<output_dir>/validate/<competition>.csv``.
"""

from __future__ import annotations

import hashlib
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from pipeline.config import Config, resolve_train_config
from pipeline.core import io
from pipeline.core.report import progress_bar
from pipeline.data import TOO_MANY_PIXELS, Competition, DataError, load_competition
from pipeline.task.tasks import get_task

# what the pipeline does with each non-RGB mode (see data.image_to_rgb)
MODE_HANDLING = {
    "L": "grayscale: repeated over 3 channels",
    "LA": "grayscale + alpha: alpha dropped, repeated over 3 channels",
    "1": "1-bit: converted to RGB",
    "P": "palette: converted to RGB",
    "PA": "palette + alpha: converted to RGB",
    "RGBA": "alpha channel dropped",
    "CMYK": "CMYK: converted to RGB",
    "YCbCr": "YCbCr: converted to RGB",
    "I;16": "16-bit: scaled to 8 bits over 0..65535",
    "I;16B": "16-bit: scaled to 8 bits over 0..65535",
    "I;16L": "16-bit: scaled to 8 bits over 0..65535",
    "I": "32-bit integer: scaled to 8 bits over 0..65535",
    "F": "float: min-max scaled to 8 bits per image",
}

# converting these loses nothing: listed, not warned about
LOSSLESS_MODES = ("L",)

SEVERITIES = ("error", "warning", "ok")


@dataclass
class Finding:
    """One line of the validation table."""

    check: str
    severity: str
    count: int
    detail: str
    examples: list[str] = field(default_factory=list)


@dataclass
class ValidationReport:
    findings: list[Finding]
    problems: pd.DataFrame  # one row per problem file: split, id, path, problem

    @property
    def n_errors(self) -> int:
        return sum(f.severity == "error" for f in self.findings)

    @property
    def n_warnings(self) -> int:
        return sum(f.severity == "warning" for f in self.findings)

    def table_rows(self) -> list[dict]:
        rows = []
        for f in sorted(self.findings, key=lambda f: SEVERITIES.index(f.severity)):
            example = f" (e.g. {', '.join(f.examples[:3])})" if f.examples else ""
            rows.append({"check": f.check, "status": f.severity, "count": f.count, "detail": f.detail + example})
        return rows


def inspect_image(path: str) -> dict:
    """Open and fully decode one file; return its status, mode, size and content hash.

    ``status`` is ``ok``, ``missing``, ``empty`` (zero bytes), ``corrupt`` (not an
    image PIL can identify), ``truncated`` (the header reads, the pixels do not) or
    ``too large`` (the header claims more pixels than PIL will decode).
    """
    record = {"path": path, "status": "ok", "mode": "", "width": 0, "height": 0, "md5": "", "error": ""}
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        record["status"] = "missing"
        return record
    except OSError as exc:
        record.update(status="corrupt", error=str(exc))
        return record
    if not raw:
        record["status"] = "empty"
        return record
    record["md5"] = hashlib.md5(raw).hexdigest()
    try:
        with Image.open(path) as image:
            record.update(mode=image.mode, width=image.width, height=image.height)
            image.load()  # decodes the pixels: a truncated file fails here, not at open
    except Image.DecompressionBombError as exc:
        record.update(status="too large", error=str(exc))
    except UnidentifiedImageError as exc:
        record.update(status="corrupt", error=str(exc))
    except (OSError, SyntaxError, ValueError) as exc:
        record.update(status="truncated" if record["width"] else "corrupt", error=str(exc))
    return record


def scan_images(paths: list[Path], desc: str, workers: int | None = None) -> pd.DataFrame:
    """:func:`inspect_image` over every path, in parallel processes for large sets."""
    names = [str(p) for p in paths]
    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(names) < 2000:
        records = [inspect_image(p) for p in progress_bar(names, desc=f"check {desc}", leave=False, mininterval=1.0)]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            records = list(progress_bar(pool.map(inspect_image, names, chunksize=64), total=len(names),
                                        desc=f"check {desc}", leave=False, mininterval=1.0))
    return pd.DataFrame.from_records(records, columns=["path", "status", "mode", "width", "height", "md5", "error"])


def required_input_size(config: Config) -> int | None:
    """The largest input size among the config's model line-up (recipe size, else the model's own)."""
    from pipeline.data.images import input_size

    sizes = [input_size(resolve_train_config(config, recipe)[1], n_classes=2) for recipe in config.models]
    return max(sizes) if sizes else None


def _examples(ids) -> list[str]:
    return [str(i) for i in list(ids)[:3]]


def _image_findings(split: str, ids: np.ndarray, scan: pd.DataFrame,
                    input_size: int | None) -> tuple[list[Finding], list[dict]]:
    findings, problems = [], []
    for status, severity, detail in (
        ("missing", "error", "file does not exist"),
        ("empty", "error", "zero-byte file"),
        ("corrupt", "error", "not an image PIL can read"),
        ("truncated", "error", "header reads, pixels do not (cut-off file)"),
        ("too large", "error", TOO_MANY_PIXELS),
    ):
        bad = np.flatnonzero(scan["status"].to_numpy() == status)
        if len(bad):
            findings.append(Finding(f"{split} images {status}", severity, len(bad), detail, _examples(ids[bad])))
            problems += [
                {
                    "split": split,
                    "id": ids[i],
                    "path": scan["path"].iat[i],
                    "problem": status,
                    "detail": scan["error"].iat[i],
                }
                for i in bad
            ]
    readable = scan["status"].to_numpy() == "ok"
    n_ok = int(readable.sum())
    if n_ok == len(scan):
        findings.append(Finding(f"{split} images", "ok", n_ok, "all open and decode"))
    modes = scan.loc[readable, "mode"].value_counts()
    for mode, count in modes.items():
        if mode == "RGB":
            continue
        rows = np.flatnonzero(readable & (scan["mode"].to_numpy() == mode))
        handling = MODE_HANDLING.get(mode, f"mode {mode}: converted to RGB by PIL")
        severity = "ok" if mode in LOSSLESS_MODES else "warning"
        findings.append(Finding(f"{split} mode {mode}", severity, int(count), handling, _examples(ids[rows])))
    if n_ok:
        short = scan.loc[readable, ["width", "height"]].min(axis=1).to_numpy()
        findings.append(
            Finding(
                f"{split} image sizes",
                "ok",
                n_ok,
                f"shorter side {int(short.min())}..{int(short.max())} px, median {int(np.median(short))}",
            )
        )
        if not input_size:
            findings.append(
                Finding(
                    f"{split} images smaller than input",
                    "ok",
                    0,
                    'not checked: the config lists no models: line-up (make validate ARGS="--image-size N")',
                )
            )
        else:
            small = np.flatnonzero(readable)[short < input_size]
            if not len(small):
                findings.append(
                    Finding(
                        f"{split} images smaller than input",
                        "ok",
                        0,
                        f"every shorter side reaches the models' input size {input_size} px",
                    )
                )
            else:
                findings.append(
                    Finding(
                        f"{split} images smaller than input",
                        "warning",
                        len(small),
                        f"shorter side below the models' input size {input_size} px: they are upscaled",
                        _examples(ids[small]),
                    )
                )
                problems += [
                    {
                        "split": split,
                        "id": ids[i],
                        "path": scan["path"].iat[i],
                        "problem": "smaller than input",
                        "detail": f"{scan['width'].iat[i]}x{scan['height'].iat[i]}",
                    }
                    for i in small
                ]
    return findings, problems


def _duplicate_findings(train_ids, train_scan, labels, test_ids, test_scan) -> tuple[list[Finding], list[dict]]:
    findings, problems = [], []
    train_hash = train_scan["md5"].to_numpy()
    has_hash = train_hash != ""
    groups = pd.Series(np.arange(len(train_hash)))[has_hash].groupby(train_hash[has_hash])
    dup_groups = [rows.to_numpy() for _, rows in groups if len(rows) > 1]
    if dup_groups:
        conflicting = [g for g in dup_groups if len({str(labels[i]) for i in g}) > 1]  # str: multilabel rows too
        n_rows = sum(len(g) for g in dup_groups)
        findings.append(
            Finding(
                "train duplicate images",
                "warning",
                n_rows,
                f"{len(dup_groups)} identical files under different ids, {len(conflicting)} with different labels; "
                "put each group in one fold (folds.strategy=group) or drop copies",
                [" = ".join(str(train_ids[i]) for i in g[:2]) for g in dup_groups[:3]],
            )
        )
        problems += [
            {
                "split": "train",
                "id": train_ids[i],
                "path": train_scan["path"].iat[i],
                "problem": "duplicate image",
                "detail": f"same file as {train_ids[g[0]] if i != g[0] else train_ids[g[1]]}",
            }
            for g in dup_groups
            for i in g
        ]
    else:
        findings.append(Finding("train duplicate images", "ok", 0, "no identical files under different ids"))
    train_hashes = set(train_hash[has_hash])
    leaked = np.flatnonzero(
        np.isin(test_scan["md5"].to_numpy(), list(train_hashes)) & (test_scan["md5"].to_numpy() != "")
    )
    if len(leaked):
        findings.append(
            Finding(
                "test images also in train",
                "warning",
                len(leaked),
                "identical files in train and test: their labels are known",
                _examples(test_ids[leaked]),
            )
        )
        problems += [
            {
                "split": "test",
                "id": test_ids[i],
                "path": test_scan["path"].iat[i],
                "problem": "also in train",
                "detail": "",
            }
            for i in leaked
        ]
    else:
        findings.append(
            Finding("test images also in train", "ok", 0, "no test file identical to a train file (no leak)")
        )
    return findings, problems


def _label_findings(competition: Competition, n_splits: int) -> list[Finding]:
    counts = get_task(competition.task).label_counts(competition.targets)
    if counts is None:  # a continuous target
        y = competition.y
        return [Finding("targets", "ok", len(y), f"values {y.min():.4g}..{y.max():.4g}, mean {y.mean():.4g}")]
    what, each = ("labels", "label") if competition.task == "multilabel" else ("classes", "class")
    findings = [
        Finding(
            "labels",
            "ok",
            len(counts),
            f"{len(counts)} {what}, {int(counts.min())}..{int(counts.max())} images per {each}",
        )
    ]
    rare = counts[counts < n_splits]
    if not len(rare):
        findings.append(
            Finding("rare labels", "ok", 0, f"every {each} has at least {n_splits} images (folds.n_splits)")
        )
    else:
        findings.append(
            Finding(
                "rare labels",
                "warning",
                len(rare),
                f"fewer than {n_splits} images (folds.n_splits): some validation folds will not see them",
                [f"{name} ({count})" for name, count in list(rare.items())[:3]],
            )
        )
    return findings


def _listed_image_findings(split: str, pattern: str, data_dir: Path, ids: np.ndarray, listed_in: str) -> list[Finding]:
    """Image files in the folder that the table does not list (only for ``folder/{id}.ext`` patterns)."""
    match = re.fullmatch(r"(.*/)?\{id\}(\.[A-Za-z0-9]+)", pattern)
    folder = data_dir / (match.group(1) or "") if match else None
    if folder is None or not folder.is_dir():
        return [
            Finding(f"{split} ids", "ok", len(ids), f"not checked: {pattern} is not one folder of <id>.<ext> files")
        ]
    on_disk = {p.name[: -len(match.group(2))] for p in folder.iterdir() if p.name.endswith(match.group(2))}
    extra = sorted(on_disk - set(map(str, ids)))
    if not extra:
        return [Finding(f"{split} ids", "ok", len(ids), f"every image in {folder.name}/ is listed in {listed_in}")]
    severity = "warning"
    detail = f"image files in {folder.name}/ not listed in {listed_in}: they are ignored"
    if split == "test":
        detail = (f"image files in {folder.name}/ not in {listed_in}: they will not be predicted "
                  "(is this the right sample submission?)")
    return [Finding(f"{split} ids", severity, len(extra), detail, extra[:3])]


def validate_competition(config: Config, input_size: int | None = None, workers: int | None = None) -> ValidationReport:
    """Check a competition folder and return every finding.

    Parameters
    ----------
    config : Config
        The loaded competition config.
    input_size : int, optional
        Input size to check image sizes against; default: the largest of the config's model line-up.
    workers : int, optional
        Processes for decoding; default: the number of CPUs (up to 8).

    Returns
    -------
    ValidationReport
        Findings (``error`` / ``warning`` / ``ok``) and one row per problem file.
    """
    try:
        competition = load_competition(config, check_image_files=False)
    except DataError as exc:
        findings = [Finding("tables", "error", 1, problem) for problem in exc.problems]
        return ValidationReport(findings, pd.DataFrame(columns=["split", "id", "path", "problem", "detail"]))
    comp = config.competition
    input_size = input_size or required_input_size(config)
    findings = [
        Finding(
            "tables",
            "ok",
            len(competition.train),
            f"{len(competition.train)} train rows, {len(competition.test_ids)} test rows; ids unique, labels present",
        )
    ]
    problems: list[dict] = []
    scans = {}
    for split, ids, paths in (
        ("train", competition.train_ids, competition.train_paths),
        ("test", competition.test_ids, competition.test_paths),
    ):
        scans[split] = scan_images(paths, split, workers)
        split_findings, split_problems = _image_findings(split, ids, scans[split], input_size)
        findings += split_findings
        problems += split_problems
    dup_findings, dup_problems = _duplicate_findings(
        competition.train_ids, scans["train"], competition.y, competition.test_ids, scans["test"]
    )
    findings += dup_findings + _label_findings(competition, config.folds.n_splits)
    problems += dup_problems
    findings += _listed_image_findings(
        "train", comp.train_images, config.data_dir, competition.train_ids, comp.train_csv
    )
    findings += _listed_image_findings(
        "test", comp.test_images, config.data_dir, competition.test_ids, comp.sample_submission
    )
    return ValidationReport(findings, pd.DataFrame(problems, columns=["split", "id", "path", "problem", "detail"]))


def write_problems(report: ValidationReport, config: Config) -> Path:
    """Write the per-file problem list to ``<output_dir>/validate/<competition>.csv``."""
    return io.write_csv(config.out / "validate" / f"{config.competition.name}.csv", report.problems)
