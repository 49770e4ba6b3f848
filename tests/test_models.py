"""Model registry, model-specific data configs, and local weights files (Kaggle offline style)."""

import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline.vision.models import MODEL_ALIASES, ModelError, create_model, data_config, resolve_model_name


@pytest.mark.parametrize("alias", sorted(MODEL_ALIASES))
def test_every_alias_is_a_timm_model(alias):
    assert timm.is_model(resolve_model_name(alias))


def test_required_aliases_exist():
    required = {"resnet18", "resnet34", "resnet50", "resnet101", "resnext50", "vgg16", "vgg19", "inception_v3",
                "xception", "mobilenetv2", "mobilenetv3", "efficientnet_b0"}
    assert required <= set(MODEL_ALIASES)
    assert resolve_model_name("resnext50") == "resnext50_32x4d"


@pytest.mark.parametrize(
    "name, suggestion", [("resnet5O", "resnet50"), ("efficientnet-b0", "efficientnet_b0"), ("resnxt50", "resnext50")]
)
def test_unknown_model_suggests_close_names(name, suggestion):
    with pytest.raises(ModelError, match=f"unknown model '{name}'.*{suggestion}"):
        resolve_model_name(name)


def test_data_config_comes_from_the_model():
    model = timm.create_model("test_resnet", num_classes=3)
    own = data_config(model)
    resolved = timm.data.resolve_model_data_config(model)
    assert own.image_size == resolved["input_size"][1]
    assert own.mean == tuple(resolved["mean"]) and own.interpolation == resolved["interpolation"]
    overridden = data_config(model, image_size=32, mean=[0.5] * 3, std=[0.25] * 3, interpolation="nearest")
    assert (overridden.image_size, overridden.mean, overridden.interpolation) == (32, (0.5, 0.5, 0.5), "nearest")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_load_into_a_model_with_other_classes(tmp_path, suffix):
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / f"weights{suffix}"
    state = source.state_dict()
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    model = create_model("test_resnet", num_classes=7, pretrained=str(path))
    assert model.get_classifier().out_features == 7
    loaded = model.state_dict()
    assert torch.equal(loaded["conv1.0.weight"], state["conv1.0.weight"])  # backbone from the file
    assert not torch.equal(loaded["fc.weight"][:7], state["fc.weight"][:7])  # classifier re-initialised


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("test_efficientnet").state_dict(), str(path))
    with pytest.raises(ModelError, match="does not match architecture 'test_resnet'.*missing"):
        create_model("test_resnet", num_classes=10, pretrained=str(path))


