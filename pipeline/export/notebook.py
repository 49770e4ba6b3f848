"""The inference notebook ``make kaggle`` writes: its cells, as nbformat 4.5 JSON with no outputs.

It installs the dataset's wheels with no package index into a folder of its own, runs the export's ``predict.py``
with that folder first on ``PYTHONPATH``, and writes ``/kaggle/working/submission.csv``. Its one override,
``KFOLD_KAGGLE_ROOT``, is the folder holding ``input/`` and ``working/`` (``/kaggle`` on Kaggle).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.export.kaggle import KaggleTarget

ROOT_VARIABLE = "KFOLD_KAGGLE_ROOT"


def notebook_cells(target: "KaggleTarget", test_dir: str, sample_submission: str, test_csv: str | None,
                   time_limit: str) -> list[tuple[str, str]]:
    """The notebook's cells as ``(kind, source)``: markdown, settings, install, predict, look."""
    trained = {k: target.trained[k] for k in ("timm", "torch") if k in target.trained}
    intro = (
        f"# {target.competition}: kfold-ensembler inference, offline\n\n"
        f"Written by `make kaggle`. It needs no internet: it installs `{', '.join(target.wheels) or 'nothing'}` from "
        f"the dataset `{target.dataset_id}`'s wheels (the versions the models were trained with), then runs the "
        "export's `predict.py` on the competition's test images and writes `/kaggle/working/submission.csv`. "
        f"To run it elsewhere, set `{ROOT_VARIABLE}` to a folder holding `input/` and `working/`."
    )
    settings = f'''import json, os, subprocess, sys
from pathlib import Path

ROOT = Path(os.environ.get("{ROOT_VARIABLE}", "/kaggle"))
INPUT, WORKING = ROOT / "input", ROOT / "working"
TRAINED = {json.dumps(trained)}
TIME_LIMIT = {time_limit!r}  # the notebook's limit; predict.py warns early when its projection is past it


def find_folder(name, holding):
    """The folder of an attached input: INPUT/<name> or deeper (Kaggle's layout has changed), holding a file."""
    for depth in ("", "*/", "*/*/"):
        for folder in sorted(INPUT.glob(depth + name)):
            if (folder / holding).is_file():
                return folder
    found = sorted({{p.parent for p in INPUT.glob("**/" + holding)}})
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(f"no input {{name}} holding {{holding}} under {{INPUT}} ({{len(found)}} candidates): "
                            "attach it in the notebook's Input panel")


DATASET = find_folder({target.dataset!r}, "predict.py")
COMPETITION = find_folder({target.competition!r}, {sample_submission!r})
WORKING.mkdir(parents=True, exist_ok=True)
print("export:", DATASET)
print("competition:", COMPETITION)'''
    install = '''# the wheels in a folder of their own, first on PYTHONPATH for predict.py; the image is untouched
SITE = WORKING / "kfold_site"
wheels = sorted(str(p) for p in (DATASET / "wheels").glob("*.whl"))
if wheels:
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--upgrade", "--quiet",
                    "--disable-pip-version-check", "--target", str(SITE), *wheels], check=True)
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(SITE), os.environ.get("PYTHONPATH", "")) if p))
probe = ("import json, timm, torch; print(json.dumps({'timm': timm.__version__, 'timm_file': timm.__file__, "
         "'torch': torch.__version__.split('+')[0]}))")
FOUND = json.loads(subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True,
                                  check=True).stdout)
print("libraries:", FOUND)
if "timm" in TRAINED and FOUND["timm"] != TRAINED["timm"]:
    raise RuntimeError(f"timm {FOUND['timm']} is imported but the models were trained with {TRAINED['timm']}")
if "torch" in TRAINED and FOUND["torch"] != TRAINED["torch"].split("+")[0]:
    print(f"note: torch {FOUND['torch']} here, {TRAINED['torch']} in training (the image's torch is used)")'''
    arguments = [
        '"--images", str(COMPETITION / ' + repr(test_dir) + ")",
        '"--sample-submission", str(COMPETITION / ' + repr(sample_submission) + ")",
        '"--out", str(WORKING / "submission.csv")',
        '"--time-limit", TIME_LIMIT',
        '"--no-progress"',
    ]
    if test_csv:
        arguments.append('"--test-csv", str(COMPETITION / ' + repr(test_csv) + ")")
    predict = (
        "# predict.py in its own process, its lines shown as they come: the time estimate after the first batches\n"
        'command = [sys.executable, str(DATASET / "predict.py"),\n           '
        + ",\n           ".join(arguments)
        + "]\n"
        "process = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,\n"
        "                           bufsize=1)\n"
        "for line in process.stdout:\n"
        '    print(line, end="", flush=True)\n'
        "if process.wait() != 0:\n"
        '    raise RuntimeError(f"predict.py failed with exit status {process.returncode} (its message is above)")'
    )
    look = 'import pandas as pd\n\npd.read_csv(WORKING / "submission.csv").head()'
    return [("markdown", intro), ("code", settings), ("code", install), ("code", predict), ("code", look)]


def notebook_json(cells: list[tuple[str, str]]) -> dict:
    """An nbformat 4.5 notebook of these cells, no outputs (what ``kaggle kernels push`` uploads)."""
    out = []
    for i, (kind, source) in enumerate(cells):
        cell = {"cell_type": kind, "id": f"cell-{i}", "metadata": {}, "source": source.splitlines(keepends=True)}
        if kind == "code":
            cell.update(execution_count=None, outputs=[])
        out.append(cell)
    return {
        "cells": out,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
