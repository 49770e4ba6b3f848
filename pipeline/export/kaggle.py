"""``make kaggle``: the export folder as a Kaggle dataset, an offline inference notebook, and the push.

What it writes, next to nothing else::

    kaggle/<competition>/
        dataset/                   the Kaggle dataset: the export folder (hard links), and
            wheels/*.whl           the libraries the models need at the versions they were trained with
            dataset-metadata.json  its id and title (``kaggle datasets create -p dataset``)
        notebook/
            <slug>.ipynb           install from wheels/ with --no-index, predict, /kaggle/working/submission.csv
            kernel-metadata.json   internet off, the dataset and the competition attached
        make-kaggle.json           what was built from what (the export's manifest hash, the wheels)

A Kaggle notebook has no internet in a code competition and comes with its own image,
whose timm may differ from the one the models were trained with: the notebook installs
the shipped wheels into a folder of its own (``pip install --no-index --no-deps
--target``) and runs ``predict.py`` with that folder first on ``PYTHONPATH``, so the
image's packages are neither replaced nor used where a wheel was shipped. torch is not
shipped (gigabytes; Kaggle's image has it): the notebook prints both versions when they
differ.

Pushing runs the official ``kaggle`` CLI; without it, or without credentials, nothing is
written and the message says what to install or where the token goes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.core import io
from pipeline.core.errors import PipelineError
from pipeline.export.notebook import ROOT_VARIABLE, notebook_cells, notebook_json  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

#: Shipped by default: model definitions change between timm releases (a checkpoint's keys, a layer's default),
#: so the notebook must build each network with the timm that trained it.
DEFAULT_WHEELS = ("timm",)
KAGGLE_FILE = "make-kaggle.json"  # not kaggle.json: that is the name of the CLI's credentials file
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,48})[a-z0-9]$")


class KaggleError(PipelineError, ValueError):
    """The Kaggle folder cannot be built or pushed; the message names the value or file and the fix."""


@dataclasses.dataclass(frozen=True)
class KaggleTarget:
    """Where the notebook and its dataset live on Kaggle."""

    user: str
    competition: str
    dataset: str
    notebook: str
    gpu: bool = False
    wheels: tuple[str, ...] = DEFAULT_WHEELS
    trained: dict = dataclasses.field(default_factory=dict)

    @property
    def dataset_id(self) -> str:
        return f"{self.user}/{self.dataset}"

    @property
    def notebook_id(self) -> str:
        return f"{self.user}/{self.notebook}"


def kaggle_slug(text: str) -> str:
    """``text`` as a Kaggle slug: lower-case letters, digits and hyphens, 3 to 50 characters.

    Raises
    ------
    KaggleError
        When nothing usable is left (``text`` has no letter or digit) or it is too short.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:50].strip("-")
    if not _SLUG.match(slug):
        raise KaggleError(f"cannot make a Kaggle slug of {text!r} (got {slug!r}): use 3-50 letters, digits or hyphens")
    return slug


def credentials(env: dict | None = None, home: Path | None = None) -> tuple[str | None, bool]:
    """The Kaggle user name the credentials name, and whether any credentials were found.

    The official CLI reads ``KAGGLE_USERNAME``/``KAGGLE_KEY``, ``KAGGLE_API_TOKEN``, or the files
    ``kaggle.json`` / ``access_token`` in ``$KAGGLE_CONFIG_DIR`` (default ``~/.kaggle``); only the first
    and ``kaggle.json`` carry the user name.
    """
    env = os.environ if env is None else env
    folder = Path(env.get("KAGGLE_CONFIG_DIR") or (home or Path.home()) / ".kaggle")
    user = env.get("KAGGLE_USERNAME") or None
    found = bool(user and env.get("KAGGLE_KEY")) or bool(env.get("KAGGLE_API_TOKEN"))
    token_file = folder / "kaggle.json"
    if token_file.is_file():
        try:
            stored = json.loads(token_file.read_text())
        except (OSError, ValueError):
            stored = {}
        user = user or stored.get("username") or None
        found = found or bool(stored.get("key"))
    found = found or (folder / "access_token").is_file()
    return user, found


