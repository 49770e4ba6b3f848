"""The package's shape, as the README's code map promises it: light stages stay torch-free, and no module
reaches into another's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "albumentations", "cv2")


@pytest.mark.parametrize("module", ["pipeline.ensemble", "pipeline.store", "pipeline.folds", "pipeline.data",
                                    "pipeline.tasks", "pipeline.config", "pipeline.blend", "pipeline.cli"])
def test_blending_and_splitting_do_not_import_torch(module):
    code = f"import sys, {module}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"importing {module} imported {out.strip()}"


def _private_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


def test_no_module_imports_another_modules_private_names():
    offenders = {str(p.relative_to(ROOT)): names for p in (ROOT / "pipeline").rglob("*.py")
                 if (names := _private_imports(p))}
    assert offenders == {}
