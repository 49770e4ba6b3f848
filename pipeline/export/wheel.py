"""What an export runs: ``predict.py`` (checks its wheel, then calls :func:`pipeline.export.predict.main`) and the
wheel of this package it imports from.

``predict.py`` verifies the wheel against ``manifest.json`` before importing it, and that ``pipeline`` was
imported from it (not from another install), so a damaged wheel is named rather than failing as a missing module.
"""

from __future__ import annotations

from pathlib import Path

PREDICT_PY = '''"""Predict the test set with the exported ensemble (kfold-ensembler), offline.

    python predict.py --images /kaggle/input/<competition>/test \\
        --sample-submission /kaggle/input/<competition>/sample_submission.csv --out submission.csv

Needs torch, timm, numpy, pandas, Pillow, OpenCV, albumentations, safetensors, pydantic, PyYAML and tqdm (all in
Kaggle's images); scikit-learn / LightGBM only for a stacker blend. The package itself comes with this folder as a
wheel.
"""
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


WHEELS = sorted(HERE.glob("kfold_ensembler-*.whl"))
if len(WHEELS) != 1:
    fail(f"{HERE} holds {len(WHEELS)} kfold_ensembler-*.whl files, not one; copy the folder make export wrote")
WHEEL = WHEELS[0]
try:  # the wheel as make export wrote it: its sha256 is in manifest.json
    expected = json.loads((HERE / "manifest.json").read_text())["files"][WHEEL.name]
except (OSError, ValueError, KeyError, TypeError) as exc:
    fail(f"{HERE / 'manifest.json'} is missing or damaged ({exc}); copy the folder make export wrote")
if hashlib.sha256(WHEEL.read_bytes()).hexdigest() != expected:
    fail(f"{WHEEL} is damaged (its sha256 is not the one manifest.json records); copy the export folder again")
# the exported code first, whatever else is installed: it is the code this export was made and checked with
# (a pure-Python wheel imports from the zip as it is; pip install --no-index <folder>/*.whl works too)
sys.path.insert(0, str(WHEEL))
try:
    import pipeline
    from pipeline.export.predict import main
except ImportError as exc:  # a dependency not installed (torch, timm, ...)
    fail(f"cannot import the exported package from {WHEEL} ({exc}); install what is missing")
if not str(Path(pipeline.__file__)).startswith(str(WHEEL)):
    fail(f"{WHEEL} could not be imported (pipeline came from {pipeline.__file__}); copy the export folder again")

if __name__ == "__main__":
    sys.exit(main(folder=HERE))
'''



#: What the exported predictor imports, as distribution names (OpenCV comes with albumentations). Each is in Kaggle's
#: images, so ``pip install --no-index <folder>/*.whl`` resolves offline; training's own needs (optuna, Ray, the
#: multilabel splitter, ...) are not declared: the export never trains.
PREDICT_REQUIRES = (
    "torch",
    "timm",
    "numpy",
    "pandas",
    "pillow",
    "safetensors",
    "albumentations",
    "pydantic",
    "pyyaml",
    "tqdm",
)


def build_wheel(target: Path) -> Path:
    """This package as a pure-Python wheel in ``target``, written directly (no build tool, no network).

    The wheel holds every module of ``pipeline`` and declares only :data:`PREDICT_REQUIRES`,
    so it installs offline where those are present; files are stored in a fixed order with a
    fixed date, so the same code gives the same bytes.

    Returns
    -------
    Path
        ``kfold_ensembler-<version>-py3-none-any.whl``.
    """
    import base64
    import hashlib
    import zipfile

    import pipeline

    package = Path(pipeline.__file__).resolve().parent
    dist = f"kfold_ensembler-{pipeline.__version__}"
    info = f"{dist}.dist-info"
    files = {
        f"pipeline/{p.relative_to(package).as_posix()}": p.read_bytes()
        for p in sorted(package.rglob("*.py"))
        if "__pycache__" not in p.parts
    }
    requires = "".join(f"Requires-Dist: {name}\n" for name in PREDICT_REQUIRES)
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: kfold-ensembler\nVersion: {pipeline.__version__}\n"
        f"Summary: the offline predictor of an exported kfold-ensembler ensemble\n"
        f"Requires-Python: >=3.10\n{requires}"
    ).encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: kfold-ensembler export\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    files[f"{info}/top_level.txt"] = b"pipeline\n"

    def digest(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{name},{digest(data)},{len(data)}\n" for name, data in files.items()) + f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record.encode()
    path = Path(target) / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, data)
    return path
