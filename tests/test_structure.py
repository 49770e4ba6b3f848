"""The package's shape, as the README's code map promises it: light stages stay torch-free, and no module
reaches into another's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "albumentations", "cv2")


LIGHT_MODULES = ["pipeline.ensemble", "pipeline.store", "pipeline.folds", "pipeline.data", "pipeline.task.tasks",
                 "pipeline.config", "pipeline.blend", "pipeline.task.decision", "pipeline.cli", "pipeline.core.executors"]


def test_blending_and_splitting_do_not_import_torch():
    # one fresh interpreter imports the rooms one by one and names the first that brings a heavy library in
    code = ("import importlib, sys\n"
            f"for name in {LIGHT_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            f"    heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
            "    if heavy:\n"
            "        print(name, 'imported', heavy)\n"
            "        break\n"
            "else:\n"
            "    print('none')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "none", out


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


def test_commands_that_never_train_start_without_torch(small_config):
    # each command may stop for want of runs or files: what matters is what it imported on the way
    code = ("import sys\nfrom pipeline.cli import main\n"
            "for command in ['folds', 'ensemble', 'import-oof', 'clean-run']:\n"
            f"    main([command, '--config', {str(small_config)!r}])\n"
            f"    print('HEAVY', command, sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).stdout
    heavy = [line for line in out.splitlines() if line.startswith("HEAVY")]
    assert heavy == ["HEAVY folds []", "HEAVY ensemble []", "HEAVY import-oof []", "HEAVY clean-run []"], out


def test_training_loads_neither_scikit_learn_nor_albumentations(small_config):
    # about 90 MB resident that a training process does not need: scikit-learn only makes folds,
    # albumentations only runs train.augment steps (the demo config has none)
    from pipeline.cli import main

    assert main(["folds", "--config", str(small_config)]) == 0
    code = ("import sys\nfrom pipeline.cli import main\n"
            f"code = main(['train', '--config', {str(small_config)!r}, '--model', 'digits_resnet', '--folds', '0'])\n"
            "print('LOADED', code, sorted(m for m in ('sklearn', 'albumentations') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "LOADED 0 []" in out.stdout, out.stdout + out.stderr


def test_a_bad_tta_view_still_stops_training_before_any_work(small_config, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["train", "--config", str(small_config), "--model", "digits_resnet", "train.tta=[spin]"]) == 2
    assert "unknown TTA view 'spin'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()
