"""Test-time resolution above the training size (``resize(s)``, FixRes): the view, grouped prediction, the refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.config import ConfigError, TrainConfig
from pipeline.train.predict import check_views_fit_model, predict_views
from pipeline.train.runtime import Runtime
from pipeline.vision.models import create_model
from pipeline.vision.views import parse_view, view_groups

CPU = Runtime(device=torch.device("cpu"), amp_dtype=None, channels_last=False, num_workers=0, pin_memory=False)


@pytest.mark.parametrize(
    "spec, side, expected",
    [
        ("resize(1.25)", 32, 40),
        ("resize(1.15)", 32, 37),
        ("resize(1)", 32, 32),
        ("resize(0.5)", 32, 16),
        ("resize", 20, 23),
    ],
)
def test_resize_view_scales_the_whole_image(spec, side, expected):
    x = torch.rand(2, 3, side, side)
    out = parse_view(spec)(x)
    assert out.shape == (2, 3, expected, expected) and out.dtype == x.dtype
    if expected == side:
        assert out is x
    # the whole image, not a crop: a constant image stays that constant
    flat = parse_view(spec)(torch.full((1, 3, side, side), 0.25))
    torch.testing.assert_close(flat, torch.full_like(flat, 0.25))


@pytest.mark.parametrize("spec", ["resize(0)", "resize(-1)", "resize(1,2)"])
def test_bad_resize_factors_are_refused(spec):
    with pytest.raises(ValueError, match="bad arguments in TTA view"):
        parse_view(spec)


def test_views_are_grouped_by_output_shape_in_order():
    views = [parse_view(v) for v in ("identity", "resize(1.25)", "hflip", "resize(1.25)", "resize(1.5)")]
    assert view_groups(views, 32, 32) == [[0, 2], [1, 3], [4]]


def test_tta_with_a_larger_view_is_the_mean_of_the_single_view_predictions():
    torch.manual_seed(0)
    model = create_model("test_resnet", 3).eval()
    batches = [(torch.randn(4, 3, 32, 32), None), (torch.randn(3, 3, 32, 32), None)]
    names = ["identity", "resize(1.25)", "hflip"]
    both = predict_views(model, batches, [parse_view(v) for v in names], CPU)
    assert both.shape == (3, 7, 3)
    singles = np.stack([predict_views(model, batches, [parse_view(v)], CPU)[0] for v in names])
    np.testing.assert_allclose(both, singles, atol=1e-6)  # each view in its place, so the mean is the same
    np.testing.assert_allclose(both[:2].mean(axis=0), singles[:2].mean(axis=0), atol=1e-6)
    assert not np.allclose(singles[0], singles[1])  # the larger view does change the predictions


# timm's test_vit takes any size by default; a ViT built for one size is what refuses
VIT = {"model": "test_vit", "model_kwargs": {"img_size": 32, "patch_size": 4, "dynamic_img_size": False}}


@pytest.mark.parametrize(
    "settings, refused",
    [
        (VIT, True),
        ({**VIT, "model_kwargs": {**VIT["model_kwargs"], "dynamic_img_size": True}}, False),
        ({"model": "test_resnet"}, False),
        ({"model": "test_resnet", "small_input": True}, False),
    ],
)
def test_a_model_that_takes_one_size_refuses_a_resize_view(settings, refused):
    names = ["identity", "hflip", "resize(1.25)"]
    views = [parse_view(v) for v in names]
    cfg = TrainConfig(**settings)
    if refused:
        with pytest.raises(
            ConfigError,
            match=r"TTA view 'resize\(1.25\)' feeds test_vit 40x40 images.*"
            r"dynamic_img_size: true.*or drop the view from train.tta",
        ):
            check_views_fit_model(cfg, views, names, 32)
    else:
        check_views_fit_model(cfg, views, names, 32)
    check_views_fit_model(
        TrainConfig(**VIT), views[:2], names[:2], 32
    )  # same-size views: nothing built, nothing refused


def test_the_refusal_comes_before_any_work(small_config, tmp_path, capsys):
    assert (
        main(
            [
                "train",
                "--config",
                str(small_config),
                "--model",
                "digits_vit",
                "train.tta=[identity, 'resize(1.25)']",
                "train.model_kwargs={img_size: 32, patch_size: 4, dynamic_img_size: false}",
            ]
        )
        == 2
    )
    assert "dynamic_img_size" in capsys.readouterr().err
    assert not list((tmp_path / "out" / "runs").glob("*/*/fold*"))
