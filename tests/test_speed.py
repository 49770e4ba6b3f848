"""The speed settings: loader auto-settings, AMP dtype, the largest-batch finder, TTA under memory pressure,
torch.compile.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open

from pipeline.cli import main
from pipeline.config import ConfigError, TrainConfig, settings_dump
from pipeline.train import TrainingError
from pipeline.train.batch_size import find_batch_size, step_fits
from pipeline.train.predict import predict_views
from pipeline.train.runtime import Runtime, amp_dtype_for, loader_settings
from pipeline.vision.views import parse_view

CPU = Runtime(torch.device("cpu"), None, False, 0, False)


def test_loader_settings_follow_the_machine_and_yield_to_the_config():
    auto = TrainConfig()
    # CPU: decoded images are transformed in-process; files still to decode get workers
    assert loader_settings(auto, use_cuda=False, images_in_memory=True, cpus=2) == {
        "num_workers": 0,
        "pin_memory": False,
        "persistent_workers": False,
        "prefetch_factor": None,
    }
    assert loader_settings(auto, use_cuda=False, images_in_memory=False, cpus=2)["num_workers"] == 2
    # GPU: every spare core of this process's share, pinned memory, workers kept between epochs
    assert loader_settings(auto, use_cuda=True, images_in_memory=True, cpus=16) == {
        "num_workers": 8,
        "pin_memory": True,
        "persistent_workers": True,
        "prefetch_factor": 4,
    }
    assert (
        loader_settings(auto, use_cuda=True, images_in_memory=True, cpus=16, processes_per_machine=4)["num_workers"]
        == 3
    )
    assert loader_settings(auto, use_cuda=True, images_in_memory=True, cpus=1)["num_workers"] == 1
    chosen = TrainConfig(num_workers=3, pin_memory=False, persistent_workers=False, prefetch_factor=7)
    assert loader_settings(chosen, use_cuda=True, images_in_memory=True, cpus=16) == {
        "num_workers": 3,
        "pin_memory": False,
        "persistent_workers": False,
        "prefetch_factor": 7,
    }
    assert (
        loader_settings(TrainConfig(num_workers=0, persistent_workers=True), True, True, cpus=16)["persistent_workers"]
        is False
    )


def test_amp_dtype_bf16_by_default_fp16_on_request():
    assert amp_dtype_for(TrainConfig(), use_cuda=True, bf16_supported=True) == torch.bfloat16
    assert amp_dtype_for(TrainConfig(), use_cuda=True, bf16_supported=False) == torch.float16
    assert amp_dtype_for(TrainConfig(amp_dtype="fp16"), use_cuda=True, bf16_supported=True) == torch.float16
    assert amp_dtype_for(TrainConfig(amp=False), use_cuda=True, bf16_supported=True) is None
    assert amp_dtype_for(TrainConfig(), use_cuda=False) is None  # float32 on the CPU
    with pytest.raises(ConfigError, match="amp_dtype=fp16"):
        amp_dtype_for(TrainConfig(amp_dtype="bf16"), use_cuda=True, bf16_supported=False)


def test_speed_settings_do_not_change_a_runs_hash():
    base = settings_dump(TrainConfig(model="m"))
    for fast in (
        dict(compile=True),
        dict(cache="off"),
        dict(cache_margin=1.3),
        dict(num_workers=4),
        dict(pin_memory=False),
        dict(prefetch_factor=8),
        dict(persistent_workers=False),
        dict(ddp_backend="gloo"),
    ):
        assert settings_dump(TrainConfig(model="m", **fast)) == base, fast
    # keys added with this feature are left out at their defaults, so older runs keep their hash
    assert "amp_dtype" not in base and "sync_bn" not in base
    assert settings_dump(TrainConfig(model="m", amp_dtype="fp16")) != base
    assert settings_dump(TrainConfig(model="m", sync_bn=True)) != base
    assert settings_dump(TrainConfig(model="m", batch_size="auto")) != base


# (largest batch that fits, what the search returns): 90% of the wall it found, a multiple of 8 from 8 up;
# 1000: doubling stops at 1024, bisection reaches 992 (within 1/16), 0.9 * 992 = 892 -> 888; 5000: the limit
@pytest.mark.parametrize("largest, expected", [(1, 1), (8, 7), (37, 32), (1000, 888), (5000, 1024)])
def test_find_batch_size_finds_the_largest_that_fits_with_a_margin(largest, expected):
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= largest

    found = find_batch_size(fits, start=16, limit=1024, safety=0.9, multiple=8)
    assert len(tried) <= 20  # doubling then bisection, not a scan
    if largest >= 1024:
        assert found == 1024  # the limit, not memory, was the bound: no margin taken
    else:
        wall = max(b for b in tried if b <= largest)
        assert wall >= largest * 15 / 16  # the search got within 1/16 of the wall
        assert found <= max(1, 0.9 * largest) and found >= 0.9 * wall - 8
        assert found % 8 == 0 or found < 8
    assert found == expected


def test_find_batch_size_when_nothing_fits():
    with pytest.raises(TrainingError, match="not even a batch of 1"):
        find_batch_size(lambda batch: False)


class _MemoryWall(torch.nn.Module):
    """A model that runs out of (pretend) device memory above ``wall`` rows, like a GPU does."""

    def __init__(self, wall: int):
        super().__init__()
        self.wall = wall
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3),
            torch.nn.BatchNorm2d(4),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(4, 3),
        )

    def forward(self, x):
        if x.shape[0] > self.wall:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (pretend): {x.shape[0]} rows")
        return self.net(x)


def test_step_fits_runs_real_steps_and_leaves_the_model_untouched():
    model = _MemoryWall(wall=100)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fits = step_fits(model, TrainConfig(lr=0.1), CPU, image_size=8, n_classes=3)
    assert fits(64) and not fits(101)
    assert find_batch_size(fits, limit=1024) == 88  # 0.9 x 100 rounded down to a multiple of 8
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key

    class Broken(_MemoryWall):
        def forward(self, x):
            raise ValueError("a real bug, not memory")

    with pytest.raises(ValueError, match="a real bug"):
        step_fits(Broken(1), TrainConfig(), CPU, 8, 3)(4)


def test_tta_splits_views_into_fewer_per_pass_when_memory_runs_out():
    torch.manual_seed(0)
    model = _MemoryWall(wall=10_000).eval()
    views = [parse_view(v) for v in ("identity", "hflip", "vflip", "shift(1,0)", "zoom(1.1)")]
    batches = [(torch.randn(6, 3, 12, 12), None) for _ in range(3)]
    free = predict_views(model, batches, views, CPU)
    model.wall = 12  # at most two views of six images per forward pass
    tight = predict_views(model, batches, views, CPU)
    assert tight.shape == free.shape == (5, 18, 3)
    np.testing.assert_allclose(tight, free, atol=1e-6)
    model.wall = 5  # not even one view of a batch fits: the error says so instead of looping
    with pytest.raises(torch.cuda.OutOfMemoryError):
        predict_views(model, batches, views, CPU)


def test_tta_on_the_cpu_keeps_each_pass_within_the_cache_friendly_size():
    rows_per_pass = []

    class Counting(_MemoryWall):
        def forward(self, x):
            rows_per_pass.append(x.shape[0])
            return super().forward(x)

    model = Counting(wall=10_000).eval()
    views = [parse_view(v) for v in ("identity", "hflip", "vflip", "shift(1,0)", "zoom(1.1)")]
    x = torch.randn(32, 3, 64, 64)  # 2**19 pixels hold four views of 32 images at 64 px
    probs = predict_views(model, [(x, None)], views, CPU)
    assert rows_per_pass == [128, 32]
    with torch.inference_mode():
        one_pass = model(torch.cat([view(x) for view in views])).softmax(dim=1).view(5, 32, -1).numpy()
    np.testing.assert_allclose(probs, one_pass, atol=1e-6)  # the same predictions as one pass of all views


def test_auto_batch_size_on_the_cpu_trains_and_is_recorded(small_config, capsys):
    assert (
        main(
            [
                "train",
                "--config",
                str(small_config),
                "--model",
                "digits_effnet",
                "--folds",
                "0",
                "train.batch_size=auto",
            ]
        )
        == 0
    )
    assert "batch_size auto: 40 (the CPU default)" in capsys.readouterr().out  # 64, capped by the 40 training rows
    meta = json.loads((small_config.parent / "out" / "runs" / "digits" / "digits_effnet" / "meta.json").read_text())
    assert meta["batch_size_found"] == 40 and meta["config"]["batch_size"] == "auto"


def test_compiled_training_learns_exactly_what_eager_training_learns(
    small_competition, write_config, tmp_path, monkeypatch
):
    calls = []
    real_compile = torch.compile

    def eager_compile(model, mode=None, **kwargs):
        # the 'eager' backend traces with TorchDynamo but runs the same kernels: results must match bit for bit
        calls.append(mode)
        return real_compile(model, backend="eager")

    plain = write_config(small_competition, {"output_dir": str(tmp_path / "plain")}, name="plain.yaml")
    compiled = write_config(
        small_competition, {"output_dir": str(tmp_path / "compiled"), "train": {"compile": True}}, name="compiled.yaml"
    )
    command = ["train", "--model", "digits_resnet", "--folds", "0"]
    assert main([*command, "--config", str(plain)]) == 0
    monkeypatch.setattr(torch, "compile", eager_compile)
    assert main([*command, "--config", str(compiled)]) == 0
    assert calls == ["default"]
    fold = ("runs", "digits", "digits_resnet", "fold0")
    with safe_open(str(tmp_path.joinpath("compiled", *fold, "best.safetensors")), framework="pt") as handle:
        assert not [k for k in handle.keys() if k.startswith("_orig_mod")]  # checkpoints load without the compiler
    for name in ("valid.parquet", "test.parquet"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(tmp_path.joinpath("plain", *fold, name)),
            pd.read_parquet(tmp_path.joinpath("compiled", *fold, name)),
            check_exact=True,
        )
