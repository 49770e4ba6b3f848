"""Model registry, model-specific data configs, and local weights files (Kaggle offline style)."""

import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline.models import MODEL_ALIASES, ModelError, create_model, data_config, resolve_model_name


@pytest.mark.parametrize("alias", sorted(MODEL_ALIASES))
def test_every_alias_is_a_timm_model(alias):
    assert timm.is_model(resolve_model_name(alias))


def test_required_aliases_exist():
    required = {"resnet18", "resnet34", "resnet50", "resnet101", "resnext50", "vgg16", "vgg19", "inception_v3",
                "xception", "mobilenetv2", "mobilenetv3", "efficientnet_b0"}
    assert required <= set(MODEL_ALIASES)
    assert resolve_model_name("resnext50") == "resnext50_32x4d"


@pytest.mark.parametrize("name, suggestion", [("resnet5O", "resnet50"), ("efficientnet-b0", "efficientnet_b0"), ("resnxt50", "resnext50")])
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


class _RunsCode:
    def __reduce__(self):
        return (print, ("this would run arbitrary code",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": _RunsCode()}, handle)
    with pytest.raises(ModelError, match="cannot read weights file.*weights_only|cannot read weights file"):
        create_model("test_resnet", num_classes=10, pretrained=str(path))


@pytest.mark.parametrize("pretrained, message", [("missing.safetensors", "does not exist"), ("weights.npz", "must be .safetensors")])
def test_bad_weights_paths(tmp_path, pretrained, message):
    if pretrained.endswith(".npz"):
        (tmp_path / pretrained).write_bytes(b"x")
    with pytest.raises(ModelError, match=message):
        create_model("test_resnet", num_classes=10, pretrained=str(tmp_path / pretrained))