class _WritesMarker:
    """A pickle whose loading would create a file: proof, if the file appears, that code from it ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("layout", ["bare", "state_dict", "state_dict_ema"])
def test_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, layout):
    marker = tmp_path / "code_ran"
    payload = {"conv1.0.weight": _WritesMarker(marker)}
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump(payload if layout == "bare" else {layout: payload}, handle)
    with pytest.raises(ModelError, match=r"cannot read weights file .*evil\.pth.*weights_only"):
        create_model("test_resnet", num_classes=10, pretrained=str(path))
    assert not marker.exists(), "loading the weights file ran code from it"


def _save(state, path):
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


def test_a_vit_file_loads_at_another_image_size(tmp_path):
    # timm's checkpoint filter resamples the position embeddings, as it does for hub weights
    torch.manual_seed(0)
    source = timm.create_model("test_vit", num_classes=1000)
    path = tmp_path / "vit.safetensors"
    _save(source.state_dict(), path)
    model = create_model("test_vit", num_classes=4, pretrained=str(path), img_size=64)
    assert model.pos_embed.shape[1] < source.pos_embed.shape[1]       # fewer patches at 64 px than at 160 px
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)


def test_a_file_loads_with_other_input_channels(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", num_classes=1000)
    path = tmp_path / "rgb.safetensors"
    _save(source.state_dict(), path)
    model = create_model("test_resnet", num_classes=3, pretrained=str(path), in_chans=1)
    stem = model.state_dict()["conv1.0.weight"]
    # timm's adapt_input_conv: one channel gets the sum of the three RGB kernels
    assert torch.allclose(stem[:, 0], source.state_dict()["conv1.0.weight"].sum(dim=1))


def test_ema_weights_are_preferred_and_the_head_kept_when_it_fits(tmp_path):
    torch.manual_seed(0)
    plain, ema = timm.create_model("test_resnet", num_classes=6), timm.create_model("test_resnet", num_classes=6)
    path = tmp_path / "checkpoint.pth"
    torch.save({"state_dict": plain.state_dict(), "state_dict_ema": ema.state_dict()}, path)
    model = create_model("test_resnet", num_classes=6, pretrained=str(path))
    assert torch.equal(model.state_dict()["conv1.0.weight"], ema.state_dict()["conv1.0.weight"])
    assert torch.equal(model.get_classifier().weight, ema.get_classifier().weight)   # same head size: kept


def test_a_headless_backbone_file_loads(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", num_classes=0)
    path = tmp_path / "backbone.safetensors"
    _save(source.state_dict(), path)
    model = create_model("test_resnet", num_classes=5, pretrained=str(path))
    assert torch.equal(model.state_dict()["conv1.0.weight"], source.state_dict()["conv1.0.weight"])
    assert model.get_classifier().out_features == 5


@pytest.mark.parametrize("damage, message", [
    ("drop", r"1 missing \(e\.g\. conv1\.0\.weight\)"),
    ("extra", r"1 unexpected \(e\.g\. extra\.weight\)"),
    ("reshape", r"1 wrong shape \(e\.g\. layer1\.0\.conv1\.weight\)"),
])
def test_a_file_missing_or_adding_tensors_is_named_not_silently_random(tmp_path, damage, message):
    # a different class count must not turn the load lenient for the body
    state = timm.create_model("test_resnet", num_classes=1000).state_dict()
    if damage == "drop":
        del state["conv1.0.weight"]
    elif damage == "extra":
        state["extra.weight"] = torch.zeros(2)
    else:
        state["layer1.0.conv1.weight"] = torch.zeros(1, 1, 1, 1)
    path = tmp_path / "damaged.safetensors"
    _save(state, path)
    with pytest.raises(ModelError, match=r"does not match architecture 'test_resnet': " + message):
        create_model("test_resnet", num_classes=10, pretrained=str(path))


@pytest.mark.parametrize(
    "pretrained, message", [("missing.safetensors", "does not exist"), ("weights.npz", "must be .safetensors")]
)
def test_bad_weights_paths(tmp_path, pretrained, message):
    if pretrained.endswith(".npz"):
        (tmp_path / pretrained).write_bytes(b"x")
    with pytest.raises(ModelError, match=message):
        create_model("test_resnet", num_classes=10, pretrained=str(tmp_path / pretrained))


@pytest.mark.parametrize(
    "name, kwargs, plain, small",
    [
        ("test_resnet", {}, 1, 4),  # stride-1 stem, no max-pool: 4x less reduction
        ("resnet18", {"channels": (8, 8, 8, 8)}, 1, 4),
        ("resnet18", {"channels": (8, 8, 8, 8), "stem_type": "deep", "replace_stem_pool": True}, 1, 4),
        ("test_efficientnet", {}, 1, 2),  # stride-1 stem convolution
    ],
)
def test_small_input_keeps_resolution(name, kwargs, plain, small):
    x = torch.randn(2, 3, 32, 32)
    sides = []
    for small_input in (False, True):
        model = create_model(name, 3, small_input=small_input, **kwargs).eval()
        with torch.no_grad():
            sides.append(model.forward_features(x).shape[-1])
            assert model(x).shape == (2, 3)
    assert sides == [plain, small]


def test_small_input_keeps_weight_shapes(tmp_path):
    # pretrained weights still load: the stem changes its stride, not its weights
    donor = timm.create_model("test_resnet", num_classes=5)
    path = tmp_path / "w.safetensors"
    save_file(donor.state_dict(), str(path))
    model = create_model("test_resnet", 5, pretrained=str(path), small_input=True)
    assert torch.equal(model.state_dict()["conv1.0.weight"], donor.state_dict()["conv1.0.weight"])


@pytest.mark.parametrize(
    "name, message",
    [
        ("test_vit", r"not available for 'test_vit' \(VisionTransformer\): .*patch_size: 4"),
        ("test_convnext", r"\(ConvNeXt\): its stem is a 4x4 patchify convolution"),
        (
            "test_byobnet",
            r"\(ByobNet\): no adapter for its stem; architectures with one: EfficientNet, MobileNetV3, RegNet, ResNet",
        ),
    ],
)
def test_small_input_is_refused_with_the_reason(name, message):
    with pytest.raises(ModelError, match=message):
        create_model(name, 3, small_input=True)


def test_small_input_refusal_stops_training_before_any_work(small_config, tmp_path, capsys):
    from pipeline.cli import main

    assert main(["train", "--config", str(small_config), "--model", "digits_convnext", "small_input=true"]) == 2
    assert "small_input is not available for 'test_convnext'" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()
