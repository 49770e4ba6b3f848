"""Device augmentation policies: TrivialAugment and RandAugment per batch, the named augment_policy presets."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import TrainConfig, settings_dump
from pipeline.train.runtime import Runtime, device_transform
from pipeline.vision.device import DEVICE_AUGMENTS, build_device_augment_step
from pipeline.vision.models import DataConfig
from pipeline.vision.policies import AUGMENT_OPS, AUGMENT_POLICIES, RandAugment, TrivialAugment, augment_policy_steps

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, channels_last=False, num_workers=0, pin_memory=False)
# parameters that make a step act on every image it draws (the others do with their defaults)
ACTIVE = {"Affine": {"rotate": [-20, 20]}}


def batch(n: int = 12, side: int = 20, seed: int = 0) -> torch.Tensor:
    """Photo-like (N, 3, H, W) floats in [0, 1] on the 0-255 grid, as DeviceTransform hands them to the steps."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 5, 5, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return (smooth * 255).round() / 255


def run(step, x: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return step(x)


@pytest.mark.parametrize("name", sorted(DEVICE_AUGMENTS))
def test_every_device_step_is_deterministic_under_a_fixed_generator(name):
    x = batch()
    step = build_device_augment_step({name: {**ACTIVE.get(name, {}), "p": 0.5}})   # p < 1: a flip's draw shows too
    out = run(step, x, seed=3)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert torch.equal(out, run(step, x, seed=3))          # the same draws from torch's generator: a resume is exact
    assert not torch.equal(out, run(step, x, seed=4))


@pytest.mark.parametrize("op", sorted(AUGMENT_OPS))
@pytest.mark.parametrize("cls", [TrivialAugment, RandAugment])
def test_each_op_alone_keeps_shape_dtype_and_range(cls, op):
    x = batch()
    strongest = {"num_magnitude_bins": 2} if cls is TrivialAugment else {"num_ops": 1, "magnitude": 30}
    out = run(cls(ops=[op], **strongest), x, seed=0)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    if op == "Identity":
        assert torch.equal(out, x)
    elif cls is RandAugment:  # at the largest magnitude every op changes the batch
        assert not torch.equal(out, x), op


MAGNITUDE_OPS = [op for op in AUGMENT_OPS if op != "AutoContrast"]   # AutoContrast has no magnitude


@pytest.mark.parametrize("step", [
    {"TrivialAugment": {"ops": ["Identity"]}},
    {"RandAugment": {"ops": ["Identity"], "num_ops": 3}},
    {"TrivialAugment": {"num_magnitude_bins": 1, "ops": MAGNITUDE_OPS}},
    {"RandAugment": {"magnitude": 0, "ops": MAGNITUDE_OPS}},
    {"TrivialAugment": {"p": 0.0}},
    {"RandAugment": {"p": 0.0}},
], ids=lambda step: str(step)[:50])
def test_magnitude_zero_or_the_identity_op_leaves_the_batch_bit_for_bit(step):
    x = batch()
    assert torch.equal(run(build_device_augment_step(step), x, seed=0), x)


def test_each_image_draws_its_own_op():
    x = batch(n=1).repeat(64, 1, 1, 1)
    out = run(TrivialAugment(), x, seed=0)
    distinct = {tuple(image.flatten()[::37].tolist()) for image in out}
    assert len(distinct) > 8


def test_geometric_ops_fold_into_one_warp_that_moves_pixels():
    x = torch.zeros(4, 3, 16, 16)
    x[:, :, 6:10, 6:10] = 1.0
    moved = run(RandAugment(num_ops=1, magnitude=10, ops=["TranslateX"]), x, seed=0)
    # a third of RandAugment's largest shift (150/331 of 16 px), left or right: the square moves that far, whole
    shift = (moved[:, 0].sum(dim=1) * torch.arange(16.0)).sum(dim=1) / moved[:, 0].sum(dim=(1, 2)) - 7.5
    torch.testing.assert_close(shift.abs(), torch.full((4,), 16 * 150 / 331 / 3))
    torch.testing.assert_close(moved.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))
    assert {float(s) > 0 for s in shift} == {True, False}   # both signs drawn


@pytest.mark.parametrize("step, message", [
    ({"TrivialAugment": {"ops": ["Equalize"]}}, r"ops must be a non-empty list of op names among Identity, ShearX"),
    ({"TrivialAugment": {"ops": []}}, r"ops must be a non-empty list"),
    ({"TrivialAugment": {"num_magnitude_bins": 0}}, r"num_magnitude_bins must be a whole number >= 1, got 0"),
    ({"RandAugment": {"magnitude": 31}}, r"magnitude must be a number from 0 to num_magnitude_bins - 1 \(30\), got 31"),
    ({"RandAugment": {"num_ops": 0}}, r"num_ops must be a whole number >= 1, got 0"),
    ({"RandAugment": {"fill": "grey"}}, r"fill must be one number"),
    ({"RandAugment": {"n": 2}}, r"RandAugment does not take n; it takes num_ops, magnitude"),
], ids=lambda v: str(v)[:40])
def test_bad_policy_step_parameters_are_refused(step, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(device_augment=[step])


@pytest.mark.parametrize("policy", sorted(AUGMENT_POLICIES))
def test_every_policy_expands_to_device_steps_before_the_configs_own(policy):
    own = [{"CoarseDropout": {"p": 1.0}}]
    cfg = TrainConfig(augment_policy=policy, device_augment=own)
    transform = device_transform(cfg, DataConfig(20, (0.5,) * 3, (0.25,) * 3, "bilinear"), CPU)
    names = [type(step).__name__ for step in transform.augment]
    assert names == [next(iter(s)) for s in augment_policy_steps(policy)] + ["CoarseDropout"]
    x = (batch() * 255).round().to(torch.uint8).permute(0, 2, 3, 1)   # (N, H, W, 3) uint8, as the loader gives it
    torch.manual_seed(0)
    out = transform(x, train=True)
    torch.manual_seed(0)
    again = transform(x, train=True)
    assert out.shape == (12, 3, 20, 20) and out.dtype == torch.float32 and torch.equal(out, again)
    # the policy's steps alone keep the [0, 1] range the normalisation expects
    steps = [build_device_augment_step(s) for s in augment_policy_steps(policy)]
    y = batch()
    torch.manual_seed(1)
    for step in steps:
        y = step(y)
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    if policy == "none":
        assert torch.equal(y, batch())
    else:
        assert not torch.equal(y, batch())


def test_an_unknown_policy_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown augment_policy 'strong'; known policies: none, flip, light, "
                                         r"trivial"):
        TrainConfig(augment_policy="strong")


def test_augment_policy_enters_a_runs_hash_only_when_set():
    assert "augment_policy" not in settings_dump(TrainConfig(model="m"))  # runs made before the key keep their hash
    assert settings_dump(TrainConfig(model="m", augment_policy="trivial"))["augment_policy"] == "trivial"


def test_policies_cost_no_host_sync_per_image():
    # the op choice, signs and magnitudes are tensors on the batch's device: one call per layer, not per image
    calls = []
    original = torch.randint

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    torch.randint = counting
    try:
        run(RandAugment(num_ops=2), batch(n=32), seed=0)
    finally:
        torch.randint = original
    assert len(calls) == 2
    np.testing.assert_equal(len(AUGMENT_OPS), 13)
