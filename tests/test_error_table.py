"""Every bad input, one row each: exit code 2, one message that names the file or value, nothing under
``folds/``, ``runs/`` or ``submissions/`` changed.

One small competition with its folds and one trained run is built per module; each case works on a copy,
breaks one thing, runs one real command and compares every output file before and after.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import yaml
from conftest import build_small_competition, materialise_template, shrunk_demo_config

from pipeline.cli import main

OUTPUT_FOLDERS = ("folds", "runs", "submissions")


@dataclass
class Workspace:
    """A copy of the template: the competition folder, the config and the outputs."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "comp.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def run(self) -> Path:
        return self.out / "runs" / "comp" / "digits_resnet"

    def train_ids(self) -> list[str]:
        return pd.read_csv(self.data / "train.csv", dtype=str)["id"].tolist()

    def snapshot(self) -> dict[str, str]:
        """Every output file (lock files aside) and its content hash."""
        files = {}
        for folder in OUTPUT_FOLDERS:
            for path in sorted((self.out / folder).rglob("*")):
                if path.is_file() and path.suffix != ".lock":
                    files[str(path.relative_to(self.out))] = hashlib.sha256(path.read_bytes()).hexdigest()
        return files


@pytest.fixture(scope="module")
def template(tmp_path_factory, digits_dir) -> Path:
    """A competition of 60 images, its folds, one trained run and one submission folder."""
    root = tmp_path_factory.mktemp("template")
    build_small_competition(digits_dir, root / "data", n_train=60, n_test=20)
    # data_dir "data" is relative to the config, so each copy of the template finds its own competition
    config = shrunk_demo_config(Path("data"), "@OUT@", {
        "competition": {"name": "comp"}, "train": {"tta": ["identity"]},
        "ensemble": {"optuna_trials": 5, "methods": ["mean", "caruana"]}, "models": ["digits_resnet"]})
    (root / "comp.yaml.in").write_text(yaml.safe_dump(config))
    workspace = _materialise(root, root)
    assert main(["train", "--config", str(workspace.config), "--model", "digits_resnet"]) == 0
    return root


def _materialise(template: Path, target: Path) -> Workspace:
    return Workspace(materialise_template(template, target))


@pytest.fixture()
def workspace(template, tmp_path) -> Workspace:
    return _materialise(template, tmp_path / "ws")


# -- ways to break one thing ----------------------------------------------------------------------

def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with one byte of image data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def decompression_bomb(ws: Workspace) -> None:
    (ws.data / "train" / f"{ws.train_ids()[2]}.png").write_bytes(_png_header(40000, 40000))


def header_only_train_csv(ws: Workspace) -> None:
    (ws.data / "train.csv").write_text("id,label\n")


def sample_with_unknown_class(ws: Workspace) -> None:
    # a probability-per-class sample whose columns name a class the training labels lack
    sample = pd.read_csv(ws.data / "sample_submission.csv", dtype=str)[["id"]]
    for name in [str(i) for i in range(9)] + ["ten"]:
        sample[name] = 0.1
    sample.to_csv(ws.data / "sample_submission.csv", index=False)


def _edit_folds(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Workspace], None]:
    def apply(ws: Workspace) -> None:
        path = ws.out / "folds" / "comp.csv"
        edit(pd.read_csv(path, dtype=str)).to_csv(path, index=False)
    return apply


def _fold_text(frame):
    frame.loc[3, "fold"] = "two"
    return frame


def _one_fold(frame):
    frame["fold"] = "0"
    return frame


def delete_fold_folder(ws: Workspace) -> None:
    shutil.rmtree(ws.run / "fold1")


def delete_best_checkpoint(ws: Workspace) -> None:
    (ws.run / "fold2" / "best.safetensors").unlink()


def _damage(name: str, content: bytes) -> Callable[[Workspace], None]:
    def apply(ws: Workspace) -> None:
        (ws.run / name).write_bytes(content)
    return apply


