"""`make validate`: each kind of bad data is reported with its count, errors exit 1 and warnings exit 0."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.data import image_to_rgb


def _ids(data, split="train"):
    table = "train.csv" if split == "train" else "sample_submission.csv"
    return pd.read_csv(data / table, dtype=str)["id"].tolist()


def _image(data, split, k):
    return data / split / f"{_ids(data, split)[k]}.png"


def _missing(data):
    _image(data, "train", 3).unlink()


def _zero_byte(data):
    _image(data, "train", 4).write_bytes(b"")


def _corrupt(data):
    _image(data, "test", 0).write_bytes(b"\x89PNG not really")


def _truncated(data):
    # a noisy image compresses badly, so cutting the file leaves the header and loses pixels
    path = _image(data, "train", 5)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(path)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _sixteen_bit(data):
    for k in (0, 1):
        Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)).save(_image(data, "train", k))


def _cmyk(data):
    Image.new("CMYK", (32, 32), (0, 50, 100, 0)).save(_image(data, "train", 2), format="JPEG")


def _palette(data):
    path = _image(data, "test", 1)
    Image.open(path).convert("RGB").convert("P").save(path)


def _duplicate_ids(data):
    frame = pd.read_csv(data / "train.csv", dtype=str)
    frame.loc[5, "id"] = frame.loc[6, "id"]
    frame.to_csv(data / "train.csv", index=False)


def _rare_label(data):
    frame = pd.read_csv(data / "train.csv", dtype=str)
    drop = frame.index[frame["label"] == "3"][2:]
    frame.drop(index=drop).to_csv(data / "train.csv", index=False)


def _unlisted_test_image(data):
    shutil.copy(_image(data, "test", 0), data / "test" / "digit_9999.png")


def _duplicate_files(data):
    ids = _ids(data)
    shutil.copy(data / "train" / f"{ids[0]}.png", data / "train" / f"{ids[-1]}.png")  # different labels
    shutil.copy(data / "train" / f"{ids[1]}.png", _image(data, "test", 2))  # a test image that is a train image


# (break the data, extra CLI args, expected exit code, {check: (status, count)} that must appear)
CASES = {
    "missing": (_missing, [], 1, {"train images missing": ("error", 1)}),
    "zero-byte": (_zero_byte, [], 1, {"train images empty": ("error", 1)}),
    "corrupt": (_corrupt, [], 1, {"test images corrupt": ("error", 1)}),
    "truncated": (_truncated, [], 1, {"train images truncated": ("error", 1)}),
    "16-bit": (_sixteen_bit, [], 0, {"train mode I;16": ("warning", 2)}),
    "cmyk": (_cmyk, [], 0, {"train mode CMYK": ("warning", 1)}),
    "palette": (_palette, [], 0, {"test mode P": ("warning", 1)}),
    "too-small": (lambda data: None, ["--image-size", "64"], 0, {"train images smaller than input": ("warning", 60)}),
    "duplicate-ids": (_duplicate_ids, [], 1, {"tables": ("error", 1)}),
    "rare-label": (_rare_label, [], 0, {"rare labels": ("warning", 1)}),
    "test-ids": (_unlisted_test_image, [], 0, {"test ids": ("warning", 1)}),
    "duplicate-files": (
        _duplicate_files,
        [],
        0,
        {"train duplicate images": ("warning", 2), "test images also in train": ("warning", 1)},
    ),
}


def _table(out: str) -> dict[str, tuple[str, int]]:
    rows = {}
    for line in out.splitlines():
        match = re.match(r"^(\S.*?)\s{2,}(ok|warning|error)\s+(\d+)\s", line)
        if match:
            rows[match.group(1)] = (match.group(2), int(match.group(3)))
    return rows


def test_clean_competition_passes(small_config, capsys):
    assert main(["validate", "--config", str(small_config)]) == 0
    out = capsys.readouterr().out
    table = _table(out)
    assert table["train images"] == ("ok", 60) and table["test images"] == ("ok", 20)
    assert table["train mode L"] == ("ok", 60)  # the digits are grayscale: listed, not a warning
    # every check has its row, also those that found nothing
    for check in (
        "test images also in train",
        "train duplicate images",
        "rare labels",
        "train images smaller than input",
        "test images smaller than input",
        "train ids",
        "test ids",
        "labels",
    ):
        assert table[check][0] == "ok", f"{check}: {table.get(check)} in\n{out}"
    assert "images per class" in out and "classe " not in out
    assert "0 error(s), 0 warning(s)" in out


@pytest.mark.parametrize("case", list(CASES))
def test_each_bad_data_case_is_reported(small_config, small_competition, capsys, case):
    break_data, extra, exit_code, expected = CASES[case]
    break_data(small_competition)
    assert main(["validate", "--config", str(small_config), *extra]) == exit_code
    out = capsys.readouterr().out
    table = _table(out)
    for check, status_count in expected.items():
        assert table.get(check) == status_count, f"{check}: {table.get(check)} in\n{out}"
    if case == "duplicate-ids":
        assert "duplicate ids ['digit_" in out


def test_problem_files_are_listed(small_config, small_competition, capsys):
    _missing(small_competition)
    _truncated(small_competition)
    assert main(["validate", "--config", str(small_config)]) == 1
    problems = pd.read_csv(small_config.parent / "out" / "validate" / "digits.csv", dtype=str)
    assert sorted(problems["problem"]) == ["missing", "truncated"]
    assert set(problems["id"]) == {_ids(small_competition)[3], _ids(small_competition)[5]}


def test_every_table_problem_is_reported_at_once(small_config, small_competition, capsys):
    frame = pd.read_csv(small_competition / "train.csv", dtype=str)
    frame.loc[5, "id"] = frame.loc[6, "id"]
    frame.loc[7, "label"] = None
    frame.to_csv(small_competition / "train.csv", index=False)
    assert main(["validate", "--config", str(small_config)]) == 1
    table = capsys.readouterr().out
    assert "duplicate ids" in table and "empty or NaN label" in table


@pytest.mark.parametrize(
    "mode, values, expected",
    [
        ("I;16", np.array([[0, 257, 65535]], dtype=np.uint16), [0, 1, 255]),
        ("L", np.array([[0, 7, 255]], dtype=np.uint8), [0, 7, 255]),
        ("RGB", np.array([[[0, 0, 0], [7, 7, 7], [255, 255, 255]]], dtype=np.uint8), [0, 7, 255]),
        ("F", np.array([[-1.0, 0.0, 1.0]], dtype=np.float32), [0, 128, 255]),
    ],
)
def test_modes_convert_to_rgb_uint8(mode, values, expected):
    image = Image.fromarray(values)
    assert image.mode == mode
    rgb = image_to_rgb(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    # writable: a read-only array makes torch.from_numpy warn in the loader
    assert rgb.flags.writeable and rgb.flags.c_contiguous
    assert rgb[0, :, 0].tolist() == expected and (rgb[..., 0] == rgb[..., 2]).all()
