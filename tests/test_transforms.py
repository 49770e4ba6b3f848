"""The input path: per-image transform on the host, per-batch augmentation and normalisation on the device."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from pipeline.cli import main
from pipeline.config import TrainConfig, load_config, settings_dump
from pipeline.vision.device import DEVICE_AUGMENTS, DeviceTransform, build_device_augment_step
from pipeline.vision.host import INTERPOLATIONS, HostTransform
from pipeline.vision.kernels import Affine, CoarseDropout, RandomBrightnessContrast

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 image: smooth colour fields (bilinear sampling is exact on them to rounding)."""
    coarse = np.random.default_rng(seed).random((5, 5, 3)).astype(np.float32) * 255
    return np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def as_batch(*images: np.ndarray) -> torch.Tensor:
    """uint8 HWC images -> a float (N, 3, H, W) batch in [0, 1], as DeviceTransform hands it to the steps."""
    return torch.stack([torch.from_numpy(i.transpose(2, 0, 1)) for i in images]).float() / 255


def as_image(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).numpy() * 255


@pytest.mark.parametrize("interpolation", sorted(INTERPOLATIONS))
@pytest.mark.parametrize("shape", [(40, 56), (32, 32), (20, 24)])
def test_host_and_device_halves_give_what_albumentations_resize_and_normalize_gave(interpolation, shape):
    image = smooth_image(*shape)
    reference = A.Compose([A.Resize(32, 32, interpolation=INTERPOLATIONS[interpolation]),
                           A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0), ToTensorV2()])(image=image)["image"]
    host = HostTransform(32, interpolation)(image)
    assert host.dtype == torch.uint8 and host.shape == (32, 32, 3)  # the loader carries uint8: 4x less to copy
    for channels_last in (False, True):
        device = DeviceTransform(MEAN, STD, channels_last=channels_last)(host[None])
        assert device.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        np.testing.assert_allclose(device[0].numpy(), reference.numpy(), atol=1e-5)


@pytest.mark.parametrize("params", [
    {"rotate": 30},
    {"scale": {"x": 1.2, "y": 0.8}},
    {"shear": {"x": 10, "y": -5}},
    {"translate_px": {"x": 5, "y": -3}},
    {"rotate": -20, "scale": 1.1, "shear": 8, "translate_percent": {"x": 0.125, "y": 0.05}},
    {"rotate": 25, "border_mode": cv2.BORDER_REPLICATE},
    {"rotate": 25, "fill": 128},
    {"rotate": 15, "interpolation": cv2.INTER_NEAREST},
], ids=str)
def test_device_affine_is_albumentations_affine(params):
    # fixed values (no ranges): both sides apply exactly this transform; a 40x48 image checks the axes are not swapped
    image = smooth_image(40, 48)
    expected = A.Affine(p=1, **params)(image=image)["image"].astype(np.float32)
    got = as_image(Affine(p=1, **params)(as_batch(image))[0])
    difference = np.abs(got - expected)
    if params.get("interpolation") == cv2.INTER_NEAREST:
        assert np.mean(difference > 1) < 0.02  # a pixel centre on a rounding boundary may pick the neighbour
    else:
        assert difference.max() <= 1.0 and difference.mean() < 0.35  # albumentations rounds to uint8


def test_device_affine_draws_one_transform_per_image():
    image = smooth_image(32, 32)
    step = Affine(rotate=[-30, 30], scale=[0.8, 1.2], p=1)
    torch.manual_seed(0)
    out = step(as_batch(*[image] * 8))
    assert len({tuple(o.flatten()[:64].tolist()) for o in out}) == 8  # eight copies, eight different warps
    torch.manual_seed(0)
    torch.testing.assert_close(step(as_batch(*[image] * 8)), out)  # seeded: a resumed epoch replays it


def test_device_brightness_contrast_is_albumentations():
    image = smooth_image(24, 24)
    for by_max in (True, False):
        params = {"brightness_limit": [0.1, 0.1], "contrast_limit": [0.5, 0.5], "brightness_by_max": by_max}
        expected = A.RandomBrightnessContrast(p=1, **params)(image=image)["image"].astype(np.float32)
        got = as_image(RandomBrightnessContrast(p=1, **params)(as_batch(image))[0])
        assert np.abs(got - expected).max() <= 1.0


