"""Experiment tracking: every backend of the registry records the demo's folds, runs and ensemble, read back from
the backend itself (a real MLflow server, real TensorBoard event files); a tracker that fails never stops training."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.tracking import TRACKERS, reset_failures
from pipeline.tracking.values import finite, flatten, safe_path

EPOCHS = 2


@pytest.fixture(autouse=True)
def _fresh_failures():
    reset_failures()
    yield
    reset_failures()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 with a SQLite store, as a team would run one."""

    def __init__(self, folder: Path):
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.store = f"sqlite:///{folder / 'server.db'}"
        folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", self.store, "--artifacts-destination", str(folder / "artifacts"),
             "--workers", "1"],
            stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


def _train(config_path: Path, *args: str) -> None:
    assert main(["train", "--config", str(config_path), "--model", "digits_resnet", *args]) == 0


def _mlflow_runs(uri: str, experiment: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    runs = client.search_runs([found.experiment_id]) if found else []
    return {run.info.run_name: (client, run) for run in runs}


def _check_mlflow(uri: str, config) -> None:
    runs = _mlflow_runs(uri, "digits")
    assert set(runs) == {"digits_resnet/fold0", "digits_resnet/fold1", "digits_resnet", "ensemble"}
    client, fold = runs["digits_resnet/fold1"]
    tags = fold.data.tags
    assert tags["competition"] == "digits" and tags["fold"] == "1" and len(tags["folds_fingerprint"]) >= 8
    assert tags["settings_hash"] and fold.data.params["epochs"] == str(EPOCHS)
    history = client.get_metric_history(fold.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(1, EPOCHS + 1))  # one point per epoch
    assert 0 <= fold.data.metrics["score"] <= 1
    assert "config.yaml" in {a.path for a in client.list_artifacts(fold.info.run_id)}
    client, run = runs["digits_resnet"]
    meta = load_meta(config)
    assert run.data.metrics["cv"] == pytest.approx(meta.cv)
    assert "fold_table.txt" in {a.path for a in client.list_artifacts(run.info.run_id)}
    client, ensemble = runs["ensemble"]
    assert {"leaderboard.txt", "leaderboard.csv", "ensemble.png"} <= {
        a.path for a in client.list_artifacts(ensemble.info.run_id)}


def load_meta(config):
    from pipeline.store import RunLayout, read_meta

    return read_meta(RunLayout(config.runs_dir / "digits_resnet"))


def _check_tensorboard(folder: Path, config) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def events(name):
        accumulator = EventAccumulator(str(folder / name), size_guidance={"images": 0, "tensors": 0})
        accumulator.Reload()
        return accumulator

    fold = events("digits_resnet/fold1")
    assert [e.step for e in fold.Scalars("train_loss")] == list(range(1, EPOCHS + 1))
    assert "config.yaml/text_summary" in fold.Tags()["tensors"]
    run = events("digits_resnet")
    assert run.Scalars("cv")[0].value == pytest.approx(load_meta(config).cv, abs=1e-6)
    ensemble = events("ensemble")
    assert "ensemble" in ensemble.Tags()["images"] and "leaderboard.txt/text_summary" in ensemble.Tags()["tensors"]


@pytest.mark.parametrize("backend", sorted(TRACKERS))
def test_every_backend_records_folds_runs_and_the_ensemble(backend, small_competition, write_config, tmp_path):
    server = MlflowServer(tmp_path / "mlflow") if backend == "mlflow" else None
    uri = server.uri if server else str(tmp_path / "tb")
    try:
        path = write_config(small_competition, {"folds": {"n_splits": 2}, "train": {"epochs": EPOCHS},
                                                "tracking": {"backend": backend, "uri": uri}})
        _train(path)
        assert main(["ensemble", "--config", str(path)]) == 0
        config = load_config(path)
        if server:
            _check_mlflow(server.uri, config)
        else:
            _check_tensorboard(Path(uri), config)
    finally:
        if server:
            server.stop()


def test_the_embedded_mlflow_store_needs_no_server(small_competition, write_config, tmp_path):
    path = write_config(small_competition, {"folds": {"n_splits": 2}, "train": {"epochs": EPOCHS},
                                            "tracking": {"backend": "mlflow"}})
    _train(path)
    assert main(["ensemble", "--config", str(path)]) == 0
    config = load_config(path)
    assert (config.out / "mlflow.db").is_file()
    _check_mlflow(f"sqlite:///{config.out / 'mlflow.db'}", config)


def test_a_server_stopped_mid_run_warns_once_and_training_finishes(small_competition, write_config, tmp_path,
                                                                  monkeypatch, caplog):
    import pipeline.train.stage as stage

    server = MlflowServer(tmp_path / "mlflow")
    real = stage.train_fold

    def then_stop(*args, **kwargs):  # the server goes away once fold 0 is trained, before it is recorded
        result = real(*args, **kwargs)
        server.stop()
        return result

    monkeypatch.setattr(stage, "train_fold", then_stop)
    path = write_config(small_competition, {"folds": {"n_splits": 2}, "train": {"epochs": EPOCHS},
                                            "tracking": {"backend": "mlflow", "uri": server.uri}})
    started = time.perf_counter()
    with caplog.at_level(logging.WARNING):
        _train(path)
        assert main(["ensemble", "--config", str(path)]) == 0
    warnings = [r.getMessage() for r in caplog.records if "tracking with mlflow" in r.getMessage()]
    assert len(warnings) == 1 and "failed and is off for the rest of this command" in warnings[0]
    assert load_meta(load_config(path)).status == "finished"
    assert time.perf_counter() - started < 300  # one short wait, not MLflow's retries with back-off
    server.stop()


@pytest.mark.parametrize(
    "tracking, message",
    [
        ({"backend": "wandb"}, "unknown tracking backend 'wandb'; choose none or one of"),
        ({"backend": "mlflow", "url": "http://x"}, "url"),
        ({"backend": "mlflow", "uri": 5}, "uri"),
    ],
)
def test_bad_tracking_settings_are_refused_on_load(small_competition, write_config, tracking, message):
    path = write_config(small_competition, {"tracking": tracking})
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_values_as_trackers_take_them():
    assert flatten({"train": {"lr": 0.001, "tta": ["identity"]}, "seed": 1, "empty": {}}) == {
        "train.lr": "0.001", "train.tta": "['identity']", "seed": "1", "empty": "{}"}
    assert finite({"a": 1, "b": float("nan"), "c": True, "d": "x", "e": 2.5}) == {"a": 1.0, "e": 2.5}
    assert safe_path("resnet 18/fold0") == "resnet_18/fold0" and safe_path("//") == "run"


def test_a_zoo_screen_records_its_report(small_competition, write_config, tmp_path):
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"screen": {"rows": "auto", "image_size": "auto", "epochs": 1, "folds": 1,
                                              "timing_batch_size": 8, "timing_steps": 2},
                                   "architectures": ["digits_resnet"]}))
    logs = tmp_path / "tb"
    path = write_config(small_competition, {"tracking": {"backend": "tensorboard", "uri": str(logs)}})
    assert main(["zoo", "--config", str(path), "--zoo", str(zoo)]) == 0
    accumulator = EventAccumulator(str(logs / "zoo"), size_guidance={"tensors": 0})
    accumulator.Reload()
    assert {"report.html/text_summary", "leaderboard.md/text_summary", "leaderboard.csv/text_summary"} <= set(
        accumulator.Tags()["tensors"])
    assert accumulator.Scalars("architectures")[0].value == 1 and accumulator.Scalars("failed")[0].value == 0