def _prediction_files(ws: Workspace, edit_oof=None, edit_test=None, oof_name="oof.csv", test_name="test.csv") -> None:
    """OOF and test files as another notebook would write them (from the trained run), then edited."""
    oof = pd.read_parquet(ws.run / "oof.parquet")
    test = pd.read_parquet(ws.run / "test.parquet")
    oof = edit_oof(oof) if edit_oof else oof
    test = edit_test(test) if edit_test else test
    for frame, name in ((oof, oof_name), (test, test_name)):
        frame.to_csv(ws.root / name, index=False)


def _import_args(oof="oof.csv", test="test.csv"):
    return ["import-oof", "--name", "other", "--oof", f"@ROOT@/{oof}", "--test", f"@ROOT@/{test}"]


def _oof_fold_text(frame):
    frame["fold"] = frame["fold"].astype(str)
    frame.loc[1, "fold"] = "one"
    return frame


def _oof_class_text(frame):
    frame["3"] = frame["3"].astype(object)
    frame.loc[1, "3"] = "high"
    return frame


def not_parquet(ws: Workspace) -> None:
    _prediction_files(ws)
    (ws.root / "oof.parquet").write_bytes(b"id,fold\n1,2\n")


def not_csv(ws: Workspace) -> None:
    _prediction_files(ws)
    (ws.root / "oof.csv").write_bytes(bytes(range(256)) * 8)


def nothing(ws: Workspace) -> None:
    return None


def _user_file(name: str) -> Callable[[Workspace], None]:
    def apply(ws: Workspace) -> None:
        folder = ws.out / "submissions" / "comp"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"my own notes\n")
    return apply


def _user_file_after_ensemble(name: str) -> Callable[[Workspace], None]:
    """The pipeline wrote ``name`` once; then the user replaced it with their own file."""
    def apply(ws: Workspace) -> None:
        assert main(["ensemble", "--config", str(ws.config)]) == 0
        (ws.out / "submissions" / "comp" / name).write_bytes(b"my own notes\n")
    return apply


def zoo_file_with_path_name(ws: Workspace) -> None:
    (ws.root / "zoo.yaml").write_text("screen: {epochs: 1}\narchitectures: [digits_resnet, ../../escape]\n")


def folds_not_csv(ws: Workspace) -> None:
    (ws.out / "folds" / "comp.csv").write_bytes(b'id,fold\n"unclosed,1\n')


def teacher_on_other_folds(ws: Workspace) -> None:
    meta = ws.run / "meta.json"
    meta.write_text(meta.read_text().replace('"folds_fingerprint": "', '"folds_fingerprint": "x'))


def delete_fold_test_predictions(ws: Workspace) -> None:
    (ws.run / "fold1" / "test.parquet").unlink()


TRAIN = ["train", "--model", "digits_resnet", "--force"]
PSEUDO_FROM_RUN = ["pseudo", "--model", "digits_resnet", "--teacher", "digits_resnet", "--name", "student"]

