"""Values no check used to stop, one row each through the real command: exit code 2, the message names the value
and the fix, no traceback, nothing under the output folder written.

TTA views sized by inf or nan, an lr-find sweep to inf, an absurd distillation temperature, and the
recipe benchmark's rows file (missing, or a row named as a path).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.cli import main

CASES = [
    ("tta resize(inf)", ["train", "--model", "digits_resnet", "train.tta=[identity, 'resize(inf)']"],
     r"TTA view 'resize\(inf\)': its arguments must be finite numbers"),
    ("tta resize(nan)", ["train", "--model", "digits_resnet", "train.tta=['resize(nan)']"],
     r"TTA view 'resize\(nan\)': its arguments must be finite numbers"),
    ("tta resize(0)", ["train", "--model", "digits_resnet", "train.tta=['resize(0)']"],
     r"TTA view 'resize\(0\)': the resize factor must be above 0 and at most 4"),
    ("tta resize(-2)", ["predict", "--model", "digits_resnet", "train.tta=['resize(-2)']"],
     r"TTA view 'resize\(-2\)': the resize factor must be above 0"),
    ("tta zoom(inf)", ["train", "--model", "digits_resnet", "train.tta=['zoom(inf)']"],
     r"TTA view 'zoom\(inf\)': its arguments must be finite"),
    ("lr-find END_LR=inf", ["lr-find", "--model", "digits_resnet", "--end-lr", "inf"],
     r"lr_find\.end_lr: Input should be a finite number \(got inf\)"),
    ("lr-find START_LR=nan", ["lr-find", "--model", "digits_resnet", "--start-lr", "nan"],
     r"lr_find\.start_lr: Input should be a finite number"),
    ("lr-find start above end", ["lr-find", "--model", "digits_resnet", "--start-lr", "1", "--end-lr", "0.1"],
     r"- lr_find\.start_lr \(1\.0\) must be below lr_find\.end_lr \(0\.1\)"),
    ("a train key of .inf", ["train", "--model", "digits_resnet", "train.lr=.inf"],
     r"train\.lr: Input should be a finite number"),
    ("distill T=1e30", ["distill", "--student", "digits_resnet", "--temperature", "1e30"],
     r"distill\.temperature: Input should be less than or equal to 100 \(got 1e\+30\)"),
]


@pytest.mark.parametrize("args, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_value_out_of_range_is_refused_at_load(small_competition, write_config, tmp_path, capsys, args, message):
    config = write_config(small_competition)
    code = main([args[0], "--config", str(config), *args[1:]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert "lr_find.lr_find" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.safetensors"))
    assert not (tmp_path / "out" / "runs").exists()


def _rows(tmp_path: Path, name: str) -> Path:
    path = tmp_path / "rows.yaml"
    path.write_text(yaml.safe_dump({"rows": [{"name": name, "model": "digits_resnet"}]}))
    return path


BENCH_CASES = [
    ("rows file missing", lambda tmp: tmp / "no_rows.yaml", r"error: ROWS=.*no_rows\.yaml does not exist"),
    ("a row named as a path", lambda tmp: _rows(tmp, "../../x"), r"error: row name='\.\./\.\./x' must be one name"),
]


@pytest.mark.parametrize("rows, message", [c[1:] for c in BENCH_CASES], ids=[c[0] for c in BENCH_CASES])
def test_bench_recipes_ends_on_the_clis_error_path(small_competition, write_config, tmp_path, capsys, rows, message):
    from benchmarks.recipes import main as bench_main

    config = write_config(small_competition, {"competition": {"solution": "solution.csv"}})
    out = tmp_path / "bench" / "recipes.json"
    code = bench_main(["--config", str(config), "--rows", str(rows(tmp_path)), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists() and not (tmp_path / "out" / "runs").exists()
