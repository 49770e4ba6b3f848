"""What a run is called, which input size it uses and says, what it records, and how one is deleted.

One real training run on the 60-image slice (1 epoch, timm's tiny ResNet with ``small_input``) under
``NAME=``, then the checks on what it wrote and printed.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from pipeline.cli import main
from pipeline.config import image_size_choice, load_config, resolve_train_config
from pipeline.data.images import image_size_report
from pipeline.store import RunLayout, RunMeta, StoreError, read_meta, remove_run


@pytest.fixture()
def named_run(small_config, capsys):
    """``make train MODEL=digits_resnet NAME=r_small ARGS=small_input=true``: one fold, one epoch."""
    code = main(
        [
            "train",
            "--config",
            str(small_config),
            "--model",
            "digits_resnet",
            "--name",
            "r_small",
            "--folds",
            "0",
            "small_input=true",
        ]
    )
    return code, capsys.readouterr()


def test_name_names_the_run_and_meta_records_what_it_read(named_run, small_config):
    code, out = named_run
    assert code == 0, out.err
    config = load_config(small_config)
    layout = RunLayout(config.runs_dir / "r_small")
    meta = read_meta(layout)
    assert not (config.runs_dir / "digits_resnet").exists()
    assert meta.name == "r_small" and meta.config["small_input"] is True and meta.status == "partial"
    # the competition config and the recipe, each with the hash of its bytes (no git needed)
    recipe = config.recipes_path / "digits_resnet.yaml"
    assert meta.config_files == {
        str(path.resolve()): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted([small_config, recipe], key=lambda p: str(p.resolve()))
    }
    assert meta.image_size_source == "recipe digits_resnet.yaml"
    # which size and from where, said before training; the demo's images are 32 px: nothing to warn about
    assert "r_small: input 32 px (from recipe digits_resnet.yaml), recipe digits_resnet" in out.out
    assert "samples the images" not in out.out


def test_throughput_and_data_wait_per_epoch_and_per_fold(named_run, small_config):
    code, out = named_run
    assert code == 0, out.err
    config = load_config(small_config)
    info = json.loads(RunLayout(config.runs_dir / "r_small").fold_info(0).read_text())
    epoch = info["history"][0]
    assert epoch["train_images_per_s"] > 0 and 0 <= epoch["data_wait_share"] <= 1
    assert info["data_wait_share"] == epoch["data_wait_share"]  # the median of one epoch
    # off a terminal: one line per epoch with both figures; the per-fold table has both columns
    assert "waiting for data" in out.out and "epoch 1/1" in out.out
    header = next(line for line in out.out.splitlines() if line.startswith("fold"))
    assert "images/s" in header and "data wait" in header


def test_the_same_recipe_under_another_name_is_another_run(named_run, small_config, capsys):
    assert named_run[0] == 0
    config = load_config(small_config)
    # another name: a new run, no FORCE needed although the settings differ
    assert (
        main(
            [
                "train",
                "--config",
                str(small_config),
                "--model",
                "digits_resnet",
                "--name",
                "r_plain",
                "--folds",
                "0",
                "--epochs",
                "1",
            ]
        )
        == 0
    )
    assert {p.name for p in config.runs_dir.iterdir() if not p.name.startswith(".")} >= {"r_small", "r_plain"}
    # predict needs the name too; without it there is no such run, and the message says how it was trained
    assert main(["predict", "--config", str(small_config), "--model", "digits_resnet"]) == 2
    assert "make train MODEL=digits_resnet" in capsys.readouterr().err


def test_clean_run_deletes_one_run(named_run, small_config, capsys):
    assert named_run[0] == 0
    config = load_config(small_config)
    # not a terminal and no FORCE: refused, with what would be deleted
    assert main(["clean-run", "--config", str(small_config), "--name", "r_small"]) == 2
    assert "partial, folds done [0]" in capsys.readouterr().err and (config.runs_dir / "r_small").is_dir()
    assert main(["clean-run", "--config", str(small_config), "--name", "r_small", "--force"]) == 0
    assert not (config.runs_dir / "r_small").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--name", "nope"], "no run .*nope; runs: none"),
        (["--name", "../up"], "NAME='../up' must be one name of letters"),
        ([], "clean-run needs NAME"),
    ],
)
def test_clean_run_errors(small_config, capsys, args, message):
    import re

    assert main(["clean-run", "--config", str(small_config), "--force"] + args) == 2
    assert re.search(message, capsys.readouterr().err)


def test_clean_run_refuses_a_run_being_trained(tmp_path):
    run_dir = tmp_path / "runs" / "busy"
    run_dir.mkdir(parents=True)
    import os

    (run_dir / ".lock").write_text(f"{__import__('platform').node() or 'localhost'}:{os.getpid()}")
    with pytest.raises(StoreError, match="being trained by process"):
        remove_run(tmp_path / "runs", "busy")
    assert run_dir.is_dir()


def test_name_with_a_line_up_is_refused(small_config, capsys):
    assert main(["train", "--config", str(small_config), "--name", "x"]) == 2
    assert "NAME=x names one run" in capsys.readouterr().err


def test_unfinished_runs_are_left_out_with_the_way_to_drop_them(named_run, small_config, capsys):
    assert named_run[0] == 0
    main(["ensemble", "--config", str(small_config)])
    assert (
        "left out r_small: unfinished (folds done: [0]); finish it with make train, or delete it with "
        "make clean-run NAME=r_small" in capsys.readouterr().out
    )


# -- the input size: which one, and from where ---------------------------------------------------


def test_image_size_sources(small_competition, write_config):
    config = load_config(write_config(small_competition, {"train": {"image_size": 16}}))
    # a recipe's size wins by default, and says that it overrides the competition's
    choice = image_size_choice(config, "resnet18")
    assert (choice.size, choice.source, choice.overrides_competition) == (224, "recipe resnet18.yaml", True)
    assert "the competition's image_size 16 is overridden" in image_size_report(choice, 224, 16)[0]
    assert image_size_choice(config, "test_resnet").source == "competition config"  # no recipe: the competition's
    args = {"train": {"image_size": 48}}
    assert (image_size_choice(config, "resnet18", args).size, image_size_choice(config, "resnet18", args).source) == (
        48,
        "ARGS",
    )
    # one setting makes the competition's size apply to every recipe
    kept = load_config(write_config(small_competition, {"train": {"image_size": 16, "image_size_from": "competition"}}))
    assert resolve_train_config(kept, "resnet18")[1].image_size == 16
    assert image_size_choice(kept, "resnet18").source == "competition config (image_size_from: competition)"
    bare = load_config(write_config(small_competition, {"train": {"image_size": None}}))
    assert image_size_choice(bare, "test_resnet").source == "model default"


@pytest.mark.parametrize(
    "target, side, warned",
    [
        (224, 32, "upsamples the images (median shorter side 32 px) 7.0x"),
        (64, 32, None),  # 2x: no warning
        (224, 1024, "downsamples the images (median shorter side 1024 px) 4.6x"),
        (256, 1024, None),
    ],
)
def test_image_size_warnings(target, side, warned):
    from pipeline.config import ImageSizeChoice

    _, warnings = image_size_report(ImageSizeChoice(target, "recipe x.yaml"), target, side)
    assert (warned is None and not warnings) or (warned is not None and warned in warnings[0])


def test_image_size_from_competition_needs_a_size(small_competition, write_config):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="image_size_from 'competition' needs train.image_size"):
        load_config(write_config(small_competition, {"train": {"image_size_from": "competition"}}))


def test_models_lists_where_each_size_comes_from(small_competition, write_config, capsys):
    path = write_config(small_competition, {"train": {"image_size": 16}})
    assert main(["models", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.startswith("resnet18 ")][-1]  # the recipe table, after the aliases
    assert "224" in row and "recipe" in row
    assert "set train.image_size_from: competition to use it for every recipe" in out


def test_old_meta_without_the_new_keys_still_loads():
    old = {"name": "r", "status": "finished", "classes": ["0", "1"], "folds_fingerprint": "abc", "schema_version": 1}
    meta = RunMeta.from_json(old)
    assert meta.config_files is None and meta.image_size_source is None and meta.schema_version == 1
    assert meta.teacher is None
    assert RunMeta.from_json({**old, "schema_version": 2}).teacher is None  # version 3 added `teacher`
    with pytest.raises(StoreError, match="schema_version 4 is newer than this pipeline's \\(3\\)"):
        RunMeta.from_json({**old, "schema_version": 4})


def test_cpu_training_returns_freed_memory_at_once():
    import platform

    from pipeline.train.runtime import return_freed_memory_at_once

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert return_freed_memory_at_once() is True
    # a freed 8 MiB block is unmapped at once: the process's resident memory does not keep it
    import numpy as np

    def rss_mb():
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

    for _ in range(3):  # glibc would raise its threshold after the first free without the fixed one
        block = np.ones(8 << 20, dtype=np.uint8)
        del block
    before = rss_mb()
    block = np.ones(8 << 20, dtype=np.uint8)
    assert rss_mb() - before > 6
    del block
    assert rss_mb() - before < 2


def test_new_settings_keep_old_run_hashes(loaded_small_config):
    from pipeline.store import run_hash

    config = loaded_small_config
    cfg = resolve_train_config(config, "digits_resnet")[1]
    base = run_hash(cfg, config, "f")
    # not what a run learns: never hashed
    assert (
        run_hash(cfg.model_copy(update={"image_size_from": "competition", "return_freed_memory": False}), config, "f")
        == base
    )
    # what it learns: hashed only when set, so runs made before the key existed keep their hash
    assert run_hash(cfg.model_copy(update={"small_input": True}), config, "f") != base