# (id, break, command, message): each must exit 2 with the message and change no output file
CASES = [
    ("bomb-train", decompression_bomb, TRAIN, r"too many pixels.*train/digit_\d+\.png"),
    ("bomb-predict", decompression_bomb, ["predict", "--model", "digits_resnet"], r"too many pixels.*digit_\d+\.png"),
    ("header-only-train-csv", header_only_train_csv, ["folds", "--force"], r"train\.csv has no rows"),
    ("header-only-train-csv-train", header_only_train_csv, TRAIN, r"train\.csv has no rows"),
    (
        "sample-unknown-class",
        sample_with_unknown_class,
        ["folds", "--force"],
        r"sample_submission\.csv.*'ten'.*not a class of train\.csv",
    ),
    ("sample-unknown-class-train", sample_with_unknown_class, TRAIN, r"sample_submission\.csv.*'ten'"),
    ("yaml-tag-in-args", nothing, [*TRAIN, "train.lr=!!python/object/apply:os.system [echo]"], r"train\.lr=.*YAML tag"),
    (
        "model-kwargs-unknown",
        nothing,
        [*TRAIN, "train.model_kwargs={wings: 2}"],
        r"train\.model_kwargs.*'wings'.*test_resnet",
    ),
    (
        "pretrained-offline",
        nothing,
        [*TRAIN, "train.pretrained=true"],
        r"could not download.*train\.pretrained=<path to a weights file>.*train\.pretrained=false",
    ),
    (
        "run-name-escape",
        nothing,
        ["train", "--model", "../recipes/digits_resnet"],
        r"'\.\./recipes/digits_resnet'.*one name",
    ),
    ("run-name-absolute", nothing, ["train", "--model", "/tmp/x"], r"'/tmp/x'.*one name"),
    ("competition-name-escape", nothing, ["folds", "competition.name=../../elsewhere"], r"competition\.name"),
    (
        "zoo-name-escape",
        zoo_file_with_path_name,
        ["zoo", "--zoo", "@ROOT@/zoo.yaml"],
        r"MODEL='\.\./\.\./escape'.*one name",
    ),
    (
        "method-name-escape",
        nothing,
        ["ensemble", "ensemble.methods=[mean, ../x]"],
        r"ensemble: unknown blend method '\.\./x'",
    ),
    ("override-key-clash", nothing, [*TRAIN, "train.lr=1e-3", "train.lr.x=2"], r"train\.lr was already set to a value"),
    ("override-empty-key-part", nothing, [*TRAIN, "train..lr=1e-3"], r"'train\.\.lr' has an empty part"),
    ("folds-not-csv", folds_not_csv, TRAIN, r"comp\.csv is not a readable CSV.*make folds FORCE=1"),
    (
        "import-name-escape",
        nothing,
        ["import-oof", "--name", "../x", "--oof", "a.csv", "--test", "b.csv"],
        r"NAME='\.\./x'",
    ),
    ("import-fold-text", lambda ws: _prediction_files(ws, _oof_fold_text), _import_args(), r"oof\.csv.*'fold'.*'one'"),
    (
        "import-class-text",
        lambda ws: _prediction_files(ws, _oof_class_text),
        _import_args(),
        r"oof\.csv.*column '3'.*'high'",
    ),
    ("import-not-parquet", not_parquet, _import_args(oof="oof.parquet"), r"oof\.parquet.*not a parquet file"),
    ("import-not-csv", not_csv, _import_args(), r"oof\.csv.*not a CSV file"),
    ("folds-edited-text", _edit_folds(_fold_text), TRAIN, r"comp\.csv.*fold.*'two'.*make folds FORCE=1"),
    ("folds-edited-one-fold", _edit_folds(_one_fold), TRAIN, r"comp\.csv.*every row is in fold 0.*make folds FORCE=1"),
    (
        "predict-missing-fold",
        delete_fold_folder,
        ["predict", "--model", "digits_resnet"],
        r"digits_resnet.*fold 1.*make train MODEL=digits_resnet FOLDS=1 FORCE=1",
    ),
    (
        "predict-missing-best",
        delete_best_checkpoint,
        ["predict", "--model", "digits_resnet"],
        r"digits_resnet.*fold 2.*make train MODEL=digits_resnet FOLDS=2 FORCE=1",
    ),
    (
        "train-garbage-meta",
        _damage("meta.json", b'{"name": "digi'),
        ["train", "--model", "digits_resnet"],
        r"meta\.json.*damaged.*FORCE=1",
    ),
    (
        "train-garbage-oof",
        _damage("oof.parquet", b"PAR1 garbage"),
        ["train", "--model", "digits_resnet"],
        r"oof\.parquet.*damaged.*make predict MODEL=digits_resnet",
    ),
    ("pseudo-no-ensemble", nothing, ["pseudo", "--model", "digits_resnet"], r"TEACHER=submission.*make ensemble"),
    (
        "pseudo-teacher-missing",
        nothing,
        ["pseudo", "--model", "digits_resnet", "--teacher", "nothere"],
        r"TEACHER=nothere.*make train MODEL=nothere",
    ),
    (
        "pseudo-teacher-other-folds",
        teacher_on_other_folds,
        PSEUDO_FROM_RUN,
        r"teacher run digits_resnet.*other folds.*make train MODEL=digits_resnet FORCE=1",
    ),
    (
        "distill-teacher-fold-missing",
        delete_fold_test_predictions,
        ["distill", "--student", "digits_resnet", "--teacher", "digits_resnet"],
        r"teacher run digits_resnet.*fold 1.*make predict MODEL=digits_resnet",
    ),
    (
        "pseudo-teacher-is-student",
        nothing,
        ["pseudo", "--model", "digits_resnet", "--teacher", "digits_resnet", "--name", "digits_resnet"],
        r"blends digits_resnet, the run this command writes",
    ),
    ("user-png", _user_file("ensemble.png"), ["ensemble"], r"ensemble\.png exists and was not written by the pipeline"),
    (
        "user-leaderboard",
        _user_file("leaderboard.csv"),
        ["ensemble"],
        r"leaderboard\.csv exists and was not written by the pipeline",
    ),
    (
        "user-replaced-submission",
        _user_file_after_ensemble("submission.csv"),
        ["ensemble"],
        r"submission\.csv.*changed since the pipeline wrote it",
    ),
]


