"""`make kaggle`: the export as a Kaggle dataset with an offline notebook, and the push through the official CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from conftest import build_small_competition, shrunk_demo_config

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.export.kaggle import (KaggleError, KaggleTarget, credentials, kaggle_slug, notebook_cells,
                                    notebook_json, trained_versions, wheel_requirements)
from pipeline.store import RunMeta


@pytest.fixture(scope="module")
def demo(digits_dir, tmp_path_factory):
    """The demo end to end on a tiny competition (2 tiny models x 2 folds, 1 epoch); it ends with make export."""
    base = tmp_path_factory.mktemp("kaggle_demo")
    data = build_small_competition(digits_dir, base / "data", n_train=60, n_test=20)
    path = base / "comp.yaml"
    path.write_text(yaml.safe_dump(shrunk_demo_config(data, base / "out", {"folds": {"n_splits": 2}})))
    assert main(["demo", "--config", str(path)]) == 0
    return path


def _fresh_venv(where: Path) -> Path:
    """A new virtual environment whose only other packages are this one's, as Kaggle's image stands for them.

    Its own site-packages comes first; a ``.pth`` file appends this environment's (torch, numpy, ipykernel, ...
    and also timm, which is why the notebook must show it imported the shipped timm from its own folder).
    """
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    python = where / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "kaggle_image.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def _kernel_for(python: Path, jupyter_path: Path) -> str:
    """A Jupyter kernel spec running ``python`` (found through ``JUPYTER_PATH``)."""
    spec = jupyter_path / "kernels" / "kaggle-stand-in"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "the Kaggle image's stand-in", "language": "python"}))
    return "kaggle-stand-in"


def test_the_notebook_runs_offline_in_a_fresh_environment_and_writes_the_submission(demo, tmp_path, monkeypatch):
    import nbclient
    import nbformat

    config = load_config(demo)
    out = tmp_path / "kaggle"
    assert main(["kaggle", "--config", str(demo), "--out", str(out), "--user", "someone"]) == 0
    dataset, notebook = out / "dataset", out / "notebook"
    wheels = sorted(p.name for p in (dataset / "wheels").glob("*.whl"))
    timm_version = load_meta_versions(config)["timm"]
    assert wheels == [f"timm-{timm_version}-py3-none-any.whl"]
    assert json.loads((dataset / "dataset-metadata.json").read_text())["id"] == "someone/digits-models"
    kernel = json.loads((notebook / "kernel-metadata.json").read_text())
    assert kernel["enable_internet"] is False and kernel["dataset_sources"] == ["someone/digits-models"]
    assert kernel["competition_sources"] == ["digits"] and (notebook / kernel["code_file"]).is_file()
    # the export, as it is: predict.py checks its manifest
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert set(manifest["files"]) <= {str(p.relative_to(dataset)) for p in dataset.rglob("*") if p.is_file()}

    # Kaggle's layout: the dataset and the competition under input/, the notebook writes to working/
    root = tmp_path / "kaggle_root"
    (root / "input").mkdir(parents=True)
    (root / "input" / "digits-models").symlink_to(dataset)
    (root / "input" / "digits").symlink_to(config.data_dir)
    python = _fresh_venv(tmp_path / "fresh")
    kernel_name = _kernel_for(python, tmp_path / "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("KFOLD_KAGGLE_ROOT", str(root))
    for variable in ("PYTHONPATH", "PYTHONHOME"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no package index: only the dataset's wheels can be installed
    book = nbformat.read(notebook / kernel["code_file"], as_version=4)
    nbformat.validate(book)
    nbclient.NotebookClient(book, kernel_name=kernel_name, timeout=600,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    printed = "".join(o.get("text", "") for cell in book.cells for o in cell.get("outputs", []))
    assert "wrote " in printed and "estimated time for the whole test set" in printed
    found = json.loads(printed.split("libraries: ", 1)[1].splitlines()[0].replace("'", '"'))
    assert found["timm"] == timm_version and str(root / "working" / "kfold_site") in found["timm_file"]
    written = (root / "working" / "submission.csv").read_bytes()
    assert written == (config.submissions_dir / "submission.csv").read_bytes()


def load_meta_versions(config) -> dict:
    from pipeline.store import RunLayout, read_meta

    runs = json.loads((config.out / "export" / "digits" / "manifest.json").read_text())["runs"]
    versions = [read_meta(RunLayout(config.runs_dir / run)).versions for run in sorted(runs)]
    assert all(v["timm"] == versions[0]["timm"] for v in versions)
    return versions[0]


def _fake_kaggle_cli(folder: Path, log: Path, dataset_exists: bool) -> None:
    """A ``kaggle`` executable that records its arguments; ``datasets status`` answers as told."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "kaggle"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n"
        f"sys.exit(0 if sys.argv[1:3] != ['datasets', 'status'] else {0 if dataset_exists else 1})\n"
    )
    script.chmod(0o755)


@pytest.mark.parametrize("exists", [False, True])
def test_push_runs_the_official_cli_with_the_run_hashes(demo, tmp_path, monkeypatch, exists, capsys):
    config = load_config(demo)
    log = tmp_path / "calls.jsonl"
    _fake_kaggle_cli(tmp_path / "bin", log, dataset_exists=exists)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    out = tmp_path / "kaggle"
    assert main(["kaggle", "--config", str(demo), "--out", str(out), "--wheels", "", "--push", "--submit"]) == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    runs = json.loads((config.out / "export" / "digits" / "manifest.json").read_text())["runs"]
    message = next(c[c.index("-m") + 1] for c in calls if "-m" in c)
    assert all(f"{name}@{run_hash}" in message for name, run_hash in runs.items())
    first = (["datasets", "version", "-p", str(out / "dataset"), "-m", message, "--dir-mode", "zip"] if exists
             else ["datasets", "create", "-p", str(out / "dataset"), "--dir-mode", "zip"])
    assert calls == [
        ["datasets", "status", "someone/digits-models"],
        first,
        ["kernels", "push", "-p", str(out / "notebook")],
        ["competitions", "submit", "-c", "digits", "-f", str(config.submissions_dir / "submission.csv"), "-m", message],
    ]
    assert "pushed: https://www.kaggle.com/code/someone/digits-inference" in capsys.readouterr().out