def test_device_flips_and_coarse_dropout():
    x = as_batch(smooth_image(16, 20, 1), smooth_image(16, 20, 2))
    torch.testing.assert_close(build_device_augment_step({"HorizontalFlip": {"p": 1}})(x), x.flip(-1))
    torch.testing.assert_close(build_device_augment_step({"VerticalFlip": {"p": 1}})(x), x.flip(-2))
    # one 4x5-pixel hole per image, filled with 255: exactly 20 pixels of each image change
    holes = CoarseDropout(num_holes_range=[1, 1], hole_height_range=[4, 4], hole_width_range=[5, 5], fill=255, p=1)(x)
    changed = (holes != x).any(dim=1).sum(dim=(1, 2))
    assert changed.tolist() == [20, 20] and float(holes.max()) == 1.0
    # fractions of the side, several holes: the dropped share stays within what the ranges allow
    torch.manual_seed(0)
    many = CoarseDropout(num_holes_range=[1, 3], hole_height_range=[0.25, 0.25], hole_width_range=[0.2, 0.2], p=1)(
        torch.ones(200, 3, 16, 20))
    dropped = (many == 0).all(dim=1).float().mean(dim=(1, 2))
    assert float(dropped.min()) >= 4 * 4 / 320 - 1e-6 and float(dropped.max()) <= 3 * 16 / 320 + 1e-6
    assert 0.5 < float((dropped > 0.06).float().mean())  # more than one hole in most images


# parameters that make a step change every image it touches (the others do with their defaults)
ACTIVE = {"Affine": {"rotate": [-20, 20]}}


