"""A local weights file read directly (`pipeline.vision.weights.read_weights_file`): which tensors, the refusals.

``make pretrained-weights`` and the converter read a source file with it, so its choice of tensors matters beyond
``create_model`` (where timm's own loader reads the file again); these tests came from `make mutate`'s survivors.
"""

from __future__ import annotations

import pickle
import re

import pytest
import timm
import torch
from safetensors.torch import save_file

from pipeline.vision.models import ModelError, create_model
from pipeline.vision.weights import read_weights_file


def _two_states():
    torch.manual_seed(0)
    plain = timm.create_model("test_resnet", num_classes=4).state_dict()
    ema = {k: v + 1.0 if v.is_floating_point() else v for k, v in plain.items()}
    return plain, ema


def _assert_same(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


@pytest.mark.parametrize("layout, pick", [
    ({"state_dict": "plain", "state_dict_ema": "ema"}, "ema"),
    ({"model": "plain", "model_ema": "ema"}, "ema"),
    ({"state_dict": "plain"}, "plain"),
    ({"model": "plain"}, "plain"),
], ids=["state_dict_ema", "model_ema", "state_dict", "model"])
def test_a_checkpoint_gives_its_ema_weights_first(tmp_path, layout, pick):
    states = dict(zip(("plain", "ema"), _two_states()))
    path = tmp_path / "checkpoint.pth"
    torch.save({key: states[which] for key, which in layout.items()}, path)
    _assert_same(read_weights_file(path), states[pick])


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_data_parallel_prefix_is_dropped(tmp_path, suffix):
    plain, _ = _two_states()
    path = tmp_path / f"dp{suffix}"
    prefixed = {f"module.{k}": v for k, v in plain.items()}
    save_file(prefixed, str(path)) if suffix == ".safetensors" else torch.save(prefixed, path)
    _assert_same(read_weights_file(path), plain)


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


FIX = re.escape("safetensors.torch.save_file(model.state_dict(), 'model.safetensors')")


def _pickle_with_code(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"conv1.0.weight": _RunsCode(tmp_path / "code_ran")}, handle)
    return path


def _not_only_tensors(tmp_path):
    path = tmp_path / "mixed.pth"
    torch.save({"conv1.0.weight": torch.zeros(2), "epoch": 3}, path)
    return path


def _missing(tmp_path):
    return tmp_path / "missing.safetensors"


def _numpy_file(tmp_path):
    path = tmp_path / "weights.npz"
    path.write_bytes(b"not weights")
    return path


@pytest.mark.parametrize("write, message", [
    (_missing, r"^pretrained weights file \S*missing\.safetensors does not exist; set train\.pretrained to a file "
               r"path, true \(hub\) or false$"),
    (_numpy_file, r"^pretrained weights file \S*weights\.npz must be \.safetensors, \.pth, \.pt or \.bin$"),
    (_pickle_with_code, r"(?s)^cannot read weights file \S*evil\.pth: .*\. Only safetensors files and plain state "
                        r"dicts \(loadable with torch\.load\(weights_only=True\)\) are accepted; convert others with "
                        + FIX + "$"),
    (_not_only_tensors, r"^weights file \S*mixed\.pth holds no state dict of tensors; save one with " + FIX + "$"),
], ids=["missing", "suffix", "code", "not-tensors"])
def test_refused_files_are_named_with_the_fix(tmp_path, write, message):
    path = write(tmp_path)
    with pytest.raises(ModelError, match=message):
        read_weights_file(path)
    assert not (tmp_path / "code_ran").exists()


def test_a_file_that_does_not_fit_the_architecture_is_named(tmp_path):
    state = timm.create_model("test_resnet", num_classes=1000).state_dict()
    del state["conv1.0.weight"]
    path = tmp_path / "damaged.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError, match="^weights file " + re.escape(str(path)) + r" does not match architecture "
                                         r"'test_resnet': 1 missing \(e\.g\. conv1\.0\.weight\)\. Use weights saved"):
        create_model("test_resnet", num_classes=10, pretrained=str(path))


# -- the head size a file brings, and the message for a file that does not fit ---------------


@pytest.mark.parametrize(
    "timm_name, state, expected",
    [
        ("test_resnet", {"fc.weight": torch.zeros(7, 4), "fc.bias": torch.zeros(7)}, 7),
        ("test_resnet", {"conv1.weight": torch.zeros(8, 3, 3, 3)}, 0),  # a headless backbone
        ("test_resnet", {"fc.weight": torch.zeros(5)}, 5),  # any tensor with a first axis
        ("test_resnet", {"fc.weight": torch.tensor(1.0)}, 0),  # a scalar is no head
        # a model with two classifiers names both; the first present in the file counts
        ("deit_tiny_distilled_patch16_224", {"head_dist.weight": torch.zeros(4, 2)}, 4),
        ("no_such_model", {"fc.weight": torch.zeros(3, 2)}, 0),  # no pretrained config: no head names
    ],
)
def test_the_files_head_size_comes_from_the_models_classifier_names(timm_name, state, expected):
    from pipeline.vision.weights import _file_head_classes

    assert _file_head_classes(state, timm_name) == expected


FIX = (
    ". Use weights saved from the same timm architecture, or convert them (docs/scripts/convert_weights.py maps "
    "another naming to a timm architecture)"
)
TORCH_LOAD_ERROR = (
    "Error(s) in loading state_dict for ResNet:\n"
    '\tMissing key(s) in state_dict: "fc.weight", "fc.bias", "layer1.0.conv1.weight", "layer1.0.bn1.weight". \n'
    '\tUnexpected key(s) in state_dict: "head.weight". \n'
    "\tsize mismatch for conv1.weight: copying a param with shape torch.Size([8, 3, 3, 3]) from checkpoint, the shape "
    "in current model is torch.Size([16, 3, 3, 3])."
)


@pytest.mark.parametrize(
    "text, summary",
    [
        (
            TORCH_LOAD_ERROR,
            "4 missing (e.g. fc.weight, fc.bias, layer1.0.conv1.weight); 1 unexpected (e.g. head.weight); "
            "1 wrong shape (e.g. conv1.weight)",
        ),
        # none of torch's key lists: the first line, without its final dot
        ("no layer named blockX.\nsecond line", "no layer named blockX"),
        ("a" * 250 + "\nsecond line", "a" * 200),
    ],
)
def test_a_file_that_does_not_fit_is_summarised_from_torchs_message(tmp_path, text, summary):
    from pipeline.vision.weights import _load_error

    error = _load_error(tmp_path / "w.safetensors", "test_resnet", RuntimeError(text))
    assert isinstance(error, ModelError)
    assert str(error) == (
        f"weights file {tmp_path / 'w.safetensors'} does not match architecture 'test_resnet': {summary}{FIX}"
    )