@pytest.mark.parametrize("break_input, command, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(workspace, capsys, monkeypatch, break_input, command, message):
    import huggingface_hub.constants

    # no network here either way; offline mode fails the download at once instead of after five retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    break_input(workspace)
    before = workspace.snapshot()
    capsys.readouterr()
    command = [part.replace("@ROOT@", str(workspace.root)) for part in command]
    code = main([command[0], "--config", str(workspace.config), *command[1:]])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    assert re.search(message, captured.err, flags=re.S), captured.err
    assert workspace.snapshot() == before


# -- bad inputs the stages go on with, saying what they left out -------------------------------------


def test_validate_names_a_decompression_bomb(workspace, capsys):
    decompression_bomb(workspace)
    assert main(["validate", "--config", str(workspace.config)]) == 1
    out = capsys.readouterr().out
    assert re.search(r"train images too large\s+error\s+1\s+too many pixels", out), out
    problems = pd.read_csv(next((workspace.out / "validate").rglob("*.csv")), dtype=str)
    bomb = problems[problems["problem"] == "too large"]
    assert bomb["id"].tolist() == [workspace.train_ids()[2]]


def _import_copy(ws: Workspace, name: str = "other") -> None:
    _prediction_files(ws)
    assert (
        main(
            [
                "import-oof",
                "--config",
                str(ws.config),
                "--name",
                name,
                "--oof",
                str(ws.root / "oof.csv"),
                "--test",
                str(ws.root / "test.csv"),
            ]
        )
        == 0
    )


def _logits(ws: Workspace) -> None:
    frame = pd.read_parquet(ws.run / "oof.parquet")
    classes = [c for c in frame.columns if c not in ("id", "fold")]
    frame[classes] = frame[classes] * 7.0 - 3.0
    frame.to_parquet(ws.run / "oof.parquet", index=False)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_damage("meta.json", b'{"name": "digi'), r"unreadable: .*meta\.json is damaged"),
        (_damage("oof.parquet", b"PAR1 garbage"), r"unreadable: .*oof\.parquet is not a parquet file"),
        (_damage("test.parquet", b""), r"unreadable: .*test\.parquet"),
        (_logits, r"unreadable: .*oof\.parquet: values outside \[0, 1\].*not logits"),
    ],
    ids=["garbage-meta", "garbage-oof", "empty-test", "logits"],
)
def test_ensemble_leaves_out_a_damaged_run_and_goes_on(workspace, capsys, damage, reason):
    _import_copy(workspace)
    damage(workspace)
    capsys.readouterr()
    assert main(["ensemble", "--config", str(workspace.config)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"left out digits_resnet: " + reason, out), out
    board = pd.read_csv(workspace.out / "submissions" / "comp" / "leaderboard.csv")
    assert board["submission"].str.rstrip(" *").tolist() == ["single-other"]


def test_an_unexpected_error_is_reported_as_a_bug(workspace, capsys, monkeypatch):
    import pipeline.ensemble

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(pipeline.ensemble, "run_ensemble", broken)
    assert main(["ensemble", "--config", str(workspace.config)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err
    assert re.search(
        r"this is a bug in kfold-ensembler.*python -m pipeline ensemble --config .*comp\.yaml.*"
        r"python 3\.\d+\.\d+.*torch \d",
        err,
    ), err