@pytest.mark.parametrize(
    "setup, args, message",
    [
        ("no_cli", ["--push"], "needs the official Kaggle CLI: pip install kaggle"),
        ("no_token", ["--push"], "no Kaggle credentials: put the token"),
        ("cli", ["--submit"], "pass PUSH=1 too"),
        ("cli", ["--push", "--submit", "--method", "mean"], "not METHOD=mean"),
        ("cli", ["--time-limit", "soon"], "soon"),
        ("cli", ["--wheels", "torch"], "torch's wheels are gigabytes"),
        ("cli", ["--wheels", "no-such-package-here"], "not installed here and not recorded"),
        ("cli", ["--user", "!!"], "cannot make a Kaggle slug"),
        ("user_folder", [], "was not written by make kaggle"),
    ],
)
def test_refusals_name_the_fix_and_write_nothing(demo, tmp_path, monkeypatch, capsys, setup, args, message):
    config = load_config(demo)
    export = config.out / "export" / "digits"
    before = {p: p.stat().st_mtime_ns for p in export.rglob("*")}
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for variable in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_CONFIG_DIR"):
        monkeypatch.delenv(variable, raising=False)
    if setup == "no_cli":
        monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    else:
        _fake_kaggle_cli(tmp_path / "bin", tmp_path / "calls.jsonl", dataset_exists=False)
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    if setup == "cli":
        monkeypatch.setenv("KAGGLE_USERNAME", "someone")
        monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    out = tmp_path / "kaggle"
    if setup == "user_folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    assert main(["kaggle", "--config", str(demo), "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not out.exists() or [p.name for p in out.iterdir()] == ["notes.txt"]
    assert {p: p.stat().st_mtime_ns for p in export.rglob("*")} == before  # not even the export was redone
    assert not (tmp_path / "calls.jsonl").exists()  # the CLI was never called


@pytest.mark.parametrize(
    "text, slug",
    [("digits", "digits"), ("CIFAR-10 dev", "cifar-10-dev"), ("my_comp__2026", "my-comp-2026"), ("a" * 60, "a" * 50)],
)
def test_slugs_are_what_kaggle_accepts(text, slug):
    assert kaggle_slug(text) == slug


@pytest.mark.parametrize("text", ["", "--", "ab", "é"])
def test_a_name_that_cannot_be_a_slug_is_refused(text):
    with pytest.raises(KaggleError, match="cannot make a Kaggle slug"):
        kaggle_slug(text)


@pytest.mark.parametrize(
    "env, files, expected",
    [
        ({}, {}, (None, False)),
        ({"KAGGLE_USERNAME": "u", "KAGGLE_KEY": "k"}, {}, ("u", True)),
        ({"KAGGLE_API_TOKEN": "t"}, {}, (None, True)),
        ({}, {"kaggle.json": json.dumps({"username": "v", "key": "k"})}, ("v", True)),
        ({}, {"access_token": "t"}, (None, True)),
        ({"KAGGLE_USERNAME": "u"}, {"kaggle.json": json.dumps({"username": "v", "key": "k"})}, ("u", True)),
    ],
)
def test_credentials_as_the_official_cli_reads_them(tmp_path, env, files, expected):
    for name, text in files.items():
        (tmp_path / ".kaggle").mkdir(exist_ok=True)
        (tmp_path / ".kaggle" / name).write_text(text)
    assert credentials(env, home=tmp_path) == expected


def test_runs_trained_with_different_timm_versions_are_refused():
    def meta(name, versions):
        return RunMeta(name=name, status="finished", classes=[0, 1], folds_fingerprint="f", versions=versions)

    metas = {"a": meta("a", {"timm": "1.0.1", "torch": "2.1"}), "b": meta("b", {"timm": "1.0.2", "torch": "2.1"})}
    with pytest.raises(KaggleError, match="different timm versions"):
        trained_versions(metas)
    metas["b"] = meta("b", {"timm": "1.0.1", "torch": "2.2"})
    assert trained_versions(metas) == {"timm": "1.0.1"}  # torch differs: not pinned
    assert wheel_requirements(("timm",), {"timm": "1.0.1"}) == ["timm==1.0.1"]


def test_the_notebook_is_valid_and_needs_no_network():
    import nbformat

    target = KaggleTarget(user="u", competition="comp", dataset="comp-models", notebook="comp-inference",
                          trained={"timm": "1.0.1", "torch": "2.1.0"})
    book = notebook_json(notebook_cells(target, "test", "sample_submission.csv", "test.csv", "9h"))
    nbformat.validate(nbformat.from_dict(book))
    code = "".join("".join(c["source"]) for c in book["cells"] if c["cell_type"] == "code")
    assert '"--no-index"' in code and "--test-csv" in code and "'9h'" in code
    for cell in book["cells"]:
        if cell["cell_type"] == "code":
            compile("".join(cell["source"]), cell["id"], "exec")
    assert "http" not in code and "pip install timm" not in code
