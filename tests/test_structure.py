"""The package's shape, as the README's code map promises it: light stages stay torch-free, and no module
reaches into another's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "timm", "albumentations", "cv2")


LIGHT_MODULES = [
    "pipeline.ensemble",
    "pipeline.store",
    "pipeline.folds",
    "pipeline.data",
    "pipeline.task.tasks",
    "pipeline.config",
    "pipeline.blend",
    "pipeline.task.decision",
    "pipeline.cli",
    "pipeline.core.executors",
]


def test_blending_and_splitting_do_not_import_torch():
    # one fresh interpreter imports the rooms one by one and names the first that brings a heavy library in
    code = (
        "import importlib, sys\n"
        f"for name in {LIGHT_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        f"    heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "    if heavy:\n"
        "        print(name, 'imported', heavy)\n"
        "        break\n"
        "else:\n"
        "    print('none')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "none", out


def _private_imports(path: Path) -> list[str]:
    # relative imports too (``from .base import _helper``): level > 0 stays inside pipeline
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("pipeline")):
            found += [f"{'.' * node.level}{node.module or ''}.{a.name}" for a in node.names if a.name.startswith("_")]
    return found


def test_no_module_imports_another_modules_private_names():
    offenders = {
        str(p.relative_to(ROOT)): names for p in (ROOT / "pipeline").rglob("*.py") if (names := _private_imports(p))
    }
    assert offenders == {}


def test_commands_that_never_train_start_without_torch(small_config):
    # each command may stop for want of runs or files: what matters is what it imported on the way
    code = (
        "import sys\nfrom pipeline.cli import main\n"
        "for command in ['folds', 'ensemble', 'import-oof', 'clean-run']:\n"
        f"    main([command, '--config', {str(small_config)!r}])\n"
        f"    print('HEAVY', command, sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True).stdout
    heavy = [line for line in out.splitlines() if line.startswith("HEAVY")]
    assert heavy == ["HEAVY folds []", "HEAVY ensemble []", "HEAVY import-oof []", "HEAVY clean-run []"], out


def test_training_loads_neither_scikit_learn_nor_albumentations(small_config):
    # about 90 MB resident that a training process does not need: scikit-learn only makes folds,
    # albumentations only runs train.augment steps (the demo config has none)
    from pipeline.cli import main

    assert main(["folds", "--config", str(small_config)]) == 0
    code = (
        "import sys\nfrom pipeline.cli import main\n"
        f"code = main(['train', '--config', {str(small_config)!r}, '--model', 'digits_resnet', '--folds', '0'])\n"
        "print('LOADED', code, sorted(m for m in ('sklearn', 'albumentations') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert "LOADED 0 []" in out.stdout, out.stdout + out.stderr


def test_a_bad_tta_view_still_stops_training_before_any_work(small_config, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["train", "--config", str(small_config), "--model", "digits_resnet", "train.tta=[spin]"]) == 2
    assert "unknown TTA view 'spin'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()


# -- the layers: every import, absolute or relative, at the top of a module or inside a function ---------------------

#: each package (or top-level module) of pipeline/ and the lower layers it may import; the order is the stages'
LAYERS = {
    "core": set(),
    "task": {"core"},
    "blend": {"core", "task"},
    "vision": {"core"},
    "tracking": {"core"},
    "config": {"core", "task", "blend", "vision", "tracking"},
    "data": {"core", "task", "vision", "config"},
    "folds": {"core", "task", "config", "data"},
    "store": {"core", "task", "config", "data", "folds"},
    "train": {"core", "task", "vision", "config", "data", "folds", "store", "tracking"},
    "ensemble": {"core", "task", "blend", "config", "data", "folds", "store", "tracking"},
    "students": {"core", "task", "blend", "vision", "config", "data", "folds", "store", "train", "ensemble",
                 "tracking"},
    "export": {"core", "task", "blend", "vision", "config", "data", "folds", "store", "train", "ensemble",
               "tracking"},
    "zoo": {"core", "task", "vision", "config", "data", "folds", "store", "train", "tracking"},
    "cli": {
        "tracking",
        "core",
        "task",
        "blend",
        "vision",
        "config",
        "data",
        "folds",
        "store",
        "train",
        "ensemble",
        "students",
        "export",
        "zoo",
    },
}


def _module_name(path: Path) -> tuple[str, str]:
    """The dotted name of a file under ROOT and the package its relative imports start from."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        name = ".".join(parts[:-1])
        return name, name
    name = ".".join(parts)
    return name, name.rsplit(".", 1)[0]


def imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, anywhere in it (functions too), relative imports resolved to absolute names.

    ``from a import b`` counts ``a`` and ``a.b`` (``b`` may be a module), so ``from pipeline import blend`` is seen.
    """
    name, package = _module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None


def _package_edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in (ROOT / "pipeline").rglob("*.py"):
        here = _layer(_module_name(path)[0])
        for module in imported_modules(path):
            there = _layer(module)
            if here and there and there != here and (there in LAYERS or (ROOT / "pipeline" / there).exists()):
                edges.setdefault(here, set()).add(there)
    return edges


def test_relative_and_lazy_imports_are_seen():
    # the blend package imports its siblings relatively and config imports vision inside validators
    assert "pipeline.blend.base" in imported_modules(ROOT / "pipeline" / "blend" / "means.py")
    assert "pipeline.task.metrics" in imported_modules(ROOT / "pipeline" / "blend" / "base.py")
    assert "pipeline.vision.views" in imported_modules(ROOT / "pipeline" / "config" / "schema.py")


def test_every_package_is_in_the_layer_table():
    packages = {p.name for p in (ROOT / "pipeline").iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in (ROOT / "pipeline").glob("*.py") if p.stem not in ("__init__", "__main__")}
    assert packages | modules == set(LAYERS)


def test_each_layer_imports_only_the_layers_below_it():
    offenders = {
        layer: sorted(used - LAYERS[layer])
        for layer, used in _package_edges().items()
        if layer in LAYERS and used - LAYERS[layer]
    }
    assert offenders == {}


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph ``edges`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_import_cycle_between_packages():
    assert _cycle(_package_edges()) is None


def test_no_import_cycle_between_modules_at_import_time():
    # top-level imports only: a lazy import inside a function runs after every module has loaded
    names = {_module_name(p)[0]: p for p in (ROOT / "pipeline").rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in names.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                wrapper = ast.Module(body=[node], type_ignores=[])
                for module in _imports_of(wrapper, path):
                    if module in names and module != name and not name.startswith(module + "."):
                        edges.setdefault(name, set()).add(module)
    assert _cycle(edges) is None


def _imports_of(tree: ast.Module, path: Path) -> list[str]:
    name, package = _module_name(path)
    found = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            found += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return found


def test_no_module_over_500_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "pipeline").rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > 500} == {}


def test_the_pure_blend_package_loads_no_config_data_or_images():
    code = (
        "import sys\nimport pipeline.blend\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'PIL' or m.startswith(('pipeline.config', "
        "'pipeline.data', 'pipeline.folds', 'pipeline.store', 'pipeline.vision'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_no_benchmark_code_in_the_package():
    # benchmarks live in benchmarks/, outside the installed package and the exported wheel
    assert sorted(p.name for p in (ROOT / "pipeline").rglob("bench*.py")) == []
    importers = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "pipeline").rglob("*.py")
        if any(m.split(".")[0] == "benchmarks" for m in imported_modules(p))
    }
    assert importers == set()
    assert (ROOT / "benchmarks" / "speed.py").is_file()


def test_blend_exports_only_names_it_has():
    code = "from pipeline.blend import *\nimport pipeline.blend as b\nprint(all(hasattr(b, n) for n in b.__all__))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr
