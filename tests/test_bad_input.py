"""Each bad input stops before any work: a message naming the file, row or value, exit code 2, outputs untouched."""

from __future__ import annotations

import re

import pandas as pd
import pytest
import timm
from safetensors.torch import save_file

from pipeline.cli import main


def _break_missing_image(data):
    (data / "train" / f"{pd.read_csv(data / 'train.csv', dtype=str)['id'][3]}.png").unlink()


def _break_unreadable_image(data):
    (data / "test" / f"{pd.read_csv(data / 'sample_submission.csv', dtype=str)['id'][0]}.png").write_bytes(b"not a png")


def _edit_train(edit):
    def apply(data):
        frame = pd.read_csv(data / "train.csv", dtype=str)
        edit(frame).to_csv(data / "train.csv", index=False)
    return apply


def _nan_label(frame):
    frame.loc[4, "label"] = None
    return frame


def _duplicate_id(frame):
    frame.loc[5, "id"] = frame.loc[6, "id"]
    return frame


def _escape(frame):
    frame.loc[0, "id"] = "../../../etc/passwd"
    return frame


BAD_DATA = [
    (_break_missing_image, r"train images: 1 missing \(e\.g\. .*\.png\)"),
    (_break_unreadable_image, r"test images: 1 unreadable \(e\.g\. .*\.png\)"),
    (
        _edit_train(lambda f: f.rename(columns={"label": "target"})),
        r"train.csv has no column 'label'.*competition.target_column",
    ),
    (_edit_train(_nan_label), r"empty or NaN label in column 'label' at row\(s\) \[6\]"),
    (_edit_train(_duplicate_id), r"duplicate ids \['digit_"),
    (_edit_train(_escape), r"outside the competition folder"),
]


@pytest.mark.parametrize(
    "break_data, message",
    BAD_DATA,
    ids=["missing-image", "unreadable-image", "missing-column", "nan-label", "duplicate-id", "path-escape"],
)
def test_bad_data_stops_before_work(small_config, small_competition, capsys, break_data, message):
    assert main(["folds", "--config", str(small_config)]) == 0
    folds_csv = next((small_config.parent / "out" / "folds").glob("*.csv"))
    saved = folds_csv.read_bytes()
    break_data(small_competition)
    image_problem = break_data in (_break_missing_image, _break_unreadable_image)
    for command in (["folds", "--force"], ["train", "--model", "digits_resnet"], ["ensemble"]):
        code = main([command[0], "--config", str(small_config), *command[1:]])
        err = capsys.readouterr().err
        if image_problem and command[0] != "train":
            # folds and ensemble read the CSVs only (predictions made elsewhere blend without the images)
            assert not re.search(message, err)
            continue
        assert code == 2
        assert re.search(message, err)
    assert folds_csv.read_bytes() == saved
    assert not (small_config.parent / "out" / "runs").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet5O"], r"unknown model 'resnet5O'; did you mean .*resnet50"),
        (["train.epochs=zero"], r"train.epochs: Input should be a valid integer"),
        (["train.optimiser=sgd"], r"unknown key 'train.optimiser'"),
        (["--model", "digits_resnet", "--folds", "0,7"], r"fold\(s\) \[7\] do not exist"),
    ],
)
def test_bad_command_lines(small_config, capsys, args, message):
    command = ["train", "--config", str(small_config)] + (
        args if args[0].startswith("--") else ["--model", "digits_resnet", *args]
    )
    assert main(command) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (small_config.parent / "out" / "runs").exists()


def test_weights_file_for_another_architecture(small_config, tmp_path, capsys):
    path = tmp_path / "effnet.safetensors"
    save_file(timm.create_model("test_efficientnet").state_dict(), str(path))
    assert main(["train", "--config", str(small_config), "--model", "digits_resnet", f"train.pretrained={path}"]) == 2
    assert "does not match architecture 'test_resnet'" in capsys.readouterr().err
    assert not (small_config.parent / "out" / "runs").exists()
