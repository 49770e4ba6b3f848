"""Model registry: short aliases for the architectures Kagglers read about, any timm name besides.

Model-specific facts (input size, mean/std, interpolation) come from the model's
own pretrained config through :func:`timm.data.resolve_model_data_config`, never
from constants here.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from pipeline.vision.weights import ModelError, create_from_file

# alias -> (timm name, family). Adding an architecture is one line here.
MODEL_ALIASES: dict[str, tuple[str, str]] = {
    "resnet18": ("resnet18", "resnet"),
    "resnet34": ("resnet34", "resnet"),
    "resnet50": ("resnet50", "resnet"),
    "resnet101": ("resnet101", "resnet"),
    "resnext50": ("resnext50_32x4d", "resnext"),
    "vgg16": ("vgg16", "vgg"),
    "vgg19": ("vgg19", "vgg"),
    "inception_v3": ("inception_v3", "inception"),
    "xception": ("legacy_xception", "xception"),
    "mobilenetv2": ("mobilenetv2_100", "mobilenet"),
    "mobilenetv3": ("mobilenetv3_large_100", "mobilenet"),
    "efficientnet_b0": ("efficientnet_b0", "efficientnet"),
    "efficientnetv2": ("tf_efficientnetv2_s", "efficientnet"),
    "convnext": ("convnext_tiny", "convnext"),
    "regnet": ("regnety_016", "regnet"),
    "vit": ("vit_small_patch16_224", "vit"),
}


@dataclass(frozen=True)
class DataConfig:
    """What the model expects at its input."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


def resolve_model_name(name: str) -> str:
    """Map an alias or a timm name to the timm name.

    Raises
    ------
    ModelError
        Naming the unknown model and suggesting close aliases or timm names.
    """
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name][0]
    if timm.is_model(name):
        return name
    candidates = list(MODEL_ALIASES) + timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ModelError(f"unknown model {name!r}{hint} ('make models' lists the aliases; any timm model name also works)")


def model_family(name: str) -> str:
    """The architecture family of an alias or timm name (for leaderboards)."""
    if name in MODEL_ALIASES:
        return MODEL_ALIASES[name][1]
    timm_name = resolve_model_name(name)
    for _, (alias_target, family) in MODEL_ALIASES.items():
        if alias_target == timm_name:
            return family
    # tf_<arch>: the same architecture with weights ported from TensorFlow (tf_efficientnet_lite0 is an efficientnet)
    # and a version or size suffix is not a family: mobilenetv3 and convnextv2 are mobilenet and convnext
    base = timm_name.removeprefix("tf_")
    return re.sub(r"v?\d+$", "", base.split("_")[0]) or base


# families that share a training preset file with a close relative (config.preset_file)
PRESET_FAMILIES: dict[str, str] = {
    "resnext": "resnet",
    "xception": "inception",
}


def preset_family(name: str) -> str:
    """The family whose training preset suits a model (``<recipes>/presets/<preset>/<family>.yaml``).

    :func:`model_family`, with :data:`PRESET_FAMILIES` applied, and timm's tiny ``test_*``
    models read as the architecture they shrink (``test_resnet`` -> ``resnet``,
    ``test_convnext2`` -> ``convnext``), so the CPU recipes get the same preset as the real ones.
    """
    timm_name = resolve_model_name(name)
    if timm_name.startswith("test_"):
        shrunk = timm_name.removeprefix("test_")
        family = shrunk.split("_")[0].rstrip("0123456789") or shrunk
    else:
        family = model_family(name)
    return PRESET_FAMILIES.get(family, family)


# -- small inputs (train.small_input) ---------------------------------------------------------
# ImageNet architectures shrink the image 32x before their pooling (4x in the stem alone): a 32-px
# image leaves them 1x1 pixels. For small images, the stem keeps the resolution instead. One adapter per
# timm model class; the weights keep their shapes, so pretrained weights still load.


def _first_strided_conv(module: torch.nn.Module) -> torch.nn.Conv2d | None:
    for layer in module.modules():
        if isinstance(layer, torch.nn.Conv2d) and tuple(layer.stride) != (1, 1):
            return layer
    return None


def _unstride(module: torch.nn.Module, where: str) -> None:
    conv = _first_strided_conv(module)
    if conv is None:
        raise ModelError(
            f"small_input: no strided convolution in {where}; this variant's stem is not one the adapter knows"
        )
    conv.stride = (1, 1)


def _resnet_small_input(model: torch.nn.Module) -> None:
    """ResNet, ResNeXt, SE-ResNet...: the stem convolution at stride 1 and no max-pool (4x less reduction)."""
    _unstride(model.conv1, "conv1")  # a single conv or the deep stem's first
    if isinstance(model.maxpool, torch.nn.MaxPool2d):
        model.maxpool = torch.nn.Identity()
    elif isinstance(model.maxpool, torch.nn.Sequential):
        _unstride(model.maxpool, "the stem's pooling convolution")  # replace_stem_pool: a strided conv instead
    elif not isinstance(model.maxpool, torch.nn.Identity):
        raise ModelError(f"small_input: unknown ResNet stem pooling {type(model.maxpool).__name__}")


def _conv_stem_small_input(model: torch.nn.Module) -> None:
    """EfficientNet, MobileNetV2/V3: the stem convolution at stride 1 (2x less reduction)."""
    _unstride(model.conv_stem, "conv_stem")


def _regnet_small_input(model: torch.nn.Module) -> None:
    """RegNet: the stem convolution at stride 1 (2x less reduction)."""
    _unstride(model.stem, "stem")