@pytest.mark.parametrize("name", sorted(DEVICE_AUGMENTS))
def test_every_device_step_keeps_the_batch_and_p_zero_is_the_identity(name):
    x = as_batch(*[smooth_image(24, 28, seed) for seed in range(6)])
    torch.manual_seed(1)
    out = build_device_augment_step({name: {**ACTIVE.get(name, {}), "p": 1.0}})(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0 and float(out.max()) <= 1
    assert not torch.equal(out, x)
    assert torch.equal(build_device_augment_step({name: {**ACTIVE.get(name, {}), "p": 0.0}})(x), x)
    # about p of the images are touched, each by its own draw; the others stay exactly as they were
    torch.manual_seed(2)
    many = x.repeat(50, 1, 1, 1)
    half = build_device_augment_step({name: {**ACTIVE.get(name, {}), "p": 0.5}})(many)
    touched = (half != many).flatten(1).any(dim=1).float().mean()
    assert 0.35 < float(touched) < 0.65


def test_device_transform_augments_training_batches_only():
    steps = [{"Affine": {"rotate": [-20, 20], "p": 1}}]
    transform = DeviceTransform(MEAN, STD, steps, channels_last=True)
    x = torch.from_numpy(np.stack([smooth_image(32, 32, s) for s in range(4)]))  # (N, H, W, 3) uint8, as loaded
    plain = DeviceTransform(MEAN, STD)(x)
    torch.testing.assert_close(transform(x), plain)  # evaluation: normalisation only
    trained = transform(x, train=True)
    assert not torch.allclose(trained, plain) and trained.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "step, message",
    [
        ({"Afine": {}}, r"unknown device_augment step 'Afine'; known steps: Affine, HorizontalFlip"),
        ({"GaussNoise": {}}, r"an albumentations transform: put it under train.augment"),
        ({"Affine": {"rotate": 10, "fit_output": True}}, r"Affine does not take fit_output; it takes scale, "),
        ({"Affine": {"rotate": [20, 10]}}, r"rotate must be \[low, high\] with low <= high"),
        ({"Affine": {"rotate": "lots"}}, r"rotate must be a number or \[low, high\], got 'lots'"),
        ({"Affine": {"scale": {"z": 1}}}, r"scale as a mapping takes the keys x and/or y"),
        ({"Affine": {"translate_percent": 0.1, "translate_px": 2}}, r"translate_percent or translate_px, not both"),
        ({"Affine": {"scale": {"x": [0.9, 1], "y": 1}, "keep_ratio": True}}, r"keep_ratio needs the same scale range"),
        ({"Affine": {"border_mode": cv2.BORDER_WRAP}}, r"border_mode must be a cv2 flag"),
        ({"Affine": {"interpolation": cv2.INTER_AREA}}, r"interpolation must be a cv2 flag"),
        ({"HorizontalFlip": {"p": 1.5}}, r"p must be a probability in \[0, 1\], got 1.5"),
        (
            {"CoarseDropout": {"hole_height_range": [0.2, 1.5]}},
            r"hole_height_range must be pixels .* or fractions in \(0, 1\]",
        ),
        ({"CoarseDropout": {"num_holes_range": [0, 2]}}, r"num_holes_range must be whole numbers >= 1"),
        ({"Affine": {}, "HorizontalFlip": {}}, r"each device_augment step is one \{Name: params\} mapping"),
        ({"Affine": [1, 2]}, r"device_augment\.0\.Affine\s+Input should be a valid dictionary"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_bad_device_steps_are_refused_when_the_config_loads(step, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(device_augment=[step])


def test_device_augment_enters_a_runs_hash_only_when_set():
    base = settings_dump(TrainConfig(model="m"))
    assert "device_augment" not in base  # runs made before the option keep their hash
    moved = settings_dump(TrainConfig(model="m", device_augment=[{"HorizontalFlip": {"p": 0.5}}]))
    assert moved["device_augment"] == [{"HorizontalFlip": {"p": 0.5}}]


def test_training_reaches_the_model_through_either_augmentation_path(small_competition, write_config, tmp_path):
    # one fold, one epoch, the same seed: only the augmentation differs between these runs
    rotate = {"Affine": {"rotate": [-30, 30], "p": 1.0}}
    never = {"Affine": {"rotate": [-30, 30], "p": 0.0}}
    setups = {
        "none": {},
        "device_p0": {"device_augment": [never]},
        "device": {"device_augment": [rotate]},
        "host": {"augment": [rotate]},
    }
    predictions = {}
    for name, train in setups.items():
        config = write_config(
            small_competition,
            {"output_dir": str(tmp_path / name), "train": {"augment": [], "device_augment": [], **train}},
            name=f"{name}.yaml",
        )
        assert main(["train", "--config", str(config), "--model", "digits_resnet", "--folds", "0"]) == 0
        fold = load_config(config).runs_dir / "digits_resnet" / "fold0"
        predictions[name] = pd.read_parquet(fold / "valid_plain.parquet").drop(columns="row").to_numpy()
    # a step that never fires is no augmentation at all: the device path adds nothing else
    np.testing.assert_allclose(predictions["device_p0"], predictions["none"], atol=1e-6)
    # a step that always fires changes what the model learns, on either side
    for name in ("device", "host"):
        assert np.abs(predictions[name] - predictions["none"]).max() > 1e-3, name


def test_a_batch_read_in_one_go_from_the_cache_is_the_batch_read_image_by_image(tmp_path):
    from PIL import Image

    from pipeline.data.cache import open_cache
    from pipeline.train.dataset import ImageDataset, collate_rows

    paths = []
    for k in range(12):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(smooth_image(40, 40, seed=k)).save(paths[-1])
    cache = open_cache(paths, tmp_path / "cache", 32, progress=False)
    labels = np.arange(12) % 3
    rows = [7, 2, 11, 0, 5]
    for transform, batched in (
        (HostTransform(32, "bicubic"), True),
        (HostTransform(24, "bicubic"), False),
        (HostTransform(32, "bicubic", [{"HorizontalFlip": {"p": 1.0}}]), False),
    ):
        dataset = ImageDataset(cache, np.arange(12), transform, labels)
        fetched = dataset.__getitems__(rows)
        assert isinstance(fetched, tuple) == batched  # one array read only when the transform has nothing to do
        images, targets = collate_rows(fetched)
        one_by_one = torch.utils.data.default_collate([dataset[r] for r in rows])
        assert torch.equal(images, one_by_one[0]) and torch.equal(targets, one_by_one[1])
    unlabelled = ImageDataset(cache, np.arange(12), HostTransform(32, "bicubic"))
    assert collate_rows(unlabelled.__getitems__(rows))[1].tolist() == [0] * 5
