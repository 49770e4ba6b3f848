"""Forward-pass throughput of models, alone and as an ensemble (docs/benchmarks.md, "Student and teacher").

    python docs/scripts/inference_speed.py --size 32 --batch 256 test_efficientnet test_resnet test_convnext

Each model is built by the pipeline (10 classes, random weights: speed does not depend on them), put in eval
mode and channels_last, and fed random batches under ``torch.inference_mode``; after warm-up batches, the median
of ``--repeats`` timings of ``--batches`` batches gives images/s. The ensemble figure is one image through every
model named (their times add up), per fold model; a k-fold run predicts with k of them. No data loading: this is
the model's cost, what distillation changes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.vision.models import create_model


def images_per_second(model: torch.nn.Module, size: int, batch: int, batches: int, repeats: int) -> float:
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(batches):
                model(x)
            timings.append(time.perf_counter() - started)
    return batch * batches / statistics.median(timings)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size} px, batch {args.batch}")
    seconds_per_image = 0.0
    for name in args.models:
        model = create_model(name, 10, False).eval().to(memory_format=torch.channels_last)
        rate = images_per_second(model, args.size, args.batch, args.batches, args.repeats)
        seconds_per_image += 1 / rate
        params = sum(p.numel() for p in model.parameters())
        print(f"{name}: {rate:,.0f} images/s ({params / 1e6:.2f} M parameters)")
    if len(args.models) > 1:
        print(f"all {len(args.models)} together (one fold model each): {1 / seconds_per_image:,.0f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