def _small_input_adapters() -> dict[type, tuple]:
    from timm.models.efficientnet import EfficientNet
    from timm.models.mobilenetv3 import MobileNetV3
    from timm.models.regnet import RegNet
    from timm.models.resnet import ResNet

    return {
        ResNet: (_resnet_small_input, 4),
        EfficientNet: (_conv_stem_small_input, 2),
        MobileNetV3: (_conv_stem_small_input, 2),
        RegNet: (_regnet_small_input, 2),
    }


def _small_input_refusals() -> dict[type, str]:
    from timm.models.convnext import ConvNeXt
    from timm.models.vgg import VGG
    from timm.models.vision_transformer import VisionTransformer

    return {
        VisionTransformer: "a ViT has no stem to unstride; give it smaller patches instead: "
        "model_kwargs: {img_size: 32, patch_size: 4} (recipe digits_vit)",
        ConvNeXt: "its stem is a 4x4 patchify convolution of stride 4; at stride 1 its kernels would see "
        "overlapping patches they were not made for: train it at 128 px or more, or pick a ResNet, "
        "EfficientNet, MobileNet or RegNet with small_input",
        VGG: "its five max-pools are the network itself (no stem to change), and its classifier expects a 7x7 "
        "map: pick a ResNet, EfficientNet, MobileNet or RegNet with small_input",
    }


def small_input_families() -> list[str]:
    """The timm model classes :func:`adapt_small_input` knows."""
    return sorted(cls.__name__ for cls in _small_input_adapters())


def adapt_small_input(model: torch.nn.Module, model_name: str) -> int:
    """Make ``model`` keep more resolution in its stem for small images (``train.small_input``).

    ResNet-family models (ResNet, ResNeXt, SE-ResNet, ``test_resnet``) get a stride-1 stem
    convolution and no max-pool; EfficientNet, MobileNetV2/V3 and RegNet a stride-1 stem
    convolution. Weight shapes do not change, so pretrained weights still load.

    Parameters
    ----------
    model : torch.nn.Module
        A timm model, changed in place.
    model_name : str
        Its name, for the error message.

    Returns
    -------
    int
        How many times less the model now reduces the image (4 for ResNets, 2 for the others).

    Raises
    ------
    ModelError
        For an architecture without an adapter, with the reason and what to do instead.
    """
    for cls, (adapt, factor) in _small_input_adapters().items():
        if isinstance(model, cls):
            adapt(model)
            return factor
    for cls, reason in _small_input_refusals().items():
        if isinstance(model, cls):
            raise ModelError(f"small_input is not available for {model_name!r} ({cls.__name__}): {reason}")
    raise ModelError(
        f"small_input is not available for {model_name!r} ({type(model).__name__}): no adapter for its "
        f"stem; architectures with one: {', '.join(small_input_families())} (timm classes). Without "
        "small_input, train it at a larger image_size"
    )


def create_model(
    name: str,
    num_classes: int,
    pretrained: bool | str = False,
    drop_rate: float = 0.0,
    small_input: bool = False,
    **kwargs,
) -> torch.nn.Module:
    """Build a timm model for ``num_classes`` outputs.

    Parameters
    ----------
    name : str
        Alias or timm name.
    num_classes : int
        Size of the new classifier.
    pretrained : bool or str
        ``True``: timm's hub weights (needs internet). A path: a local weights
        file (Kaggle's offline way). ``False``: random initialisation.
    drop_rate : float
        Dropout before the classifier.
    small_input : bool
        Keep more resolution in the stem for small images (:func:`adapt_small_input`).

    Returns
    -------
    torch.nn.Module
    """
    timm_name = resolve_model_name(name)
    hub = pretrained is True
    try:
        if isinstance(pretrained, (str, Path)):
            model = create_from_file(timm_name, pretrained, num_classes, drop_rate=drop_rate, **kwargs)
        else:
            model = timm.create_model(timm_name, pretrained=hub, num_classes=num_classes, drop_rate=drop_rate, **kwargs)
    except TypeError as exc:
        if not kwargs or "argument" not in str(exc):
            raise
        raise ModelError(
            f"train.model_kwargs {kwargs}: architecture {timm_name!r} does not take one of them ({exc}); "
            "remove the key, or check the arguments of the timm model's class"
        ) from None
    except OSError as exc:  # the hub's download errors (no network, no such file) are all OSErrors
        if not hub:
            raise
        raise ModelError(
            f"could not download pretrained weights for {timm_name!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}). Offline (a Kaggle code competition), either point to a "
            "local weights file with train.pretrained=<path to a weights file> (.safetensors or .pth), "
            "or train from scratch with train.pretrained=false"
        ) from None
    if small_input:
        adapt_small_input(model, name)
    return model


def data_config(
    model: torch.nn.Module, image_size: int | None = None, mean=None, std=None, interpolation=None
) -> DataConfig:
    """The model's input facts from its pretrained config, each overridable by the recipe."""
    resolved = timm.data.resolve_model_data_config(model)
    _, height, width = resolved["input_size"]
    return DataConfig(
        image_size=int(image_size or max(height, width)),
        mean=tuple(float(v) for v in (mean or resolved["mean"])),
        std=tuple(float(v) for v in (std or resolved["std"])),
        interpolation=interpolation or resolved.get("interpolation", "bilinear"),
    )


def default_input_size(name: str) -> int | None:
    """The input size of a model's default pretrained config (no model is built), or None if timm has none."""
    pretrained_cfg = timm.models.get_pretrained_cfg(resolve_model_name(name))
    if pretrained_cfg is None or not pretrained_cfg.input_size:
        return None
    return int(max(pretrained_cfg.input_size[1:]))


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