def trained_versions(metas: dict) -> dict[str, str]:
    """The library versions every run of the export was trained with (``meta.json``'s ``versions``).

    Parameters
    ----------
    metas : dict
        Run name -> its :class:`pipeline.store.RunMeta`.

    Raises
    ------
    KaggleError
        When runs were trained with different timm versions: one notebook installs one.
    """
    versions: dict[str, dict[str, str]] = {}
    for name, meta in metas.items():
        for package, version in (meta.versions or {}).items():
            versions.setdefault(package, {})[name] = version
    timm = versions.get("timm", {})
    if len(set(timm.values())) > 1:
        raise KaggleError(
            f"the exported runs were trained with different timm versions ({timm}); one notebook installs one: "
            "retrain the odd runs with one version, or export a method without them (METHOD=)"
        )
    agreed = {package: set(by_run.values()) for package, by_run in versions.items()}
    return {package: values.pop() for package, values in agreed.items() if len(values) == 1}


def wheel_requirements(packages: tuple[str, ...], trained: dict[str, str]) -> list[str]:
    """``name==version`` for each package to ship: the trained version, else the installed one.

    Raises
    ------
    KaggleError
        For a package that is neither recorded nor installed, or one not worth shipping (torch).
    """
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for package in packages:
        if package in ("torch", "torchvision"):
            raise KaggleError(
                f"--wheels {package}: torch's wheels are gigabytes and Kaggle's image has torch; ship the libraries "
                "whose code defines the models (timm) and leave torch to the image"
            )
        pinned = trained.get(package)
        if pinned is None or pinned == "not installed":
            try:
                pinned = version(package)
            except PackageNotFoundError:
                raise KaggleError(f"--wheels {package}: not installed here and not recorded by the runs") from None
        out.append(f"{package}=={pinned}")
    return out


def download_wheels(requirements: list[str], dest: Path, find_links: Path | None = None) -> list[Path]:
    """``pip download`` the wheels (no dependencies: the image has them) into ``dest``.

    ``find_links`` reads a local folder of wheels with no index (offline machines, tests).

    Raises
    ------
    KaggleError
        When pip cannot get them; the message has pip's last lines and the way round it.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if not requirements:
        return []
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest),
               "--quiet", "--disable-pip-version-check"]
    if find_links is not None:
        command += ["--no-index", "--find-links", str(find_links)]
    done = subprocess.run(command + requirements, capture_output=True, text=True)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise KaggleError(
            f"pip could not download {requirements} ({tail}); on a machine without a package index pass "
            "WHEELS_FROM=<a folder holding those wheels>"
        )
    return sorted(dest.glob("*.whl"))


def dataset_metadata(target: KaggleTarget) -> dict:
    return {"title": target.dataset, "id": target.dataset_id, "licenses": [{"name": "CC0-1.0"}]}


def kernel_metadata(target: KaggleTarget) -> dict:
    return {
        "id": target.notebook_id,
        "title": target.notebook,
        "code_file": f"{target.notebook}.ipynb",
        "language": "python",
        "kernel_type": "notebook",
        "is_private": True,
        "enable_gpu": bool(target.gpu),
        "enable_internet": False,  # what a code competition demands; the wheels make it possible
        "dataset_sources": [target.dataset_id],
        "competition_sources": [target.competition],
        "kernel_sources": [],
    }


def check_replaceable(out: Path, force: bool) -> None:
    """Refuse to replace ``out`` unless ``make kaggle`` wrote it (its ``make-kaggle.json``) or ``force`` is set."""
    if out.exists() and not force and not (out / KAGGLE_FILE).is_file():
        raise KaggleError(f"{out} exists and was not written by make kaggle; remove it, pass OUT=, or FORCE=1")


def _link_tree(source: Path, dest: Path) -> None:
    """``source``'s files under ``dest`` as hard links (a copy across file systems): checkpoints are not duplicated."""
    for path in sorted(source.rglob("*")):
        if path.is_file():
            to = dest / path.relative_to(source)
            to.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, to)
            except OSError:
                shutil.copy2(path, to)


