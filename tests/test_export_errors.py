"""Bad input to ``make export`` and to the exported ``predict.py``, one row each, through the real commands.

Each case works on a copy of one trained-and-exported workspace, breaks one thing, runs the command and checks:
exit code 2, one ``error:`` line naming the file or field, no traceback, nothing written outside the export
folder, no file of the user's changed, and (predict.py) no submission written.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import yaml
from conftest import build_small_competition, materialise_template, shrunk_demo_config

from pipeline.cli import main


@dataclass
class Workspace:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "comp.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def fitted(self) -> Path:
        return self.root / "out" / "runs" / "comp" / "_ensemble" / "fitted"

    @property
    def export(self) -> Path:
        return self.root / "out" / "export" / "comp"

    def snapshot(self, skip: Path | None = None) -> dict[str, str]:
        """Every file under the workspace (lock files and ``skip`` aside) and its content hash."""
        files = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and path.suffix != ".lock" and not (skip and path.is_relative_to(skip)):
                files[str(path.relative_to(self.root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        return files


@pytest.fixture(scope="module")
def template(tmp_path_factory, digits_dir) -> Path:
    """Two tiny runs on 2 folds, an ensemble (mean, caruana) and its export."""
    root = tmp_path_factory.mktemp("export_errors")
    build_small_competition(digits_dir, root / "data", n_train=60, n_test=20)
    config = shrunk_demo_config(Path("data"), "@OUT@", {
        "competition": {"name": "comp"}, "folds": {"n_splits": 2}, "train": {"tta": ["identity"]},
        "ensemble": {"methods": ["mean", "caruana"]}})
    (root / "comp.yaml.in").write_text(yaml.safe_dump(config))
    ws = _materialise(root, root)
    assert main(["train", "--config", str(ws.config), "--model", "digits_resnet,digits_effnet"]) == 0
    assert main(["ensemble", "--config", str(ws.config)]) == 0
    assert main(["export", "--config", str(ws.config), "--method", "mean"]) == 0
    return root


def _materialise(template: Path, target: Path) -> Workspace:
    return Workspace(materialise_template(template, target))


@pytest.fixture()
def ws(template, tmp_path) -> Workspace:
    return _materialise(template, tmp_path / "ws")


def _edit_json(path_of: Callable[[Workspace], Path], edit: Callable[[dict], None]) -> Callable[[Workspace], None]:
    def apply(ws: Workspace) -> None:
        path = path_of(ws)
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))  # NaN is written as JSON's NaN, as a hand edit could
    return apply


def _mean_record(ws: Workspace) -> Path:
    return ws.fitted / "mean.json"


def _caruana_record(ws: Workspace) -> Path:
    return ws.fitted / "caruana.json"


def _set(path: list, value) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value
    return edit


def _three_models(data: dict) -> None:
    data["blend"]["n_models"] = 3
    data["blend"]["weights"] = [0.4, 0.3, 0.3]


def _escaping_run(data: dict) -> None:
    data["runs"][0]["name"] = "../../../escaped"


def _stale_build(ws: Workspace) -> None:
    # what a kill -9 during make export leaves beside the export folder
    stale = ws.export.parent / ".comp.k1ll3d.tmp" / "models"
    stale.mkdir(parents=True)
    (stale / "fold0.safetensors").write_bytes(b"half a checkpoint")


EXPORT_CASES = [
    ("run name a path", "caruana", _edit_json(_caruana_record, _escaping_run),
     r"caruana\.json: field runs\.0\.name: run name='\.\./\.\./\.\./escaped' must be one name"),
    ("weights nan", "caruana", _edit_json(_caruana_record, _set(["blend", "weights"], [float("nan"), 1.0])),
     r"caruana\.json: field blend\.weights\.0: .*finite"),
    ("weights that cancel", "caruana", _edit_json(_caruana_record, _set(["blend", "weights"], [1000.0, -999.0])),
     r"caruana\.json: .*field blend: .*must be non-negative with a positive sum"),
    ("three models for two runs", "caruana", _edit_json(_caruana_record, _three_models),
     r"caruana\.json: field \(the whole record\): the blend was fitted on 3 models but the record names 2"),
    ("mean of three models", "mean", _edit_json(_mean_record, _set(["blend", "n_models"], 3)),
     r"mean\.json: field blend: weights has 2 entries for n_models=3"),
    ("checksum not a sha256", "mean", _edit_json(_mean_record, _set(["runs", 0, "checkpoints", "0"], "abc")),
     r"field runs\.0\.checkpoints: .*not a sha256"),
    ("submission file a path", "mean", _edit_json(_mean_record, _set(["submission_file"], "../../x.csv")),
     r"field submission_file: submission_file='\.\./\.\./x\.csv' must be one name"),
    ("a key of another version", "mean", _edit_json(_mean_record, _set(["steal"], 1)),
     r"field steal: Extra inputs are not permitted"),
]


@pytest.mark.parametrize("method, spoil, message", [c[1:] for c in EXPORT_CASES], ids=[c[0] for c in EXPORT_CASES])
def test_make_export_refuses_a_bad_fitted_record(ws, capsys, method, spoil, message):
    spoil(ws)
    before = ws.snapshot()
    code = main(["export", "--config", str(ws.config), "--method", method, "--out", str(ws.root / "out" / "new")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and __import__("re").search(message, errors[0]), err
    assert ws.snapshot() == before  # nothing written anywhere: not the new export, not outside it
    assert not (ws.root / "escaped").exists() and not (ws.root.parent / "escaped").exists()


def test_a_killed_exports_temporary_folder_is_removed_by_the_next(ws, capsys):
    _stale_build(ws)
    assert main(["export", "--config", str(ws.config), "--method", "mean", "--force"]) == 0
    assert not list(ws.export.parent.glob(".comp.*.tmp"))
    assert (ws.export / "export.json").is_file()


# -- predict.py --------------------------------------------------------------------------------------------------

def _spec(ws: Workspace) -> Path:
    return ws.export / "export.json"


def _first_checkpoint(ws: Workspace) -> Path:
    return sorted((ws.export / "models").rglob("*.safetensors"))[0]


def _pickled_checkpoint(ws: Workspace) -> None:
    import pickle

    _first_checkpoint(ws).write_bytes(pickle.dumps({"weights": [1, 2, 3]}))


def _checkpoint_elsewhere(data: dict) -> None:
    data["models"][0]["folds"][0]["file"] = "../../../../outside.safetensors"


def _undecodable_image(ws: Workspace) -> None:
    first = sorted((ws.data / "test").glob("*.png"))[3]
    first.write_bytes(b"this is not a PNG at all")


def _damaged_wheel(ws: Workspace) -> None:
    wheel = next(ws.export.glob("*.whl"))
    wheel.write_bytes(wheel.read_bytes()[: wheel.stat().st_size // 2])


def _duplicate_id(ws: Workspace) -> None:
    path = ws.data / "sample_submission.csv"
    sample = pd.read_csv(path, dtype=str)
    pd.concat([sample, sample.iloc[:1]]).to_csv(path, index=False)


def _nothing(ws: Workspace) -> None:
    return None


def _out_folder(ws: Workspace) -> list[str]:
    (ws.root / "taken").mkdir()
    return ["--out", str(ws.root / "taken")]


PREDICT_CASES = [
    ("out is a folder", _nothing, _out_folder, r"--out .*taken is a folder"),
    ("out in a missing folder", _nothing, lambda ws: ["--out", str(ws.root / "nowhere" / "s.csv")],
     r"the folder .*nowhere does not exist"),
    ("batch size -1", _nothing, lambda ws: ["--batch-size", "-1"], r"--batch-size -1: pass at least 1"),
    ("images not a folder", _nothing, lambda ws: ["--images", str(ws.root / "no_images")],
     r"--images .*no_images is not a readable folder"),
    ("an id twice", _duplicate_id, lambda ws: [],
     r"sample_submission\.csv lists id\(s\) \['digit_\d+'\] more than once"),
    ("an undecodable image", _undecodable_image, lambda ws: [],
     r"test image .*\.png cannot be decoded .*replace it with a readable copy"),
    ("a checkpoint replaced by a pickle", _pickled_checkpoint, lambda ws: [],
     r"fold\d\.safetensors is not the checkpoint exported \(its sha256 differs"),
    ("a checkpoint path outside", _edit_json(_spec, _checkpoint_elsewhere), lambda ws: [],
     r"export\.json: field models\.0\.folds\.0\.file: .*must be a relative path inside the export folder"),
    ("blend weights nan", _edit_json(_spec, _set(["ensemble", "blend", "weights"], [float("nan"), 1.0])),
     lambda ws: [], r"export\.json: field ensemble\.blend\.weights\.0: .*finite"),
    ("run name a path", _edit_json(_spec, _set(["models", 0, "run"], "../x")), lambda ws: [],
     r"export\.json: field models\.0\.run: run='\.\./x' must be one name"),
    ("a damaged wheel", _damaged_wheel, lambda ws: [], r"kfold_ensembler-.*\.whl is damaged"),
]


@pytest.mark.parametrize("spoil, extra, message", [c[1:] for c in PREDICT_CASES], ids=[c[0] for c in PREDICT_CASES])
def test_predict_py_refuses_before_predicting(ws, spoil, extra, message):
    spoil(ws)
    args = extra(ws)
    before = ws.snapshot()
    out = ws.root / "submission.csv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    command = [sys.executable, str(ws.export / "predict.py"), "--images", str(ws.data / "test"),
               "--sample-submission", str(ws.data / "sample_submission.csv"), "--out", str(out), "--device", "cpu",
               "--no-progress", *args]
    done = subprocess.run(command, cwd=ws.root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), done.stderr
    assert __import__("re").search(message, errors[0]), errors[0]
    assert "estimated time" not in done.stderr  # refused before the first batch
    assert not out.exists()
    assert ws.snapshot() == before