def build_kaggle_folder(export_dir: Path, out: Path, target: KaggleTarget, wheels: list[Path], test_dir: str,
                        sample_submission: str, test_csv: str | None, time_limit: str, force: bool = False) -> Path:
    """Write ``out`` (``dataset/``, ``notebook/``, ``make-kaggle.json``) atomically from an export folder.

    Raises
    ------
    KaggleError
        When ``out`` exists and was not written by ``make kaggle`` (without ``force``), or the export is incomplete.
    """
    manifest_path = export_dir / "manifest.json"
    if not manifest_path.is_file() or not (export_dir / "predict.py").is_file():
        raise KaggleError(f"{export_dir} is not an export folder (no manifest.json / predict.py); run make export")
    check_replaceable(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        dataset = tmp / "dataset"
        _link_tree(export_dir, dataset)
        (dataset / "wheels").mkdir()
        for wheel in wheels:
            shutil.copy2(wheel, dataset / "wheels" / wheel.name)
        io.write_json(dataset / "dataset-metadata.json", dataset_metadata(target))
        cells = notebook_cells(target, test_dir, sample_submission, test_csv, time_limit)
        io.write_json(tmp / "notebook" / f"{target.notebook}.ipynb", notebook_json(cells))
        io.write_json(tmp / "notebook" / "kernel-metadata.json", kernel_metadata(target))
        io.write_json(tmp / KAGGLE_FILE, {
            "export": str(export_dir),
            "export_manifest_sha256": io.file_sha256(manifest_path),
            "dataset": target.dataset_id,
            "notebook": target.notebook_id,
            "competition": target.competition,
            "wheels": sorted(w.name for w in wheels),
            "trained": target.trained,
        })
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def push_commands(out: Path, target: KaggleTarget, message: str, dataset_exists: bool,
                  submission: Path | None = None) -> list[list[str]]:
    """The official CLI's command lines: the dataset (created or a new version), the notebook, and a CSV submission."""
    dataset = str(out / "dataset")
    commands = [
        ["kaggle", "datasets", "version", "-p", dataset, "-m", message, "--dir-mode", "zip"]
        if dataset_exists
        else ["kaggle", "datasets", "create", "-p", dataset, "--dir-mode", "zip"],
        ["kaggle", "kernels", "push", "-p", str(out / "notebook")],
    ]
    if submission is not None:
        commands.append(["kaggle", "competitions", "submit", "-c", target.competition, "-f", str(submission), "-m",
                         message])
    return commands


def check_push_ready(which=shutil.which, env: dict | None = None, home: Path | None = None) -> str:
    """The user name to push as, once the CLI and credentials are there.

    Raises
    ------
    KaggleError
        Naming what to install or where the token goes.
    """
    if which("kaggle") is None:
        raise KaggleError("PUSH=1 needs the official Kaggle CLI: pip install kaggle (then put your API token in "
                          "~/.kaggle/kaggle.json, from kaggle.com > Settings > API > Create New Token)")
    user, found = credentials(env, home)
    if not found:
        raise KaggleError("no Kaggle credentials: put the token from kaggle.com > Settings > API > Create New Token "
                          "in ~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME and KAGGLE_KEY")
    if not user:
        raise KaggleError("the Kaggle credentials do not name a user: set KAGGLE_USERNAME or pass KAGGLE_USER=")
    return user


def run_push(commands: list[list[str]], runner=subprocess.run) -> None:
    """Run each command, stopping at the first that fails (its output names the cause)."""
    for command in commands:
        log.info("$ " + " ".join(command))
        done = runner(command)
        if done.returncode != 0:
            raise KaggleError(f"{' '.join(command[:3])} failed (exit status {done.returncode}; its output is above)")


def dataset_exists(dataset_id: str, runner=subprocess.run) -> bool:
    """Whether the dataset is on Kaggle already (``kaggle datasets status`` succeeds): version it, else create it."""
    done = runner(["kaggle", "datasets", "status", dataset_id], capture_output=True, text=True)
    return done.returncode == 0


def run_kaggle(config, method: str = "submission", out: Path | None = None, user: str | None = None,
               dataset: str | None = None, notebook: str | None = None, wheels: tuple[str, ...] = DEFAULT_WHEELS,
               wheels_from: Path | None = None, gpu: bool = False, time_limit: str = "9h", push: bool = False,
               submit: bool = False, force: bool = False, budget: str | None = None, test_images: int | None = None,
               which=shutil.which, runner=subprocess.run) -> dict:
    """``make kaggle``: export ``method``, then write the Kaggle folder and, with ``push``, upload it.

    ``budget`` and ``test_images`` go to :func:`pipeline.export.build.run_export` (what fits the notebook's time).

    Parameters
    ----------
    config : Config
    method : str
        What ``make export`` exports (``submission``: the chosen candidate).
    out : Path, optional
        Default ``kaggle/<competition>`` under the output folder.
    user, dataset, notebook : str, optional
        The Kaggle user (default: the credentials'), the dataset's and the notebook's slugs (default
        ``<competition>-models`` and ``<competition>-inference``).
    wheels : tuple of str
        Packages shipped as wheels at the versions the runs were trained with.
    wheels_from : Path, optional
        A local folder of wheels to take them from, with no package index.
    gpu, time_limit : bool, str
        The notebook's accelerator, and the limit ``predict.py`` warns against.
    push, submit : bool
        Upload the dataset and notebook with the ``kaggle`` CLI; also submit the CSV (CSV competitions).
    force : bool
        Replace an export or Kaggle folder that ``make`` did not write.

    Returns
    -------
    dict
        ``out``, ``target`` (:class:`KaggleTarget`), ``wheels``, ``commands`` (run when ``push``).

    Raises
    ------
    KaggleError, ExportError
        Before anything is written: push without the CLI or credentials, a bad slug, wheels pip cannot get.
    """
    from pipeline.export.build import image_folder, run_export
    from pipeline.export.predict import parse_duration
    from pipeline.store import RunLayout, read_meta

    parse_duration(time_limit)  # a bad limit is refused before any work
    if submit and not push:
        raise KaggleError("SUBMIT=1 submits through the Kaggle CLI: pass PUSH=1 too")
    if submit and method != "submission":
        raise KaggleError(f"SUBMIT=1 submits submission.csv, the chosen candidate, not METHOD={method}: leave METHOD "
                          "out, or submit that method's file from submissions/ by hand")
    if submit and not (config.submissions_dir / "submission.csv").is_file():
        raise KaggleError(f"{config.submissions_dir / 'submission.csv'} does not exist: run make ensemble first")
    if push:
        pushed_as = check_push_ready(which)
        user = user or pushed_as
    if user is None:
        user = credentials()[0]
    competition = kaggle_slug(config.competition.name)
    target = KaggleTarget(
        user=kaggle_slug(user) if user else "your-kaggle-username",
        competition=competition,
        dataset=kaggle_slug(dataset or f"{competition}-models"),
        notebook=kaggle_slug(notebook or f"{competition}-inference"),
        gpu=gpu,
        wheels=tuple(wheels),
    )
    out = Path(out) if out else config.out / "kaggle" / config.competition.name
    check_replaceable(out, force)  # before the export too: a refusal leaves nothing half done
    wheel_requirements(target.wheels, {})  # torch or an unknown package: refused before the export
    exported = run_export(config, method=method, force=force, budget=budget, test_images=test_images)
    export_dir = Path(exported["out"])
    manifest = io.read_json(export_dir / "manifest.json")
    metas = {name: read_meta(RunLayout(config.runs_dir / name)) for name in manifest["runs"]}
    trained = trained_versions({name: meta for name, meta in metas.items() if meta is not None})
    target = dataclasses.replace(target, trained=trained)
    requirements = wheel_requirements(target.wheels, trained)
    with tempfile.TemporaryDirectory() as folder:
        got = download_wheels(requirements, Path(folder), find_links=wheels_from)
        # the test table only when the exported blend reads metadata columns from it (predict.py --test-csv)
        test_csv = config.competition.test_csv if io.read_json(export_dir / "export.json").get("test_csv") else None
        build_kaggle_folder(export_dir, out, target, got, image_folder(config.competition.test_images),
                            config.competition.sample_submission, test_csv, time_limit, force=force)
        names = [w.name for w in got]
    message = f"kfold-ensembler {manifest['method']} ({manifest['candidate']}): " + ", ".join(
        f"{name}@{run_hash}" for name, run_hash in sorted(manifest["runs"].items()))
    submission = config.submissions_dir / "submission.csv" if submit else None
    commands = push_commands(out, target, message, dataset_exists(target.dataset_id, runner) if push else False,
                             submission)
    if push:
        run_push(commands, runner)
    return {"out": out, "target": target, "wheels": names, "commands": commands, "message": message}
